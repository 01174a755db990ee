"""One pass over a finished request for both metrics and the access log.

`observe_and_log(metrics, alog, ctx)` does what `metrics.observe(ctx)` then
`alog.log(ctx)` do, with the same lines and deltas (tests/unit/observe/
test_observe_finish.py checks they agree), in one function: each ctx field
is read once, the latencies are computed once for the histogram and the line,
two Python calls (observe, log -> format) are saved, and the line's last six
fields (route, region, backend and, for most requests, empty verdicts, null
error, 0 retries) come from a JSON fragment cached in the metrics record of
the request's key, so orjson serialises 13 keys instead of 18. About 0.2 us a
request less than the two calls, ~2.3 us for both in all (loadtests/
bench_observe.py). It inlines WorkerMetrics.observe and AccessLog.format/log:
a change to either must be made here too.

The same function is also written in C (`_finish.c`, built by setup.py as
proxy.observe._finish): `observe_and_log` is that one when it was built
(and NOVAEDGE_PURE_PYTHON is not set), this file's `observe_and_log_py`
otherwise; the C one hands anything unusual (another context class,
non-float times) to the Python one, and the tests run both on the same
random contexts. A change here must be made in _finish.c too.
"""
from __future__ import annotations

from bisect import bisect_left
from math import floor, trunc
from typing import TYPE_CHECKING, Any

try:
    import orjson
except ImportError:  # pragma: no cover - as in accesslog: every line takes the json fallback
    orjson = None  # type: ignore[assignment]

from proxy._accel import attach

from .accesslog import _MILLIS, _OPT, MAX_PATH_CHARS, AccessLog
from .metrics import (LATENCY_BOUNDS, NONE, R_FRAG, R_LAT, R_LAT_SUM, R_TAIL, R_UP, R_UP_SUM, WorkerMetrics,
                      code_class, new_record)

if TYPE_CHECKING:
    from proxy.context import RequestContext

# status -> code class label, for every status a response can have (100-599) and 0
_CLASS = tuple(code_class(s) for s in range(600))
_NO_GEO = (None, None)
_dumps: Any = orjson.dumps if orjson is not None else None
# the line's fields after upstream_ms when a request has no verdicts, error or retries
_TAIL = b',"verdicts":[],"error":null,"retries":0'


def tail_text(route: str | None, region: str | None, backend: str | None) -> bytes | bool:
    """The JSON of a line's last six fields for a request without verdicts,
    error or retries, from the "route" value on: made once per record key a
    second instead of serialising six fields a line (the C version writes
    it as it is). False when orjson cannot do it (no orjson, lone surrogates)."""
    if _dumps is None:
        return False
    try:
        return (_dumps(route) + b',"region":' + _dumps(region) + b',"backend":'
                + _dumps(backend) + _TAIL)
    except TypeError:
        return False


def tail_fragment(route: str | None, region: str | None, backend: str | None) -> Any:
    """tail_text as one orjson.Fragment that stands for the "route" value."""
    text = tail_text(route, region, backend)
    return orjson.Fragment(text) if text else False


def observe_and_log_py(m: WorkerMetrics, a: AccessLog, ctx: RequestContext) -> None:
    route = ctx.route
    status = ctx.status
    region = ctx.region
    backend = ctx.backend
    start = ctx.start
    end = ctx.end
    bytes_in = ctx.bytes_in
    bytes_out = ctx.bytes_out
    up_at = ctx.upstream_headers_at
    geo = ctx.geo
    verdicts = ctx.verdicts
    error = ctx.error
    retries = ctx.retries
    rname = route.name if route is not None else None

    # -- metrics (WorkerMetrics.observe) --
    key = (rname, region, backend, _CLASS[status] if 0 <= status < 600 else "other")
    reqs = m._requests
    r = reqs.get(key)
    if r is None:
        r = reqs[key] = new_record()
    if bytes_in:
        r[1] += bytes_in
    r[2] += bytes_out
    if end:
        t = end - start
        total_ms = trunc(t * 1e6 + 0.5) / 1000
    else:
        t = m._clock() - start
        total_ms = None
    r[R_LAT + bisect_left(LATENCY_BOUNDS, t)] += 1
    r[R_LAT_SUM] += t
    if up_at:
        t = up_at - ctx.upstream_start
        r[R_UP + bisect_left(LATENCY_BOUNDS, t)] += 1
        r[R_UP_SUM] += t
        upstream_ms = trunc(t * 1e6 + 0.5) / 1000
    else:
        upstream_ms = None
    if geo is not None:
        country = geo.country
        gkey = (country, geo.continent)
    else:
        country = None
        gkey = _NO_GEO
    g = m._clients
    g[gkey] = g.get(gkey, 0) + 1

    # -- access log line (AccessLog.format) --
    now = (end or start) + a._wall_offset
    sec = floor(now)
    if sec != a._sec:
        a._time_text(now)
    if verdicts or error is not None or retries:
        m.count_rare(NONE if rname is None else rname, verdicts, error, retries)
        frag = False
    else:
        frag = r[R_FRAG]
        if frag is None:
            frag = r[R_FRAG] = tail_fragment(rname, region, backend)
    if frag:
        rec = a._rec_short   # the keys up to "route", whose value is the fragment
        rec["route"] = frag
    else:
        rec = a._rec
        rec["route"] = rname
        rec["region"] = region
        rec["backend"] = backend
        rec["verdicts"] = verdicts
        rec["error"] = error
        rec["retries"] = retries
    rec["time"] = a._sec_text + _MILLIS[trunc((now - sec) * 1000 + 1e-4)]
    rec["id"] = ctx.request_id
    rec["client"] = ctx.client_ip
    rec["country"] = country
    rec["method"] = ctx.method
    rec["host"] = ctx.host
    rec["path"] = ctx.path[:MAX_PATH_CHARS]
    rec["status"] = status
    rec["bytes_in"] = bytes_in
    rec["bytes_out"] = bytes_out
    rec["total_ms"] = total_ms
    rec["upstream_ms"] = upstream_ms
    try:
        line = _dumps(rec, option=_OPT)
    except TypeError:  # lone surrogates (undecodable request bytes), or no orjson: the json fallback
        line = a.format(ctx)

    # -- buffer it (AccessLog.log) --
    pos = a._buf_bytes
    n = pos + len(line)
    try:
        a._view[pos:n] = line
    except ValueError:
        a._overflow(line)
        return
    a._buf_bytes = n
    a._buf_lines += 1


def _setup_c(_finish: Any) -> Any:
    """The C observe_and_log, set up with this file's constants."""
    from proxy.context import RequestContext
    _finish.setup(RequestContext, observe_and_log_py, new_record, tail_fragment, tail_text, _CLASS,
                  _MILLIS, LATENCY_BOUNDS, (R_LAT, R_LAT_SUM, R_UP, R_UP_SUM, R_FRAG, R_TAIL), MAX_PATH_CHARS,
                  _dumps, _OPT, NONE, AccessLog, WorkerMetrics)
    return _finish.observe_and_log


# None when it was not built, does not fit, orjson is missing or NOVAEDGE_PURE_PYTHON=1
observe_and_log_c = attach("proxy.observe._finish", _setup_c) if _dumps is not None else None
observe_and_log = observe_and_log_c or observe_and_log_py
