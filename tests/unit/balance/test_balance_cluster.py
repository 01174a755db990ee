"""Reload carry-over, DNS expansion, active-health plumbing."""
from balance_world import MakeWorld, pool_config

from proxy.balance import Cluster, on_done, on_start


def test_reload_keeps_state_of_backends_that_remain(world: MakeWorld) -> None:
    sel, cluster, _ = world({"eu-west-1": ["10.0.0.1:80", "10.0.0.2:80"]})
    plan = sel.plan("api")                                 # compiled before the reload
    rp = cluster.pools["api"]["eu-west-1"]
    kept, dropped = rp.backends
    on_start(kept)
    on_done(kept, 0.120, "ok", 1.0)
    on_start(kept)                                         # one still in flight
    cluster.set_active_health("api", kept.id, False, 1.0)
    cluster.set_active_health("api", kept.id, True, 2.0)
    cluster.apply({"api": pool_config({"eu-west-1": [
        {"address": "10.0.0.1:80", "weight": 5}, "10.0.0.3:80"]})}, 3.0)
    assert cluster.pools["api"]["eu-west-1"] is rp         # same object, reconfigured
    same = cluster.backend("api", "eu-west-1/10.0.0.1:80")
    assert same is kept and same.ewma_ms == 120.0 and same.in_flight == 1
    assert same.weight == 5 and same.slow_until == 32.0    # slow start carried over
    assert cluster.backend("api", dropped.id) is None
    new = cluster.backend("api", "eu-west-1/10.0.0.3:80")
    assert new is not None and new.slow_until == 33.0      # new member starts slowly
    d = sel.pick(plan, None, None, None, None, 3.0)
    assert d.backend in (kept, new)
    on_done(kept, 0.01, "ok", 3.0)                         # the in-flight one finishes
    assert kept.in_flight == 0


def test_removed_pool_and_region() -> None:
    cluster = Cluster()
    cluster.apply({"a": pool_config({"eu-west-1": 1, "us-east-1": 1}),
                   "b": pool_config({"eu-west-1": 1})}, 0.0)
    gen = cluster.gen
    cluster.apply({"a": pool_config({"eu-west-1": 1})}, 1.0)
    assert set(cluster.pools) == {"a"} and set(cluster.pools["a"]) == {"eu-west-1"}
    assert cluster.gen > gen
    assert [b.id for b in cluster.backends()] == ["eu-west-1/10.0.0.0:80"]


def test_dns_names_expand_per_address_and_keep_state() -> None:
    cluster = Cluster()
    cfg = pool_config({"eu-west-1": [{"address": "api.internal:8080", "weight": 2},
                                     "10.9.9.9:8080"]})
    cluster.apply({"api": cfg}, 0.0)
    rp = cluster.pools["api"]["eu-west-1"]
    assert cluster.dns_names() == {"api.internal"}
    assert [b.address for b in rp.backends] == ["10.9.9.9:8080"]   # name not resolved yet
    cluster.update_dns("api.internal", ["10.1.0.1", "10.1.0.2"], 1.0)
    assert sorted(b.address for b in rp.backends) == ["10.1.0.1:8080", "10.1.0.2:8080",
                                                       "10.9.9.9:8080"]
    b1 = cluster.backend("api", "eu-west-1/10.1.0.1:8080")
    assert b1 is not None and b1.weight == 2 and b1.origin == "api.internal"
    on_start(b1)
    on_done(b1, 0.05, "ok", 2.0)
    cluster.update_dns("API.internal.", ["10.1.0.1", "10.1.0.3"], 3.0)
    assert cluster.backend("api", "eu-west-1/10.1.0.1:8080") is b1 and b1.ewma_ms == 50.0
    assert cluster.backend("api", "eu-west-1/10.1.0.2:8080") is None
    assert cluster.backend("api", "eu-west-1/10.1.0.3:8080") is not None
    targets = cluster.health_targets()
    assert targets == {}                                    # tests' pools have no checks


def test_health_targets_and_reports() -> None:
    cluster = Cluster()
    cfg = pool_config({"eu-west-1": ["api.internal:8080"], "us-east-1": 1},
                      health_check={"path": "/ready", "interval_s": 2})
    cluster.apply({"api": cfg}, 0.0)
    cluster.update_dns("api.internal", ["10.1.0.1"], 0.0)
    targets = cluster.health_targets(regions={"eu-west-1"})
    (key, (host, port, host_header, hc)), = targets.items()
    assert key == ("api", "eu-west-1/10.1.0.1:8080")
    assert (host, port, host_header, hc.path) == ("10.1.0.1", 8080, "api.internal", "/ready")
    assert cluster.health_report("eu-west-1") == {"api": True}
    assert cluster.set_active_health("api", key[1], False, 1.0)
    assert cluster.health_report("eu-west-1") == {"api": False}
    assert not cluster.set_active_health("api", "eu-west-1/10.7.7.7:80", False, 1.0)


def test_listeners_hear_pool_changes() -> None:
    cluster = Cluster()
    cluster.apply({"api": pool_config({"eu-west-1": 2})}, 0.0)
    heard = []
    cluster.listeners.append(lambda rp: heard.append((rp.region, rp.healthy_count)))
    cluster.set_active_health("api", "eu-west-1/10.0.0.0:80", False, 1.0)
    assert heard == [("eu-west-1", 1)]
