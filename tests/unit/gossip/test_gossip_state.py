from __future__ import annotations

import pytest

from proxy.gossip.state import (
    ClusterState,
    LatencyMatrix,
    NodeStateRow,
    RttEstimator,
    latency_matrix,
    region_health,
    replication_lag,
)


def test_row_payload_roundtrip() -> None:
    row = NodeStateRow("n1", 7, "eu-west-1", "1.2", 0.5, 3, 4, 1234, {"us-east-1": 70.04}, 0.25)
    back = NodeStateRow.parse(row.payload())
    assert back == NodeStateRow("n1", 7, "eu-west-1", "1.2", 0.5, 3, 4, 1234, {"us-east-1": 70.0}, 0.25)


def test_row_parse_tolerates_missing_optional_fields() -> None:
    row = NodeStateRow.parse({"n": "x", "v": 1, "r": "r1", "zz": "future field"})
    assert row.rtt_ms == {} and row.replication_lag_s is None


def test_rtt_ewma_and_ageing() -> None:
    est = RttEstimator(alpha=0.5, max_age_s=10, window=1)
    est.sample("r", 0.100, now=0.0)
    est.sample("r", 0.140, now=1.0)
    assert est.row(1.0) == {"r": pytest.approx(120.0)}
    assert est.row(12.0) == {}


def test_late_acks_do_not_inflate_the_estimate_a_real_change_wins() -> None:
    est = RttEstimator(alpha=0.2, window=8)
    for i, ms in enumerate([20, 23, 21, 70, 24, 20.5, 22, 26, 21]):  # a busy loop adds, never subtracts
        est.sample("r", ms / 1000, now=i)
    assert est.row(9.0)["r"] == pytest.approx(20.0, abs=0.2)
    for i in range(30):
        est.sample("r", 0.060, now=10.0 + i)  # the path really got 3x longer
    assert est.row(40.0)["r"] == pytest.approx(60.0, rel=0.05)
    est.sample("r", 0.030, now=41.0)  # and shorter again: the minimum sees it at once
    assert est.row(41.0)["r"] < 55.0


def test_newer_row_version_wins() -> None:
    cs = ClusterState("me", "r0", "", version=1)
    assert cs.merge(NodeStateRow("b", 5, "r1", healthy_backends=1))
    assert not cs.merge(NodeStateRow("b", 4, "r1", healthy_backends=9))
    assert not cs.merge(NodeStateRow("b", 5, "r1", healthy_backends=9))
    assert cs.rows["b"].healthy_backends == 1
    assert cs.is_news("b", 6) and not cs.is_news("b", 5)


def test_health_change_publishes_at_once_others_wait() -> None:
    cs = ClusterState("me", "r0", "", version=1, min_publish_interval_s=1.0)
    assert cs.maybe_publish(0.0) is not None  # the first row
    cs.set_health(2, 3, wall_ms=5)
    row = cs.maybe_publish(0.1)
    assert row is not None and (row.healthy_backends, row.total_backends) == (2, 3)
    cs.set_replication_lag(4.0)
    assert cs.maybe_publish(0.2) is None  # rate-limited
    row = cs.maybe_publish(1.2)
    assert row is not None and row.replication_lag_s == 4.0
    cs.set_replication_lag(4.01)  # below the threshold: not worth a broadcast
    assert cs.maybe_publish(5.0) is None


def test_rtt_publish_only_on_a_real_move() -> None:
    cs = ClusterState("me", "r0", "", version=1, min_publish_interval_s=0.0)
    cs.maybe_publish(0.0)
    cs.observe_rtt("r1", 0.100, 0.0)
    assert cs.maybe_publish(0.1) is not None  # a new region
    cs.observe_rtt("r1", 0.102, 0.2)
    assert cs.maybe_publish(0.3) is None  # 0.4 ms: noise
    for _ in range(10):
        cs.observe_rtt("r1", 0.150, 0.4)
    assert cs.maybe_publish(0.5) is not None


def test_publish_interval_grows_with_cluster_size() -> None:
    cs = ClusterState("me", "r0", "", version=1, min_publish_interval_s=1.0)
    cs.maybe_publish(0.0)
    cs.set_load(0.9)
    assert cs.maybe_publish(2.0, n_nodes=320) is None  # 10 s at 320 nodes
    assert cs.maybe_publish(10.5, n_nodes=320) is not None


def test_a_newer_row_about_ourselves_pushes_our_version_past_it() -> None:
    cs = ClusterState("me", "r0", "", version=10)
    cs.maybe_publish(0.0)
    assert not cs.merge(NodeStateRow("me", 11, "r0"))  # our own echo: nothing to do
    assert cs.maybe_publish(0.1) is None
    cs.merge(NodeStateRow("me", 500, "r0"))  # a previous life published further
    row = cs.maybe_publish(0.2)
    assert row is not None and row.version == 501


def rows() -> list[NodeStateRow]:
    return [
        NodeStateRow("a1", 1, "A", rtt_ms={"A": 1.0, "B": 20.0, "C": 150.0}, healthy_backends=2,
                     total_backends=2, health_changed_ms=1000, replication_lag_s=0.5),
        NodeStateRow("a2", 1, "A", rtt_ms={"A": 3.0, "B": 24.0}, healthy_backends=0,
                     total_backends=2, health_changed_ms=2000, replication_lag_s=2.0),
        NodeStateRow("a3", 1, "A", rtt_ms={"B": 22.0}, health_changed_ms=0),
        NodeStateRow("b1", 1, "B", rtt_ms={"A": 21.0}, healthy_backends=5, total_backends=5,
                     health_changed_ms=10),
    ]


def test_matrix_is_the_median_over_a_regions_nodes() -> None:
    m = latency_matrix(rows())
    assert m == {"A": {"A": 2.0, "B": 22.0, "C": 150.0}, "B": {"A": 21.0}}
    lm = LatencyMatrix.from_rows(rows())
    assert lm.get("A", "B") == 22.0 and lm.get("B", "C") is None
    assert lm.regions() == ["A", "B", "C"]


def test_region_health_takes_the_freshest_report() -> None:
    h = region_health(rows(), regions=["A", "B", "C"])
    assert not h["A"].healthy and h["A"].healthy_backends == 0 and h["A"].updated_at == 2.0
    assert h["A"].alive_nodes == 3
    assert h["B"].healthy and h["B"].healthy_backends == 5
    assert not h["C"].healthy and h["C"].alive_nodes == 0


def test_replication_lag_is_the_worst_report() -> None:
    assert replication_lag(rows()) == {"A": 2.0}
