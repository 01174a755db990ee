"""Region choice: latency (local bias, spill), geo, weighted, failover,
jurisdiction, remote health, saturation, retries with exclude, explain."""
import random
from collections import Counter

from balance_world import MakeWorld

from proxy.balance import Cluster, Selector, explain, on_done, on_start
from proxy.balance.config import RegionPolicy

MATRIX = {"eu-west-1": {"eu-west-2": 12.0, "us-east-1": 75.0, "eu-central-1": 25.0}}
THREE = {"eu-west-1": 2, "eu-west-2": 2, "us-east-1": 2}


def feed(cluster: Cluster, region: str, latency_ms: float, now: float) -> None:
    for b in cluster.pools["api"][region].backends:
        on_start(b)
        on_done(b, latency_ms / 1000.0, "ok", now)


def region(sel: Selector, plan: object, now: float, **kw: object) -> str | None:
    args = {"allowed": None, "client_key": None, "client_latlon": None, "exclude": None}
    args.update(kw)
    return sel.pick(plan, args["allowed"], args["client_key"], args["client_latlon"],  # type: ignore
                    args["exclude"], now).region


def down(cluster: Cluster, region_name: str, now: float) -> None:
    for b in cluster.pools["api"][region_name].backends:
        cluster.set_active_health("api", b.id, False, now)


def test_latency_prefers_local_then_spills_when_local_is_down(world: MakeWorld) -> None:
    sel, cluster, _ = world(THREE, matrix=MATRIX)
    plan = sel.plan("api", RegionPolicy())
    assert region(sel, plan, 0.0) == "eu-west-1"
    down(cluster, "eu-west-1", 0.1)
    assert region(sel, plan, 0.1) == "eu-west-2"         # next by latency, at once
    down(cluster, "eu-west-2", 0.2)
    assert region(sel, plan, 0.2) == "us-east-1"
    cluster.set_active_health("api", cluster.pools["api"]["eu-west-1"].backends[0].id,
                              True, 0.3)
    assert region(sel, plan, 0.3) == "eu-west-1"         # back home


def test_local_bias_holds_until_local_is_degraded(world: MakeWorld) -> None:
    sel, cluster, _ = world(THREE, matrix=MATRIX)
    plan = sel.plan("api", RegionPolicy(local_bias_ms=20))
    feed(cluster, "eu-west-2", 12 + 5, 0.0)               # London: 12 ms away + 5 ms service
    feed(cluster, "eu-west-1", 25, 0.0)                   # local 25 ms: worse, but within bias
    assert region(sel, plan, 1.0) == "eu-west-1"
    feed(cluster, "eu-west-1", 45, 1.0)                   # local 45 ms: 45 - 20 > 17
    assert region(sel, plan, 2.0) == "eu-west-2"
    assert plan.scores["eu-west-2"] == 17.0 and plan.scores["eu-west-1"] == 45.0


def test_panic_mode_counts_as_degraded(world: MakeWorld) -> None:
    sel, cluster, _ = world({"eu-west-1": 4, "eu-west-2": 2}, matrix=MATRIX)
    plan = sel.plan("api", RegionPolicy(local_bias_ms=20))
    feed(cluster, "eu-west-2", 17, 0.0)
    feed(cluster, "eu-west-1", 25, 0.0)
    assert region(sel, plan, 1.0) == "eu-west-1"
    for b in cluster.pools["api"]["eu-west-1"].backends[:3]:
        cluster.set_active_health("api", b.id, False, 1.0)   # 1 of 4 healthy: panic
    assert cluster.pools["api"]["eu-west-1"].panic
    assert region(sel, plan, 1.0) == "eu-west-2"


def test_saturated_region_spills_to_the_next(world: MakeWorld) -> None:
    sel, cluster, _ = world(THREE, matrix=MATRIX)
    plan = sel.plan("api", RegionPolicy(max_inflight_per_backend=2))
    local = cluster.pools["api"]["eu-west-1"]
    for _ in range(3):
        on_start(sel.pick(plan, None, None, None, None, 0.0).backend)  # type: ignore[arg-type]
    assert local.in_flight == 3
    assert region(sel, plan, 0.0) == "eu-west-1"
    on_start(local.backends[0])                           # 4 = 2 backends x 2
    assert region(sel, plan, 0.0) == "eu-west-2"
    for r in ("eu-west-2", "us-east-1"):
        for _ in range(4):
            on_start(cluster.pools["api"][r].backends[0])
    d = sel.pick(plan, None, None, None, None, 0.0)       # all full: best one anyway
    assert d.region == "eu-west-1" and d.saturated_spill
    assert "spill=saturated" in explain(d)


def test_jurisdiction_is_a_hard_limit(world: MakeWorld) -> None:
    sel, cluster, _ = world(THREE, matrix=MATRIX)
    plan = sel.plan("api")
    us = frozenset({"us-east-1", "us-west-2"})
    assert region(sel, plan, 0.0, allowed=us) == "us-east-1"
    down(cluster, "us-east-1", 0.0)
    d = sel.pick(plan, us, None, None, None, 0.0, jurisdiction="US-ONLY")
    assert d.backend is None and d.region is None
    assert d.reason == "no healthy region within jurisdiction US-ONLY"
    d = sel.pick(plan, frozenset({"eu-central-1"}), None, None, None, 0.0, "GDPR")
    assert d.reason == "no healthy region within jurisdiction GDPR"
    assert "reason=no healthy region within jurisdiction GDPR" in explain(d)


def test_remote_health_and_matrix_updates_apply_at_once(world: MakeWorld) -> None:
    sel, cluster, view = world(THREE, matrix=MATRIX)
    plan = sel.plan("api")
    down(cluster, "eu-west-1", 0.0)
    assert region(sel, plan, 0.0) == "eu-west-2"
    view.update_remote_health({"eu-west-2": False})          # gossip: London is out
    assert region(sel, plan, 0.0) == "us-east-1"
    assert not sel.region_health("eu-west-2")
    view.update_remote_health({"eu-west-2": True})
    view.update_matrix({"eu-west-1": {"eu-west-2": 90.0}})   # measured: London got far
    assert region(sel, plan, 0.0) == "us-east-1"
    view.update_remote_health({"us-east-1": False}, pool="other")  # another pool's news
    assert region(sel, plan, 0.0) == "us-east-1"
    assert sel.region_health("us-east-1", "api") and not sel.region_health("eu-west-1")


def test_geo_picks_the_nearest_healthy_region(world: MakeWorld) -> None:
    regions = {"eu-west-1": 1, "eu-west-2": 1, "eu-central-1": 1, "us-east-1": 1,
               "ap-northeast-1": 1}
    sel, cluster, _ = world(regions, matrix=MATRIX)
    plan = sel.plan("api", RegionPolicy(policy="geo"))
    paris, tokyo, nyc = (48.85, 2.35), (35.0, 135.7), (40.71, -74.0)
    assert region(sel, plan, 0.0, client_latlon=paris) == "eu-west-2"
    assert region(sel, plan, 0.0, client_latlon=tokyo) == "ap-northeast-1"
    assert region(sel, plan, 0.0, client_latlon=nyc) == "us-east-1"
    assert region(sel, plan, 0.0) == "eu-west-1"              # no location: latency
    down(cluster, "eu-west-2", 0.0)
    assert region(sel, plan, 0.0, client_latlon=paris) == "eu-central-1"  # 479 km < 780
    d = sel.pick(plan, None, None, paris, None, 0.0)
    assert "eu-central-1:" in explain(d) and "eu-west-2:down" in explain(d)


def test_weighted_regions(world: MakeWorld) -> None:
    random.seed(11)
    sel, cluster, _ = world({"eu-west-1": 2, "eu-central-1": 2, "us-east-1": 2})
    plan = sel.plan("api", RegionPolicy(policy="weighted",
                                        weights={"eu-west-1": 3, "eu-central-1": 1}))
    n = Counter(region(sel, plan, 0.0) for _ in range(4000))
    assert set(n) == {"eu-west-1", "eu-central-1"}
    assert 0.72 < n["eu-west-1"] / 4000 < 0.78
    only = frozenset({"eu-central-1", "us-east-1"})
    assert {region(sel, plan, 0.0, allowed=only) for _ in range(50)} == {"eu-central-1"}
    down(cluster, "eu-west-1", 0.0)
    assert {region(sel, plan, 0.0) for _ in range(50)} == {"eu-central-1"}


def test_failover_order(world: MakeWorld) -> None:
    sel, cluster, _ = world({"eu-west-1": 2, "eu-central-1": 2, "us-east-1": 2})
    plan = sel.plan("api", RegionPolicy(policy="failover",
                                        order=["eu-central-1", "us-east-1"]))
    assert region(sel, plan, 0.0) == "eu-central-1"
    down(cluster, "eu-central-1", 0.0)
    assert region(sel, plan, 0.0) == "us-east-1"
    down(cluster, "us-east-1", 0.0)
    d = sel.pick(plan, None, None, None, None, 0.0)
    assert d.backend is None and d.reason == "no healthy region"


def test_retry_excludes_tried_backends_then_regions(world: MakeWorld) -> None:
    sel, cluster, _ = world(THREE, matrix=MATRIX)
    plan = sel.plan("api")
    first = sel.pick(plan, None, None, None, None, 0.0).backend
    assert first is not None
    tried = {first.id}
    second = sel.pick(plan, None, None, None, tried, 0.0).backend
    assert second is not None and second.region == "eu-west-1" and second is not first
    tried.add(second.id)
    third = sel.pick(plan, None, None, None, tried, 0.0)
    assert third.region == "eu-west-2"
    everything = {b.id for b in cluster.backends()}
    d = sel.pick(plan, None, None, None, everything, 0.0)
    assert d.backend is None and d.reason == "no untried healthy backend left"


def test_explain_is_compact_and_safe(world: MakeWorld) -> None:
    sel, cluster, _ = world(THREE, matrix=MATRIX)
    plan = sel.plan("api")
    down(cluster, "us-east-1", 0.0)
    d = sel.pick(plan, frozenset({"eu-west-1", "us-east-1"}), None, None, None, 0.0)
    text = explain(d)
    assert text.startswith("policy=latency; region=eu-west-1; backend=10.0.0.")
    assert "algo=p2c_ewma" in text
    assert "scores=eu-west-1:0.0,eu-west-2:denied,us-east-1:down" in text
    bad = sel.pick(plan, frozenset(), None, None, None, 0.0, jurisdiction="x\r\nSet-Cookie: a")
    assert "\r" not in explain(bad) and "\n" not in explain(bad)


def test_reported_service_time_ranks_unobserved_regions(world: MakeWorld) -> None:
    sel, cluster, view = world({"eu-west-1": 1, "eu-west-2": 1, "eu-central-1": 1},
                               matrix=MATRIX)
    plan = sel.plan("api")
    down(cluster, "eu-west-1", 0.0)
    assert region(sel, plan, 0.0) == "eu-west-2"          # 12 ms vs 25 ms away
    view.update_service_times({"eu-west-2": 30.0})         # London reports it is busy
    assert region(sel, plan, 0.0) == "eu-central-1"        # 42 > 25
    feed(cluster, "eu-west-2", 12 + 3, 0.0)                # our own samples win: 15 ms
    assert region(sel, plan, 1.0) == "eu-west-2"


def test_service_report_for_gossip(world: MakeWorld) -> None:
    sel, cluster, _ = world(THREE, matrix=MATRIX)
    assert sel.service_report() == {}                      # no samples yet
    feed(cluster, "eu-west-1", 8.0, 0.0)
    assert sel.service_report() == {"api": 8.0}
