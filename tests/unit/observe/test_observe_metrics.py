"""WorkerMetrics (hot path, deltas) and MetricsAggregator (sums, labels, exposition)."""
from __future__ import annotations

import asyncio
import pickle

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from proxy.observe.aggregate import MetricsAggregator, country_label, split_verdict
from proxy.observe.metrics import (
    LATENCY_BOUNDS, N_BUCKETS, R_COUNT, R_IN, R_LAT, R_LAT_SUM, R_OUT, R_UP, R_UP_SUM, WorkerMetrics, code_class,
    run_flusher)

KEY = ("api", "eu-west-1", "eu-west-1/10.0.0.1:80", "2xx")


def counts(d: dict) -> dict:
    return {k: r[R_COUNT] for k, r in d["requests"].items()}

from observe_fixtures import Geo


def samples(agg: MetricsAggregator) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(agg.registry).decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(agg: MetricsAggregator, name: str, **labels: str) -> float:
    return samples(agg).get((name, tuple(sorted(labels.items()))), 0.0)


def test_code_class() -> None:
    assert [code_class(s) for s in (0, 101, 200, 302, 404, 503, 600)] == \
        ["none", "1xx", "2xx", "3xx", "4xx", "5xx", "other"]


def test_observe_counts_by_bounded_labels(make_ctx) -> None:
    m = WorkerMetrics(1)
    for status in (200, 200, 503):
        m.begin()
        m.observe(make_ctx(status=status, bytes_in=10, bytes_out=100))
    m.begin()
    m.observe(make_ctx(route=None, region=None, backend=None, status=404, upstream=None, geo=None))
    d = m.drain()
    assert counts(d) == {KEY: 2, KEY[:3] + ("5xx",): 1, ("none", "none", "none", "4xx"): 1}
    assert (d["requests"][KEY][R_IN], d["requests"][KEY][R_OUT]) == (20, 200)
    assert d["clients"] == {("IE", "EU"): 3, (None, None): 1}
    assert d["inflight"] == 0
    # the raw path never becomes a label
    assert "/api/items/1" not in repr(d)


def test_histogram_buckets_are_le_inclusive(make_ctx) -> None:
    m = WorkerMetrics()
    for total in (0.001, 0.0010001, 10.0, 42.0):   # on a bound, just above it, the top, past the top
        m.begin()
        m.observe(make_ctx(start=0.0, end=total, upstream=None))
    r = m.drain()["requests"][KEY]
    h = r[R_LAT:R_LAT_SUM]
    assert h[0] == 1                       # 0.001 <= le=0.001
    assert h[1] == 1                       # 0.0010001 -> le=0.0025
    assert h[len(LATENCY_BOUNDS) - 1] == 1  # 10.0 -> le=10
    assert h[N_BUCKETS - 1] == 1           # 42 -> +Inf only
    assert r[R_LAT_SUM] == pytest.approx(0.001 + 0.0010001 + 10.0 + 42.0)


def test_upstream_latency_only_when_an_upstream_answered(make_ctx) -> None:
    m = WorkerMetrics()
    m.observe(make_ctx(upstream=(100.0, 100.004)))
    m.observe(make_ctx(upstream=None))
    r = m.drain()["requests"][KEY]
    assert r[R_COUNT] == 2
    assert sum(r[R_UP:R_UP_SUM]) == 1 and r[R_UP + LATENCY_BOUNDS.index(0.005)] == 1   # 4 ms
    assert r[R_UP_SUM] == pytest.approx(0.004)


def test_verdicts_errors_retries_and_events(make_ctx) -> None:
    m = WorkerMetrics()
    m.observe(make_ctx(verdicts=["ratelimit:per-ip:shadow", "anomaly:burst:block"], error="upstream-timeout",
                       retries=2))
    m.protect_decision("deny-list", "deny")
    m.upstream_connect_failure("b1")
    m.ejection("b1")
    d = m.drain()
    assert d["verdicts"] == {"ratelimit:per-ip:shadow": 1, "anomaly:burst:block": 1, "conn:deny-list:deny": 1}
    assert d["errors"] == {("api", "upstream-timeout"): 1}
    assert d["retries"] == {"api": 2}
    assert d["connect_failures"] == {"b1": 1} and d["ejections"] == {"b1": 1}


def test_drain_resets_and_is_picklable(make_ctx) -> None:
    m = WorkerMetrics("w1")
    m.begin()
    m.begin()
    m.observe(make_ctx())
    d = pickle.loads(pickle.dumps(m.drain()))
    assert d["worker"] == "w1" and d["inflight"] == 1 and sum(counts(d).values()) == 1
    again = m.drain()
    assert again["requests"] == {} and again["clients"] == {} and again["inflight"] == 1


def test_end_missing_uses_clock(make_ctx) -> None:
    m = WorkerMetrics(clock=lambda: 100.3)
    m.observe(make_ctx(start=100.0, end=0.0, upstream=None))
    r = m.drain()["requests"][KEY]
    assert r[R_LAT + LATENCY_BOUNDS.index(0.5)] == 1   # 0.3 s -> le=0.5


def test_aggregator_sums_workers_and_exposes_them(make_ctx) -> None:
    agg = MetricsAggregator()
    for worker, n in ((1, 3), (2, 4)):
        m = WorkerMetrics(worker)
        for _ in range(n):
            m.begin()
            m.observe(make_ctx(bytes_out=1000))
        m.begin()  # one request still in flight in each worker
        agg.apply(m.drain())
    labels = dict(route="api", region="eu-west-1", backend="eu-west-1/10.0.0.1:80", code="2xx")
    assert value(agg, "novaedge_requests_total", **labels) == 7
    assert value(agg, "novaedge_http_body_bytes_total", route="api", direction="out") == 7000
    assert value(agg, "novaedge_request_duration_seconds_count", route="api") == 7
    assert value(agg, "novaedge_request_duration_seconds_bucket", route="api", le="0.025") == 7
    assert value(agg, "novaedge_request_duration_seconds_bucket", route="api", le="0.01") == 0
    up = dict(region="eu-west-1", backend="eu-west-1/10.0.0.1:80")
    assert value(agg, "novaedge_upstream_duration_seconds_bucket", le="0.025", **up) == 7   # 14 ms each
    assert value(agg, "novaedge_upstream_duration_seconds_bucket", le="0.01", **up) == 0
    assert value(agg, "novaedge_upstream_duration_seconds_sum", **up) == pytest.approx(7 * 0.014)
    assert value(agg, "novaedge_requests_in_flight") == 2
    assert value(agg, "novaedge_metrics_workers") == 2
    agg.forget_worker(1)
    assert value(agg, "novaedge_requests_in_flight") == 1


def test_labels_are_normalised_and_capped(make_ctx) -> None:
    assert [country_label(c) for c in ("DE", None, "de", "XYZ", "1A")] == ["DE", "unknown", "other", "other", "other"]
    assert split_verdict("ratelimit:per-ip:shadow") == ("ratelimit", "per-ip", "shadow")
    assert split_verdict("acl:a:b:deny") == ("acl", "a:b", "deny")
    assert split_verdict("weird") == ("weird", "none", "none")
    agg = MetricsAggregator(max_series=4)
    m = WorkerMetrics()
    for geo in (Geo("DE", "EU"), Geo("<script>", "Mars"), Geo(None, None)):
        m.observe(make_ctx(geo=geo))
    for i in range(10):  # routes are config names, but a bug must not explode the series count
        m.observe(make_ctx(route=f"r{i}"))
    agg.apply(m.drain())
    s = samples(agg)
    assert value(agg, "novaedge_client_requests_total", country="DE", continent="EU") == 1
    assert value(agg, "novaedge_client_requests_total", country="IE", continent="EU") == 10
    assert value(agg, "novaedge_client_requests_total", country="other", continent="other") == 1
    assert value(agg, "novaedge_client_requests_total", country="unknown", continent="unknown") == 1
    req_series = [k for k in s if k[0] == "novaedge_requests_total"]
    assert len(req_series) == 5   # api, r0..r2, then the all-"other" overflow series
    assert value(agg, "novaedge_requests_total", route="other", region="other", backend="other", code="other") == 7
    assert value(agg, "novaedge_metrics_series_overflow_total", metric="novaedge_requests") == 7


def test_control_plane_gauges_replace_whole() -> None:
    agg = MetricsAggregator()
    agg.set_latency_matrix({"a": {"b": 0.05, "c": None}, "b": {"a": 0.051}})
    agg.set_latency_matrix({"a": {"b": 0.06}})
    s = samples(agg)
    assert value(agg, "novaedge_region_rtt_seconds", from_region="a", to_region="b") == 0.06
    assert ("novaedge_region_rtt_seconds", (("from_region", "b"), ("to_region", "a"))) not in s
    agg.set_gossip_members({"alive": 5, "suspect": 1})
    agg.set_geoip(1_700_000_000, 3, 1)
    agg.config_reload(True)
    agg.config_reload(False)
    agg.config_reload(True)
    agg.set_backend_health({"eu-west-1/10.0.0.1:80": True, "eu-west-1/10.0.0.2:80": False})
    agg.protect_decision("per-asn", "ratelimit")
    agg.retry("api")
    assert value(agg, "novaedge_gossip_members", state="suspect") == 1
    assert value(agg, "novaedge_geoip_build_timestamp_seconds") == 1_700_000_000
    assert value(agg, "novaedge_geoip_reloads_total", result="error") == 1
    assert value(agg, "novaedge_config_reloads_total", result="ok") == 2
    assert value(agg, "novaedge_config_reloads_total", result="error") == 1
    assert value(agg, "novaedge_backend_up", region="eu-west-1", backend="eu-west-1/10.0.0.2:80") == 0
    assert value(agg, "novaedge_protect_decisions_total", kind="control", rule="per-asn", action="ratelimit") == 1
    assert value(agg, "novaedge_upstream_retries_total", route="api") == 1


def test_apply_refuses_unknown_version() -> None:
    with pytest.raises(ValueError, match="version"):
        MetricsAggregator().apply({"v": 99})


def test_traffic_rates_over_the_window(make_ctx) -> None:
    clock = [0.0]
    agg = MetricsAggregator(clock=lambda: clock[0])
    assert agg.traffic()["rps"] is None          # one sample: no rate yet
    m = WorkerMetrics()
    for second in range(1, 21):
        clock[0] = float(second)
        for i in range(100):
            m.observe(make_ctx(status=503 if i < 5 else 200))
        agg.apply(m.drain())
    t = agg.traffic()
    assert t["rps"] == pytest.approx(100.0)
    assert t["error_ratio"] == pytest.approx(0.05)
    assert 10.0 <= t["window_s"] <= 11.0
    assert t["regions"]["eu-west-1"]["rps"] == pytest.approx(100.0)
    assert t["backends"]["eu-west-1/10.0.0.1:80"]["requests"] == 2000


async def test_run_flusher_ships_periodically_and_on_cancel(make_ctx) -> None:
    m = WorkerMetrics()
    sent: list[dict] = []
    task = asyncio.create_task(run_flusher(m, sent.append, interval=0.01))
    m.observe(make_ctx())
    await asyncio.sleep(0.05)
    m.observe(make_ctx())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sum(sum(counts(d).values()) for d in sent) == 2   # the last one came with the cancel
    assert len(sent) >= 2


def test_access_log_drops_reach_the_metrics() -> None:
    class Log:
        dropped = 0

    alog = Log()
    m = WorkerMetrics(access_log=alog)
    agg = MetricsAggregator()
    alog.dropped = 5
    agg.apply(m.drain())
    alog.dropped = 7
    agg.apply(m.drain())
    agg.apply(m.drain())
    assert value(agg, "novaedge_access_log_dropped_lines_total") == 7
