"""finish.observe_and_log inlines WorkerMetrics.observe + AccessLog.log: it must
give the same lines and the same deltas as the two calls."""
from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st
from observe_fixtures import Geo, make_ctx

from proxy.observe.accesslog import AccessLog
from proxy.observe.finish import observe_and_log
from proxy.observe.metrics import WorkerMetrics

names = st.none() | st.sampled_from(["api", "none", "", "x\"y", "caf\u00e9", "\udce9"])
ctxs = st.builds(
    lambda route, region, backend, status, start, dur, up, geo, path, host, verdicts, error, retries, bin_, bout:
    make_ctx(route=route, region=region, backend=backend, status=status, start=start,
             end=start + dur if dur is not None else 0.0,
             upstream=(start + up[0], start + up[0] + up[1]) if up is not None else None,
             geo=geo, path=path, host=host, verdicts=verdicts, error=error, retries=retries,
             bytes_in=bin_, bytes_out=bout),
    names, names, names, st.sampled_from([0, 101, 200, 204, 304, 404, 503, 599, 600, 999]),
    st.floats(0, 1e6), st.none() | st.floats(0, 20), st.none() | st.tuples(st.floats(0, 1), st.floats(0, 20)),
    st.none() | st.builds(Geo, st.none() | st.sampled_from(["DE", "IE"]), st.none() | st.just("EU")),
    st.text(max_size=30), st.text(max_size=10), st.lists(st.sampled_from(["ratelimit:a:shadow", "acl:b:deny"]), max_size=2),
    st.none() | st.sampled_from(["client-gone", "upstream-timeout"]), st.integers(0, 3),
    st.integers(0, 10_000), st.integers(0, 10_000))


def pair() -> tuple[WorkerMetrics, AccessLog]:
    clock = iter(range(10**6)).__next__   # a request without an end is timed to "now": same in both
    return (WorkerMetrics(1, clock=lambda: float(clock())),
            AccessLog(os.devnull, clock=lambda: 1_700_000_000.0, mono=lambda: 0.0))


def lines(a: AccessLog) -> bytes:
    return bytes(a._buf[:a._buf_bytes])


@settings(max_examples=300, deadline=None)
@given(batch=st.lists(ctxs, min_size=1, max_size=12))
def test_one_pass_matches_observe_then_log(batch) -> None:
    m1, a1 = pair()
    m2, a2 = pair()
    out1 = []
    out2 = []
    for ctx in batch:
        m1.begin()
        m1.observe(ctx)
        a1.log(ctx)
        m2.begin()
        observe_and_log(m2, a2, ctx)
        out1.append(lines(a1))
        out2.append(lines(a2))
    assert out1 == out2
    assert m1.drain() == m2.drain()
    assert a1.lines == a2.lines and a1.dropped == a2.dropped


def test_repeated_keys_reuse_the_tail_and_count() -> None:
    m, a = pair()
    for i in range(3):
        m.begin()
        observe_and_log(m, a, make_ctx(request_id=f"r{i}"))
    m.begin()   # still in flight at the drain
    d = m.drain()
    assert d["requests"][("api", "eu-west-1", "eu-west-1/10.0.0.1:80", "2xx")][0] == 3
    assert d["inflight"] == 1
    assert lines(a).count(b'"route":"api","region":"eu-west-1"') == 3
