"""finish.observe_and_log inlines WorkerMetrics.observe + AccessLog.log: it must
give the same lines and the same deltas as the two calls, in both of its
versions (Python, and C in _finish.c)."""
from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from observe_fixtures import Geo, make_ctx

from proxy.observe.accesslog import AccessLog
from proxy.observe import finish
from proxy.observe.finish import observe_and_log, observe_and_log_c, observe_and_log_py
from proxy.observe.metrics import RECORD_LEN, WorkerMetrics

names = st.none() | st.sampled_from(["api", "none", "", "x\"y", "caf\u00e9", "\udce9"])
# Strings as requests bring them: mostly printable ASCII, which the C version
# writes itself (quotes and backslashes included here, which it leaves to
# orjson), sometimes anything.
ascii_text = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=30)
texts = ascii_text | ascii_text | st.text(max_size=30)
sizes = st.integers(0, 10_000) | st.integers(-(2**70), 2**70)
durations = st.none() | st.floats(0, 20) | st.floats(-1, 1e13)
ctxs = st.builds(
    lambda route, region, backend, status, start, dur, up, geo, path, host, verdicts, error, retries, bin_, bout:
    make_ctx(route=route, region=region, backend=backend, status=status, start=start,
             end=start + dur if dur is not None else 0.0,
             upstream=(start + up[0], start + up[0] + up[1]) if up is not None else None,
             geo=geo, path=path, host=host, verdicts=verdicts, error=error, retries=retries,
             bytes_in=bin_, bytes_out=bout),
    names, names, names, st.sampled_from([0, 101, 200, 204, 304, 404, 503, 599, 600, 999, -1, 2**70]),
    st.floats(0, 1e6), durations, st.none() | st.tuples(st.floats(0, 1), durations.filter(lambda d: d is not None)),
    st.none() | st.builds(Geo, st.none() | st.sampled_from(["DE", "IE", "\u00c5"]), st.none() | st.just("EU")),
    texts, texts, st.lists(st.sampled_from(["ratelimit:a:shadow", "acl:b:deny"]), max_size=2),
    st.none() | st.sampled_from(["client-gone", "upstream-timeout"]), st.integers(0, 3),
    sizes, sizes)


def pair() -> tuple[WorkerMetrics, AccessLog]:
    clock = iter(range(10**6)).__next__   # a request without an end is timed to "now": same in both
    return (WorkerMetrics(1, clock=lambda: float(clock())),
            AccessLog(os.devnull, clock=lambda: 1_700_000_000.0, mono=lambda: 0.0))


def lines(a: AccessLog) -> bytes:
    return bytes(a._buf[:a._buf_bytes])


IMPLS = [pytest.param(observe_and_log_py, id="python"),
         pytest.param(observe_and_log_c, id="c", marks=pytest.mark.skipif(
             observe_and_log_c is None, reason="the C version is not built"))]


def test_the_c_version_is_built_and_used() -> None:
    """setup.py builds it (optional, so that an install without a compiler
    still works): a test run without it would measure and test the wrong
    thing, so the project's own test run insists on it."""
    if os.environ.get("NOVAEDGE_PURE_PYTHON") == "1":
        pytest.skip("NOVAEDGE_PURE_PYTHON=1")
    assert observe_and_log_c is not None, "proxy/observe/_finish.c was not built (no C compiler?)"
    assert finish.observe_and_log is observe_and_log_c


@pytest.mark.parametrize("impl", IMPLS)
@settings(max_examples=500, deadline=None)
@given(batch=st.lists(ctxs, min_size=1, max_size=12))
def test_one_pass_matches_observe_then_log(impl, batch) -> None:
    m1, a1 = pair()
    m2, a2 = pair()
    out1 = []
    out2 = []
    for ctx in batch:
        m1.begin()
        m1.observe(ctx)
        a1.log(ctx)
        m2.begin()
        impl(m2, a2, ctx)
        out1.append(lines(a1))
        out2.append(lines(a2))
    assert out1 == out2
    assert m1.drain() == m2.drain()
    assert a1.lines == a2.lines and a1.dropped == a2.dropped


@pytest.mark.parametrize("impl", IMPLS)
def test_repeated_keys_reuse_the_tail_and_count(impl) -> None:
    m, a = pair()
    for i in range(3):
        m.begin()
        impl(m, a, make_ctx(request_id=f"r{i}"))
    m.begin()   # still in flight at the drain
    d = m.drain()
    assert d["requests"][("api", "eu-west-1", "eu-west-1/10.0.0.1:80", "2xx")][0] == 3
    assert d["inflight"] == 1
    assert lines(a).count(b'"route":"api","region":"eu-west-1"') == 3


@pytest.mark.parametrize("impl", IMPLS)
def test_a_full_buffer_is_handed_over_and_the_line_kept(impl) -> None:
    m1, a1 = pair()
    m2, a2 = pair()
    for a in (a1, a2):   # room for about two lines
        a._cap = 700
        a._buf = bytearray(700)
        a._view = memoryview(a._buf)
    handed1: list[bytes] = []
    handed2: list[bytes] = []
    a1._hand = lambda data, n, k: handed1.append(bytes(data[:n])) or True   # type: ignore[method-assign]
    a2._hand = lambda data, n, k: handed2.append(bytes(data[:n])) or True   # type: ignore[method-assign]
    for i in range(5):
        ctx = make_ctx(request_id=f"r{i}")
        m1.observe(ctx)
        a1.log(ctx)
        impl(m2, a2, ctx)
    assert handed2 and handed1 == handed2
    assert lines(a1) == lines(a2)


def test_the_c_version_hands_other_contexts_to_python() -> None:
    if observe_and_log_c is None:
        pytest.skip("the C version is not built")

    class Other:   # not a RequestContext: duck-typed, as a test double would be
        def __init__(self, ctx) -> None:
            for name in type(ctx).__slots__:
                setattr(self, name, getattr(ctx, name))

    m1, a1 = pair()
    m2, a2 = pair()
    for ctx in (make_ctx(), make_ctx(status=2**70), make_ctx(end=0.0), make_ctx(start=1),
                make_ctx(end=float("inf"))):
        if ctx.end == float("inf"):
            with pytest.raises(OverflowError):
                observe_and_log_py(m1, a1, ctx)
            with pytest.raises(OverflowError):
                observe_and_log_c(m2, a2, ctx)
            continue
        observe_and_log_py(m1, a1, Other(ctx))
        observe_and_log_c(m2, a2, Other(ctx))
        observe_and_log_py(m1, a1, ctx)
        observe_and_log_c(m2, a2, ctx)
    assert lines(a1) == lines(a2)
    assert m1.drain() == m2.drain()


def counts(m: WorkerMetrics) -> tuple[object, ...]:
    """The metrics as they stand, without draining (an odd record may not drain)."""
    return ({k: r[:RECORD_LEN] for k, r in m._requests.items()}, m._clients)


def _outcome(fn, m, a, ctx) -> tuple[object, ...]:
    try:
        fn(m, a, ctx)
    except Exception as e:  # noqa: BLE001 - the two versions must fail alike
        return (type(e).__name__,)
    return ("ok",)


def test_the_c_version_fails_as_python_does_on_odd_input() -> None:
    """Inputs a serving node never makes, found by review: the C version must
    not crash and must end as the Python one does (same exception, same
    counts, same lines)."""
    if observe_and_log_c is None:
        pytest.skip("the C version is not built")

    class Evil:   # a bytes_out whose + runs Python code that empties the record
        def __init__(self, m: WorkerMetrics) -> None:
            self.m = m

        def __radd__(self, other: object) -> object:
            for r in self.m._requests.values():
                r.clear()
            return other

    class DrainingGeo:   # a geo record whose country drains the metrics mid-call
        def __init__(self, m: WorkerMetrics) -> None:
            self.m = m
            self.continent = "EU"

        @property
        def country(self) -> str:
            self.m.drain()
            return "IE"

    cases = [
        lambda m: make_ctx(bytes_out=Evil(m)),
        lambda m: make_ctx(geo=DrainingGeo(m)),
        lambda m: make_ctx(end=1e300),                              # t * 1e6 overflows
        lambda m: make_ctx(upstream=(0.0, 1e300)),
        lambda m: make_ctx(path=None),
        lambda m: make_ctx(region=1),                               # labels that are not str:
        lambda m: make_ctx(region=True),                            # equal keys, other JSON
    ]
    for make in cases:
        m1, a1 = pair()
        m2, a2 = pair()
        want = _outcome(observe_and_log_py, m1, a1, make(m1))
        got = _outcome(observe_and_log_c, m2, a2, make(m2))
        assert got == want
        assert lines(a1) == lines(a2)
        assert counts(m1) == counts(m2)
    # a record of the wrong length (not one new_record() made)
    m1, a1 = pair()
    m2, a2 = pair()
    key = ("api", "eu-west-1", "eu-west-1/10.0.0.1:80", "2xx")
    m1._requests[key] = [0, 0, 0]
    m2._requests[key] = [0, 0, 0]
    assert _outcome(observe_and_log_c, m2, a2, make_ctx()) == _outcome(observe_and_log_py, m1, a1, make_ctx())
    assert counts(m1) == counts(m2)


def test_the_c_version_reads_subclasses_by_name() -> None:
    """The C version reads an exact AccessLog/WorkerMetrics by slot offset and
    anything else (a subclass) by attribute name: both give the same lines."""
    if observe_and_log_c is None:
        pytest.skip("the C version is not built")

    class Log(AccessLog):
        pass

    class Metrics(WorkerMetrics):
        pass

    m1, a1 = pair()
    m2 = Metrics(1, clock=lambda: 0.0)
    a2 = Log(os.devnull, clock=lambda: 1_700_000_000.0, mono=lambda: 0.0)
    for i in range(5):
        ctx = make_ctx(request_id=f"r{i}", status=200 + i)
        observe_and_log_c(m1, a1, ctx)
        observe_and_log_c(m2, a2, ctx)
    assert lines(a1) == lines(a2) and a1._buf_lines == a2._buf_lines == 5
    assert counts(m1) == counts(m2)
