from __future__ import annotations

from proxy.protect.config import DetectorConfig
from proxy.protect.detector import Anomaly
from proxy.protect.mitigation import MitigationBook


def book(workers: int = 1, **mit: object) -> MitigationBook:
    cfg = DetectorConfig.model_validate({
        "enabled": True,
        "mitigation": {"action": "limit", "ttl_s": 10, "escalate_after_s": 5,
                       "max_level": 3, **mit},
        "global": {"strict_per_ip_rate": 3, "ttl_s": 20}})
    return MitigationBook(cfg, workers)


def anomaly(key: str = "203.0.113.9", kind: str = "ip") -> Anomaly:
    return Anomaly(kind, key, rate=500.0, mean=10.0, sigma=3.0, threshold=19.0)


def test_start_uses_the_baseline_threshold_scaled_to_the_node() -> None:
    b = book(workers=2)
    event, m = b.on_anomaly(anomaly(), 100.0)
    assert event == "start" and m.action == "limit" and m.level == 1
    assert m.limit_rate == 38.0                 # 19 req/s per worker x 2 workers
    assert m.until == 110.0 and b.count == 1
    assert b.get("ip", "203.0.113.9") is m and b.get("ip", "198.51.100.1") is None


def test_configured_limit_rate_wins() -> None:
    _, m = book(limit_rate=7.5).on_anomaly(anomaly(), 0.0)
    assert m.limit_rate == 7.5


def test_mitigation_expires_after_its_ttl_when_the_anomaly_ends() -> None:
    b = book()
    b.on_anomaly(anomaly(), 100.0)
    assert b.expire(109.9) == []
    gone = b.expire(110.0)
    assert [m.key for m in gone] == ["203.0.113.9"] and b.count == 0
    assert b.listing(110.0) == []


def test_persisting_anomaly_refreshes_then_escalates_to_block() -> None:
    b = book()
    events = []
    for t in range(100, 113):                   # anomalous every second for 12 s
        event, m = b.on_anomaly(anomaly(), float(t))
        events.append((t, event, m.level, m.action))
    assert events[0] == (100, "start", 1, "limit")
    assert events[1] == (101, "refresh", 1, "limit")
    assert events[5] == (105, "escalate", 2, "block")
    assert events[10] == (110, "escalate", 3, "block")
    assert events[11][1:] == ("refresh", 3, "block")          # max_level
    m = b.get("ip", "203.0.113.9")
    assert m is not None and m.until == 112 + 10 * 4         # ttl doubles per level
    assert b.expire(151.9) == [] and len(b.expire(152.0)) == 1


def test_a_lapsed_mitigation_starts_over() -> None:
    b = book()
    b.on_anomaly(anomaly(), 0.0)
    event, m = b.on_anomaly(anomaly(), 10.0)     # until == 10: lapsed
    assert event == "start" and m.level == 1 and b.count == 1


def test_global_anomaly_switches_strict_per_ip_mode() -> None:
    b = book()
    event, m = b.on_anomaly(anomaly("node", "global"), 0.0)
    assert event == "start" and m.kind == "global" and m.limit_rate == 3 and m.until == 20
    event, m = b.on_anomaly(anomaly("node", "global"), 15.0)
    assert event == "refresh" and m.until == 35 and m.level == 1
    assert len(b.expire(35.0)) == 1


def test_listing_has_the_numbers() -> None:
    b = book(action="block")
    b.on_anomaly(anomaly(), 0.0)
    (row,) = b.listing(4.0)
    assert row == {"kind": "ip", "key": "203.0.113.9", "action": "block", "level": 1,
                   "ttl_s": 6.0, "age_s": 4.0, "since_monotonic": 0.0, "limit_rate": 19.0, "shadow": False,
                   "rate": 500.0, "mean": 10.0, "sigma": 3.0}
