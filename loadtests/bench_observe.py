"""Cost of the observability hot path per request: metrics + access log.

    python loadtests/bench_observe.py [--n 200000] [--repeat 5]

Prints CPU ns/request (process CPU time, best and median of `repeat` runs) for
  WorkerMetrics.observe(ctx)           (begin() included)
  AccessLog.log(ctx)                    (format + buffer; the writer thread writes to /dev/null)
  both as two calls, observe() then log()
  both as the data plane calls them: the one call node.finish makes,
    FeatureHooks.finisher(), one pass over the request (proxy/observe/finish.py,
    in C: _finish.c); this is the figure for the target
  the same one pass in its Python version (finish.observe_and_log_py), for comparison
and the once-a-second costs in the control plane: drain + pickle + apply for
one worker's second of traffic, and one /metrics exposition.
Target: observe + log under 3000 ns/request. The reference line (one dict
increment, ~40 ns on an idle modern core) shows how loaded the machine was.
"""
from __future__ import annotations

import argparse
import functools
import os
import pickle
import random
import statistics
import sys
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from prometheus_client import generate_latest  # noqa: E402

from proxy.config import parse_config  # noqa: E402
from proxy.context import RequestContext  # noqa: E402
from proxy.features import FeatureHooks  # noqa: E402
from proxy.observe.accesslog import AccessLog  # noqa: E402
from proxy.observe.aggregate import MetricsAggregator  # noqa: E402
from proxy.observe.finish import observe_and_log_c, observe_and_log_py  # noqa: E402
from proxy.observe.metrics import WorkerMetrics  # noqa: E402

try:
    from geodb.record import GeoRecord  # type: ignore[import-not-found]
except ImportError:  # the geodb package may not be there yet
    from typing import NamedTuple

    class GeoRecord(NamedTuple):  # type: ignore[no-redef]
        country: str | None = None
        continent: str | None = None


class Route:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


def make_contexts(k: int = 512) -> list[RequestContext]:
    """A mix like an edge node sees: 3 routes, 3 regions x 3 backends, 6 countries."""
    rnd = random.Random(7)
    routes = [Route("api"), Route("static"), Route("auth")]
    geos = [GeoRecord(country=c, continent=ct) for c, ct in
            (("US", "NA"), ("DE", "EU"), ("IE", "EU"), ("JP", "AS"), ("BR", "SA"), ("IN", "AS"))] + [None]
    regions = ["us-east-1", "eu-west-1", "ap-northeast-1"]
    out = []
    for i in range(k):
        region = rnd.choice(regions)
        ctx = RequestContext(f"{i:016x}", 1000.0, "GET", "api.example.com",
                             f"/v1/items/{rnd.randrange(10**6)}", "page=2", "1.1", "198.51.100.23",
                             40000 + i, rnd.choice(geos),
                             [(b"host", b"api.example.com"), (b"user-agent", b"bench/1.0")], "0.0.0.0:8080")
        ctx.route = rnd.choice(routes)
        ctx.region = region
        ctx.backend = f"{region}/10.0.0.{rnd.randrange(3)}:8080"
        ctx.status = rnd.choices((200, 304, 404, 503), (90, 5, 4, 1))[0]
        ctx.bytes_in = 0 if rnd.random() < 0.8 else rnd.randrange(5000)
        ctx.bytes_out = rnd.randrange(200, 20000)
        ctx.upstream_start = 1000.0005
        ctx.upstream_headers_at = 1000.0005 + rnd.expovariate(1 / 0.02)
        ctx.end = ctx.upstream_headers_at + 0.0003
        if rnd.random() < 0.05:
            ctx.verdicts = ["ratelimit:per-ip:shadow"]
        out.append(ctx)
    return out


def timed(fn: Callable[[RequestContext], object], ctxs: list[RequestContext], n: int,
          between: Callable[[], None] | None = None) -> float:
    """CPU ns per call, all threads of this process (the log writer's work included).

    CPU time, not wall time: on a shared machine the wall clock also counts
    the time other processes held the core. Calls go in rounds over the
    contexts, with `between()` after each round (the loop's flush timer).
    """
    rounds = max(1, n // len(ctxs))
    t0 = time.process_time_ns()
    for _ in range(rounds):
        for ctx in ctxs:
            fn(ctx)
        if between is not None:
            between()
    return (time.process_time_ns() - t0) / (rounds * len(ctxs))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    ctxs = make_contexts()
    metrics = WorkerMetrics(1)
    alog = AccessLog(os.devnull)
    alog.start_thread_only()
    # the data plane's hooks with metrics and the access log on (config defaults)
    hooks = FeatureHooks(parse_config({"access_log": {"path": os.devnull}}), 1)
    assert hooks.metrics is not None and hooks.alog is not None
    hooks.alog.start_thread_only()

    def observe(ctx: RequestContext) -> None:
        metrics.begin()
        metrics.observe(ctx)

    def both(ctx: RequestContext) -> None:
        metrics.begin()
        metrics.observe(ctx)
        alog.log(ctx)

    # what node.finish calls per request (the in-flight level is the node's count, no call)
    data_plane = hooks.finisher(None)  # type: ignore[arg-type]  # it does not read node
    assert data_plane is not None
    py_metrics = WorkerMetrics(1)
    py_alog = AccessLog(os.devnull)
    py_alog.start_thread_only()
    one_pass_py = functools.partial(observe_and_log_py, py_metrics, py_alog)

    # After each round of 512 requests: the loop's flush timer (100 ms at ~5k req/s
    # per worker), and a GIL release as the loop's epoll_wait gives one, so the
    # writer thread runs as in a serving worker; its join+write CPU is counted.
    def tick() -> None:
        alog.flush()
        hooks.alog.flush()  # type: ignore[union-attr]
        py_alog.flush()
        time.sleep(0)

    ref: dict[tuple[str, str], int] = {}
    key = ("api", "eu-west-1")

    def reference(ctx: RequestContext) -> None:
        ref[key] = ref.get(key, 0) + 1

    results: dict[str, list[float]] = {"loop + flush overhead": [], "reference: one dict += 1": [], "metrics observe": [],
                                       "access log (format+buffer)": [], "observe() + log(), 2 calls": [],
                                       "metrics + access log": [], "  the same, Python version": []}
    for _ in range(args.repeat):
        base = timed(lambda ctx: None, ctxs, args.n, tick)
        results["loop + flush overhead"].append(base)
        results["reference: one dict += 1"].append(timed(reference, ctxs, args.n, tick) - base)
        results["metrics observe"].append(timed(observe, ctxs, args.n, tick) - base)
        metrics.drain()
        results["access log (format+buffer)"].append(timed(alog.log, ctxs, args.n, tick) - base)
        alog.flush()
        results["observe() + log(), 2 calls"].append(timed(both, ctxs, args.n, tick) - base)
        metrics.drain()
        alog.flush()
        results["metrics + access log"].append(timed(data_plane, ctxs, args.n, tick) - base)
        hooks.metrics.drain()
        hooks.alog.flush()
        results["  the same, Python version"].append(timed(one_pass_py, ctxs, args.n, tick) - base)
        py_metrics.drain()
        py_alog.flush()
        time.sleep(0.05)

    print(f"python {sys.version.split()[0]}, n={args.n} requests x {args.repeat} runs, "
          f"{len(ctxs)} distinct contexts, load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    for name, vals in results.items():
        print(f"  {name:<28} best {min(vals):7.0f} ns/req   median {statistics.median(vals):7.0f} ns/req")
    impl = "C, proxy/observe/_finish.c" if observe_and_log_c is not None else "Python: the C version is not built"
    print(f"  ('metrics + access log' is the data plane's one call per request ({impl}); target < 3000 ns)")
    print(f"  access log: {alog.lines + hooks.alog.lines} lines accepted, {alog.dropped + hooks.alog.dropped} dropped, "
          f"line ~{len(alog.format(ctxs[0]))} bytes")
    alog.close_sync()
    hooks.alog.close_sync()
    py_alog.close_sync()

    # control plane, per second: one worker at 20k req/s
    agg = MetricsAggregator()
    w = WorkerMetrics(1)
    for i in range(20_000):
        w.begin()
        w.observe(ctxs[i % len(ctxs)])
    t0 = time.perf_counter_ns()
    d = w.drain()
    blob = pickle.dumps(d, protocol=pickle.HIGHEST_PROTOCOL)
    t1 = time.perf_counter_ns()
    agg.apply(pickle.loads(blob))
    t2 = time.perf_counter_ns()
    body = generate_latest(agg.registry)
    t3 = time.perf_counter_ns()
    print(f"  per worker-second: drain+pickle {(t1 - t0) / 1000:.0f} us ({len(blob)} bytes), "
          f"unpickle+apply {(t2 - t1) / 1000:.0f} us")
    nlines = body.count(b"\n")
    print(f"  /metrics exposition: {(t3 - t2) / 1000:.0f} us, {len(body)} bytes, {nlines} lines")


if __name__ == "__main__":
    main()
