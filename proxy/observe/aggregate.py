"""The node's one metrics registry, in the control plane.

Workers' deltas (`metrics.WorkerMetrics.drain()`) are added with `apply()`;
control-plane facts (gossip, latency matrix, GeoIP, config reloads, backend
health) are set through the methods below. Everything is exposed by a
custom prometheus_client collector (the library's documented way to export
counts kept elsewhere): the workers send pre-aggregated bucket counts, which
a `prometheus_client.Histogram` cannot take (it only has observe(v)).

Labels are bounded here: countries must be ISO 3166 alpha-2 shaped (else
"other", missing "unknown"), continents one of the seven codes, and each
family holds at most `max_series` series; later new label sets fold into an
all-"other" series and are counted in novaedge_metrics_series_overflow_total.
Route, region and backend names come from config, so the cap is a safety
net, not the rule.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import (
    CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric)
from prometheus_client.utils import floatToGoString

from .metrics import DELTA_VERSION, LATENCY_BOUNDS, N_BUCKETS, R_COUNT, R_IN, R_LAT, R_OUT, R_UP, R_UP_SUM

CONTINENTS = frozenset({"AF", "AN", "AS", "EU", "NA", "OC", "SA"})
_LE = [floatToGoString(b) for b in LATENCY_BOUNDS] + ["+Inf"]  # type: ignore[no-untyped-call]
RATE_WINDOW_S = 10.0


def country_label(code: str | None) -> str:
    if code is None:
        return "unknown"
    if len(code) == 2 and code.isascii() and code.isalpha() and code.isupper():
        return code
    return "other"


def continent_label(code: str | None) -> str:
    if code is None:
        return "unknown"
    return code if code in CONTINENTS else "other"


def split_verdict(verdict: str) -> tuple[str, str, str]:
    """"ratelimit:per-ip:shadow" -> (kind, rule, action); rule may hold ':'."""
    kind, _, rest = verdict.partition(":")
    rule, sep, action = rest.rpartition(":")
    if not sep:
        rule, action = rest, "none"
    return kind or "none", rule or "none", action or "none"


class _Family:
    """Series of one metric, keyed by label tuple, capped in number."""

    __slots__ = ("name", "doc", "labels", "max_series", "values", "overflow", "_other")

    def __init__(self, name: str, doc: str, labels: tuple[str, ...], max_series: int) -> None:
        self.name = name
        self.doc = doc
        self.labels = labels
        self.max_series = max_series
        self.values: dict[tuple[str, ...], Any] = {}
        self.overflow = 0
        self._other = ("other",) * len(labels)

    def slot(self, key: tuple[str, ...]) -> tuple[str, ...]:
        if key in self.values or len(self.values) < self.max_series:
            return key
        self.overflow += 1
        return self._other

    def add(self, key: tuple[str, ...], n: float) -> None:
        k = self.slot(key)
        self.values[k] = self.values.get(k, 0) + n

    def add_hist(self, key: tuple[str, ...], rec: list[float], at: int) -> None:
        """Add rec[at:at + N_BUCKETS] (bucket counts) and rec[at + N_BUCKETS] (sum)."""
        k = self.slot(key)
        h = self.values.get(k)
        if h is None:
            self.values[k] = rec[at:at + N_BUCKETS + 1]
        else:
            for i in range(N_BUCKETS + 1):
                h[i] += rec[at + i]

    def counter(self) -> Metric:
        m = CounterMetricFamily(self.name, self.doc, labels=self.labels)
        for k, v in self.values.items():
            m.add_metric(k, v)
        return m

    def gauge(self) -> Metric:
        m = GaugeMetricFamily(self.name, self.doc, labels=self.labels)
        for k, v in self.values.items():
            m.add_metric(k, v)
        return m

    def histogram(self) -> Metric:
        m = HistogramMetricFamily(self.name, self.doc, labels=self.labels)
        for k, h in self.values.items():
            cum, buckets = 0.0, []
            for le, n in zip(_LE, h[:N_BUCKETS]):
                cum += n
                buckets.append((le, cum))
            m.add_metric(k, buckets, h[N_BUCKETS])
        return m


class MetricsAggregator:
    """Sums the workers' deltas and the control plane's facts; a collector.

    `registry` is what the admin listener's /metrics exposes. Call only from
    the control plane's event loop (no locks: apply() and collect() never
    interleave there).
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, max_series: int = 1000,
                 registry: CollectorRegistry | None = None) -> None:
        self._clock = clock
        F = _Family
        m = max_series
        self.requests = F("novaedge_requests", "Requests by route, region, backend and status class",
                          ("route", "region", "backend", "code"), m)
        self.latency = F("novaedge_request_duration_seconds",
                         "Time from request head to response end", ("route",), m)
        self.upstream = F("novaedge_upstream_duration_seconds",
                          "Time from upstream connect/send to the upstream's response head",
                          ("region", "backend"), m)
        self.bytes = F("novaedge_http_body_bytes", "Body bytes from clients (in) and to them (out)",
                       ("route", "direction"), m)
        self.clients = F("novaedge_client_requests", "Requests by client country and continent",
                         ("country", "continent"), m)
        self.errors = F("novaedge_request_errors", "Requests that ended with a proxy error",
                        ("route", "error"), m)
        self.retries = F("novaedge_upstream_retries", "Upstream retries", ("route",), m)
        self.connect_failures = F("novaedge_upstream_connect_failures",
                                  "Failed upstream connects", ("backend",), m)
        self.ejections = F("novaedge_backend_ejections", "Backends ejected from balancing",
                           ("backend",), m)
        self.protect = F("novaedge_protect_decisions",
                         "Rate-limit, ACL and anomaly decisions by rule and action",
                         ("kind", "rule", "action"), m)
        self.config_reloads = F("novaedge_config_reloads", "Config reloads by result", ("result",), 4)
        self.geoip_reloads = F("novaedge_geoip_reloads", "GeoIP database reloads by result", ("result",), 4)
        self.log_dropped = F("novaedge_access_log_dropped_lines",
                             "Access log lines dropped because the writer fell behind", (), 1)
        # gauges: replaced whole by their setters
        self.gossip = F("novaedge_gossip_members", "Gossip members by state", ("state",), m)
        self.rtt = F("novaedge_region_rtt_seconds", "Measured round-trip time between regions",
                     ("from_region", "to_region"), m)
        self.backend_up = F("novaedge_backend_up", "1 if the backend is healthy and not ejected",
                            ("region", "backend"), m)
        self.geoip_build = F("novaedge_geoip_build_timestamp_seconds",
                             "Build time of the loaded GeoIP database", (), 1)
        self._inflight: dict[object, int] = {}
        self._samples: list[tuple[float, dict[str, Any]]] = []
        self.registry = registry if registry is not None else CollectorRegistry()
        self.registry.register(self)

    # -- from workers ------------------------------------------------------

    def apply(self, d: Mapping[str, Any]) -> None:
        """Add one worker's `WorkerMetrics.drain()` result."""
        if d.get("v") != DELTA_VERSION:
            raise ValueError(f"metrics delta version {d.get('v')!r}, expected {DELTA_VERSION}")
        self._inflight[d.get("worker")] = d.get("inflight", 0)
        for k, r in d.get("requests", {}).items():
            route, region, backend, _code = k
            self.requests.add(k, r[R_COUNT])
            self.bytes.add((route, "in"), r[R_IN])
            self.bytes.add((route, "out"), r[R_OUT])
            self.latency.add_hist((route,), r, R_LAT)
            if any(r[R_UP:R_UP_SUM]):
                self.upstream.add_hist((region, backend), r, R_UP)
        for (country, continent), n in d.get("clients", {}).items():
            self.clients.add((country_label(country), continent_label(continent)), n)
        for v, n in d.get("verdicts", {}).items():
            self.protect.add(split_verdict(v), n)
        for k, n in d.get("errors", {}).items():
            self.errors.add(k, n)
        for route, n in d.get("retries", {}).items():
            self.retries.add((route,), n)
        for b, n in d.get("connect_failures", {}).items():
            self.connect_failures.add((b,), n)
        for b, n in d.get("ejections", {}).items():
            self.ejections.add((b,), n)
        if d.get("log_dropped"):
            self.log_dropped.add((), d["log_dropped"])
        self._maybe_sample(self._clock())

    def forget_worker(self, worker: object) -> None:
        """A worker exited: its in-flight level no longer counts."""
        self._inflight.pop(worker, None)

    @property
    def inflight(self) -> int:
        return max(0, sum(self._inflight.values()))

    # -- from the control plane --------------------------------------------

    def protect_decision(self, rule: str, action: str, kind: str = "control") -> None:
        self.protect.add((kind, rule, action), 1)

    def upstream_connect_failure(self, backend: str) -> None:
        self.connect_failures.add((backend,), 1)

    def retry(self, route: str, n: int = 1) -> None:
        self.retries.add((route,), n)

    def ejection(self, backend: str) -> None:
        self.ejections.add((backend,), 1)

    def config_reload(self, ok: bool) -> None:
        self.config_reloads.add(("ok" if ok else "error",), 1)

    def set_geoip(self, build_epoch: float | None, reloads_ok: int, reloads_failed: int) -> None:
        """GeoIP facts as absolute values (the GeoIP reloader keeps the counts)."""
        self.geoip_build.values = {} if build_epoch is None else {(): float(build_epoch)}
        self.geoip_reloads.values = {("ok",): reloads_ok, ("error",): reloads_failed}

    def set_gossip_members(self, counts_by_state: Mapping[str, int]) -> None:
        self.gossip.values = {}
        for state, n in counts_by_state.items():
            self.gossip.add((state,), n)

    def set_latency_matrix(self, rtt_seconds: Mapping[str, Mapping[str, float | None]]) -> None:
        """from-region -> to-region -> RTT in seconds (None: not measured)."""
        self.rtt.values = {}
        for src, row in rtt_seconds.items():
            for dst, s in row.items():
                if s is not None:
                    self.rtt.add((src, dst), s)

    def set_backend_health(self, up: Mapping[str, bool]) -> None:
        """backend id ("region/host:port") -> healthy and not ejected."""
        self.backend_up.values = {}
        for backend, ok in up.items():
            self.backend_up.add((backend.partition("/")[0], backend), 1 if ok else 0)

    # -- exposition -------------------------------------------------------

    def describe(self) -> list[Metric]:
        return []  # names are fixed; no registry-time collect needed

    def collect(self) -> Iterator[Metric]:
        for f in (self.requests, self.bytes, self.clients, self.errors, self.retries,
                  self.connect_failures, self.ejections, self.protect, self.config_reloads,
                  self.geoip_reloads, self.log_dropped):
            yield f.counter()
        yield self.latency.histogram()
        yield self.upstream.histogram()
        for f in (self.gossip, self.rtt, self.backend_up, self.geoip_build):
            yield f.gauge()
        yield GaugeMetricFamily("novaedge_requests_in_flight", "Requests being served",
                                value=self.inflight)
        yield GaugeMetricFamily("novaedge_metrics_workers", "Workers whose metrics arrived",
                                value=len(self._inflight))
        over = CounterMetricFamily("novaedge_metrics_series_overflow",
                                   "Label sets folded into 'other' by the series cap",
                                   labels=("metric",))
        for f in (self.requests, self.latency, self.upstream, self.bytes, self.clients,
                  self.errors, self.protect):
            if f.overflow:
                over.add_metric((f.name,), f.overflow)
        yield over

    # -- rates for the status page ------------------------------------------

    def _totals(self) -> dict[str, Any]:
        all_req = all_err = 0.0
        regions: dict[str, list[float]] = {}
        backends: dict[str, list[float]] = {}
        for (_route, region, backend, code), n in self.requests.values.items():
            err = n if code == "5xx" else 0
            all_req += n
            all_err += err
            r = regions.setdefault(region, [0.0, 0.0])
            r[0] += n
            r[1] += err
            b = backends.setdefault(backend, [0.0, 0.0])
            b[0] += n
            b[1] += err
        return {"all": [all_req, all_err], "regions": regions, "backends": backends}

    def _maybe_sample(self, now: float) -> None:
        if self._samples and now - self._samples[-1][0] < 1.0:
            return
        self._samples.append((now, self._totals()))
        # keep the samples inside the window plus the newest one before it
        while len(self._samples) > 2 and self._samples[1][0] <= now - RATE_WINDOW_S:
            del self._samples[0]

    def traffic(self) -> dict[str, Any]:
        """Request and 5xx rates over the last ~10 s, node-wide, by region and by backend.

        Rates are None until two samples a second apart exist.
        """
        now = self._clock()
        self._maybe_sample(now)
        cur = self._totals()
        t0, old = self._samples[0]
        dt = now - t0

        def rate(new: list[float], prev: list[float] | None) -> dict[str, float | None]:
            p = prev or [0.0, 0.0]
            if dt < 1.0:
                return {"rps": None, "error_ratio": None, "requests": new[0]}
            dn, de = new[0] - p[0], new[1] - p[1]
            return {"rps": dn / dt, "error_ratio": (de / dn) if dn > 0 else 0.0, "requests": new[0]}

        out: dict[str, Any] = rate(cur["all"], old["all"])
        out["window_s"] = dt
        out["inflight"] = self.inflight
        out["regions"] = {r: rate(v, old["regions"].get(r)) for r, v in cur["regions"].items()}
        out["backends"] = {b: rate(v, old["backends"].get(b)) for b, v in cur["backends"].items()}
        return out
