"""Per-worker request metrics: plain dict counters on the hot path, shipped
as deltas to the control plane once a second.

Why not prometheus_client in the workers: its multiprocess mode writes an
mmap'd value under a lock on every inc()/observe(), several microseconds per
request once histograms are involved. Here a request costs a handful of dict
increments and one bisect (about 1 us, see loadtests/bench_observe.py), and
`drain()` hands the accumulated counts over as one picklable dict that the
control plane adds into its single registry (`aggregate.MetricsAggregator`).
That keeps one scrape = the node's totals, needs no shared files, and a
restarting worker never resets a node counter (the totals live in the
control plane).

Delta wire format (pickled over the worker's control channel; append-only:
new keys may be added, existing ones keep their meaning; bump DELTA_VERSION
only for an incompatible change):

    {"v": 1, "worker": <id>, "inflight": <level now>,
     "requests":  {(route, region, backend, code_class): record},
     "clients":   {(country | None, continent | None): n},
     "verdicts":  {"kind:rule:action": n},
     "errors":    {(route, error): n},
     "retries":   {route: n},
     "connect_failures": {backend: n},
     "ejections": {backend: n},
     "log_dropped": n}

    record = [count, bytes_in, bytes_out,
              total-latency bucket counts (len(LATENCY_BOUNDS) + 1, the last is +Inf), total sum_s,
              upstream-latency bucket counts (same), upstream sum_s]

One record per request key, rather than a dict per metric: a request then
costs one dict lookup instead of four (observe() ~15% cheaper, measured).
The aggregator folds records into the exported families (bytes and total
latency by route, upstream latency by region and backend).

Labels are raw here and normalised (ISO country check, cardinality cap) by
the aggregator, once per second per distinct key instead of per request.
Likewise per batch, in drain(), not per request: a record's count (the sum
of its total-latency buckets, as every request adds one to exactly one) and
the in-flight level (begun minus counted); the hot path keys records by the
raw (route name or None, region, backend, class), mapped to the wire's
"none" labels in drain(). A hot-path record also carries two more slots,
R_FRAG and R_TAIL, which drain() strips: the access log's JSON text for the
key's route, region and backend, as an orjson.Fragment and as bytes (see
finish.py).
"""
from __future__ import annotations

import asyncio
import logging
import time
from bisect import bisect_left
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from proxy.context import RequestContext

log = logging.getLogger("novaedge.metrics")

DELTA_VERSION = 1

# Edge latencies: 1 ms (a cache-warm local answer) to 10 s (the slowest
# upstream we still wait for). Upper bounds are inclusive, as Prometheus's `le`.
LATENCY_BOUNDS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
N_BUCKETS = len(LATENCY_BOUNDS) + 1          # + the +Inf bucket
# record layout (see the module docstring)
R_COUNT, R_IN, R_OUT = 0, 1, 2
R_LAT = 3                                    # first total-latency bucket
R_LAT_SUM = R_LAT + N_BUCKETS
R_UP = R_LAT_SUM + 1                         # first upstream-latency bucket
R_UP_SUM = R_UP + N_BUCKETS
RECORD_LEN = R_UP_SUM + 1
R_FRAG = RECORD_LEN                          # hot-path only, not shipped (see the docstring)
R_TAIL = R_FRAG + 1                          # the same text as bytes, for finish's C version

# status // 100 -> class label; 0 (no response sent, e.g. client gone) -> "none"
_CODE_CLASS = ("none", "1xx", "2xx", "3xx", "4xx", "5xx")
NONE = "none"


class _HasDropped(Protocol):
    dropped: int


def code_class(status: int) -> str:
    c = status // 100
    return _CODE_CLASS[c] if 0 <= c <= 5 else "other"


class WorkerMetrics:
    """Counts one worker's requests; `drain()` returns and resets the deltas.

    Contract with the data plane: call `begin()` (or ``inflight += 1``) when a
    request head is complete, or count requests yourself and pass the level to
    `drain(inflight=...)` (the node does); call `observe(ctx)` (or
    `finish.observe_and_log`) exactly once when it ends (also on error);
    `inflight` is right after drain();
    ctx.end should be set by then (else now is used). Route names are read
    from ``ctx.route.name``; ctx.region/ctx.backend are config ids. Not
    thread-safe: one instance per event loop.
    """

    # the two dicts every request updates, as slots: finish's C version reads
    # them by offset; the rest lives in __dict__
    __slots__ = ("_requests", "_clients", "__dict__")

    def __init__(self, worker: int | str = 0, *, clock: Callable[[], float] = time.monotonic,
                 access_log: _HasDropped | None = None) -> None:
        self.worker = worker
        self.inflight = 0
        self._clock = clock
        self._access_log = access_log
        self._log_dropped_seen = 0
        self._reset()

    def _reset(self) -> None:
        # keyed by raw labels, records with the R_FRAG slot: see the module docstring
        self._requests: dict[tuple[str | None, str | None, str | None, str], list[Any]] = {}
        self._clients: dict[tuple[str | None, str | None], int] = {}
        self._verdicts: dict[str, int] = {}
        self._errors: dict[tuple[str, str], int] = {}
        self._retries: dict[str, int] = {}
        self._connect_failures: dict[str, int] = {}
        self._ejections: dict[str, int] = {}

    # -- hot path ------------------------------------------------------

    def begin(self) -> None:
        self.inflight += 1

    def observe(self, ctx: RequestContext) -> None:
        # finish.observe_and_log inlines this: keep the two in step
        route = ctx.route
        c = ctx.status // 100
        key = (route.name if route is not None else None, ctx.region, ctx.backend,
               _CODE_CLASS[c] if 0 <= c <= 5 else "other")
        r = self._requests.get(key)
        if r is None:
            r = self._requests[key] = new_record()
        r[R_IN] += ctx.bytes_in
        r[R_OUT] += ctx.bytes_out
        t = (ctx.end or self._clock()) - ctx.start
        r[R_LAT + bisect_left(LATENCY_BOUNDS, t)] += 1
        r[R_LAT_SUM] += t
        up_at = ctx.upstream_headers_at
        if up_at:
            t = up_at - ctx.upstream_start
            r[R_UP + bisect_left(LATENCY_BOUNDS, t)] += 1
            r[R_UP_SUM] += t

        geo = ctx.geo
        gkey = (geo.country, geo.continent) if geo is not None else (None, None)
        g = self._clients
        g[gkey] = g.get(gkey, 0) + 1
        if ctx.verdicts or ctx.error is not None or ctx.retries:
            self.count_rare(route.name if route is not None else NONE, ctx.verdicts, ctx.error, ctx.retries)

    def count_rare(self, route: str, verdicts: list[str], error: str | None, retries: int) -> None:
        """The parts of a request most have none of: verdicts, an error, retries."""
        v = self._verdicts
        for verdict in verdicts:
            v[verdict] = v.get(verdict, 0) + 1
        if error is not None:
            ekey = (route, error)
            self._errors[ekey] = self._errors.get(ekey, 0) + 1
        if retries:
            self._retries[route] = self._retries.get(route, 0) + retries

    # -- events outside a finished request ---------------------------------

    def protect_decision(self, rule: str, action: str, kind: str = "conn") -> None:
        """A protect decision without a request to log (e.g. per-connection deny).

        Decisions on requests are counted from ctx.verdicts by observe(); do
        not count those twice.
        """
        verdict = f"{kind}:{rule}:{action}"
        self._verdicts[verdict] = self._verdicts.get(verdict, 0) + 1

    def upstream_connect_failure(self, backend: str) -> None:
        self._connect_failures[backend] = self._connect_failures.get(backend, 0) + 1

    def ejection(self, backend: str) -> None:
        self._ejections[backend] = self._ejections.get(backend, 0) + 1

    # -- shipping ------------------------------------------------------

    def drain(self, inflight: int | None = None) -> dict[str, Any]:
        """Counts since the last drain, as a picklable dict; resets them.
        `inflight`: the level now, when the caller counts it (the node does:
        it calls neither begin() nor anything per request for it)."""
        requests: dict[tuple[str, str, str, str], list[Any]] = {}
        done = 0
        for (route, region, backend, cls), r in self._requests.items():
            del r[RECORD_LEN:]                             # the hot-path-only slots
            n = r[R_COUNT] = sum(r[R_LAT:R_LAT_SUM])       # one total-latency bucket a request
            done += n
            key = (NONE if route is None else route, region or NONE, backend or NONE, cls)
            have = requests.get(key)
            if have is None:
                requests[key] = r
            else:   # None and "none" (or "") are one label on the wire
                for i, x in enumerate(r):
                    have[i] += x
        if inflight is None:
            self.inflight -= done
        else:
            self.inflight = inflight
        deltas: dict[str, Any] = {
            "v": DELTA_VERSION, "worker": self.worker, "inflight": self.inflight,
            "requests": requests, "clients": self._clients, "verdicts": self._verdicts, "errors": self._errors, "retries": self._retries,
            "connect_failures": self._connect_failures, "ejections": self._ejections,
        }
        if self._access_log is not None:
            dropped = self._access_log.dropped
            deltas["log_dropped"] = dropped - self._log_dropped_seen
            self._log_dropped_seen = dropped
        self._reset()
        return deltas


def new_record() -> list[Any]:
    """A hot-path record: the wire record plus the R_FRAG and R_TAIL slots."""
    return [0] * R_LAT_SUM + [0.0] + [0] * N_BUCKETS + [0.0, None, None]


async def run_flusher(metrics: WorkerMetrics, send: Callable[[dict[str, Any]], object],
                      interval: float = 1.0) -> None:
    """Ship `metrics.drain()` through `send` every `interval` seconds.

    `send` is the worker's control channel (multi-process) or
    `MetricsAggregator.apply` (single process). Cancelling the task ships
    what is left, so a clean worker shutdown loses no counts.
    """
    try:
        while True:
            await asyncio.sleep(interval)
            try:
                send(metrics.drain())
            except Exception:  # a lost second of counts beats a dead flusher
                log.warning("metrics flush failed", exc_info=True)
    finally:
        try:
            send(metrics.drain())
        except Exception:  # the channel may already be gone at shutdown
            log.warning("final metrics flush failed", exc_info=True)
