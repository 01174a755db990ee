"""Round robin, least in-flight, weighted, consistent hashing, exclusions."""
import random
from collections import Counter
from typing import Any

import pytest
from balance_world import MakeWorld, pool_config

from proxy.balance import BackendState, Cluster, RegionPool
from proxy.balance.hashing import maglev_table, rendezvous_pick

KEYS = [f"client-{i}".encode() for i in range(20000)]


def region_pool(world: MakeWorld, n: int = 4, **kw: Any) -> tuple[RegionPool, Cluster]:
    _, cluster, _ = world({"eu-west-1": n}, **kw)
    return cluster.pools["api"]["eu-west-1"], cluster


def test_round_robin_cycles_and_skips_excluded(world: MakeWorld) -> None:
    rp, _ = region_pool(world, 3, balance={"algorithm": "round_robin"})
    ids = [rp.choose(0.0, None, None).id for _ in range(6)]   # type: ignore[union-attr]
    assert Counter(ids) == {b.id: 2 for b in rp.backends}
    assert ids[:3] == ids[3:]
    skip = rp.backends[0].id
    assert all(rp.choose(0.0, None, {skip}).id != skip for _ in range(6))  # type: ignore[union-attr]


def test_least_inflight_prefers_idle_and_spreads_ties(world: MakeWorld) -> None:
    rp, _ = region_pool(world, 3, balance={"algorithm": "least_inflight"})
    a, b, c = rp.backends
    a.in_flight, b.in_flight, c.in_flight = 5, 0, 3
    assert rp.choose(0.0, None, None) is b
    b.in_flight = 5
    assert rp.choose(0.0, None, None) is c
    for x in rp.backends:
        x.in_flight = 0
    assert len({rp.choose(0.0, None, None).id for _ in range(3)}) == 3  # type: ignore[union-attr]


def test_weighted_follows_weights(world: MakeWorld) -> None:
    random.seed(3)
    _, cluster, _ = world({"eu-west-1": [{"address": "10.0.0.1:80", "weight": 1},
                                         {"address": "10.0.0.2:80", "weight": 3}]},
                          balance={"algorithm": "weighted"})
    rp = cluster.pools["api"]["eu-west-1"]
    n = Counter(rp.choose(0.0, None, None).address for _ in range(8000))  # type: ignore[union-attr]
    assert n["10.0.0.2:80"] / 8000 == pytest.approx(0.75, abs=0.03)


@pytest.mark.parametrize("algo", ["p2c_ewma", "round_robin", "least_inflight", "weighted"])
def test_exclude_is_honoured_by_every_algorithm(world: MakeWorld, algo: str) -> None:
    rp, _ = region_pool(world, 3, balance={"algorithm": algo})
    ids = [b.id for b in rp.backends]
    for _ in range(50):
        got = rp.choose(1.0, None, set(ids[:2]))
        assert got is not None and got.id == ids[2]
    assert rp.choose(1.0, None, set(ids)) is None


def owners(rp: RegionPool, keys: list[bytes] = KEYS) -> list[str]:
    out = []
    for k in keys:
        b = rp.choose(0.0, k, None)
        assert b is not None
        out.append(b.id)
    return out


@pytest.mark.parametrize("method,limit", [("maglev", 1.35), ("rendezvous", 1.06)])
def test_hash_moves_about_one_nth_when_a_backend_leaves(world: MakeWorld, method: str,
                                                        limit: float) -> None:
    n = 10
    bal = {"algorithm": "hash", "hash_method": method, "affinity": {"client_ip": True}}
    rp, cluster = region_pool(world, n, balance=bal)
    before = owners(rp)
    counts = Counter(before)
    assert max(counts.values()) / len(KEYS) < 1.2 / n      # balanced to begin with
    gone = rp.backends[4].id
    # The backend leaves the config (reload): the table is rebuilt without it.
    specs = [f"10.0.0.{j}:80" for j in range(n) if j != 4]
    cluster.apply({"api": pool_config({"eu-west-1": specs}, balance=bal)}, 1.0)
    after = owners(rp)
    moved = sum(1 for x, y in zip(before, after) if x != y)
    assert moved / len(KEYS) <= limit / n, moved / len(KEYS)
    # Every key of the departed backend moved; nothing moves onto it.
    assert all(y != gone for y in after)
    assert moved >= counts[gone]


@pytest.mark.parametrize("method", ["maglev", "rendezvous"])
def test_hash_ejection_moves_only_the_ejected_keys_and_they_come_back(
        world: MakeWorld, method: str) -> None:
    bal = {"algorithm": "hash", "hash_method": method, "affinity": {"header": "x-user"}}
    rp, cluster = region_pool(world, 5, balance=bal)
    before = owners(rp)
    victim = rp.backends[1]
    cluster.set_active_health("api", victim.id, False, 1.0)
    during = owners(rp)
    changed = [(x, y) for x, y in zip(before, during) if x != y]
    assert changed and all(x == victim.id for x, _ in changed)
    assert victim.id not in during
    cluster.set_active_health("api", victim.id, True, 2.0)
    assert owners(rp) == before


def test_hash_without_key_falls_back_to_p2c(world: MakeWorld) -> None:
    rp, _ = region_pool(world, 3, balance={"algorithm": "hash",
                                           "affinity": {"cookie": "sid"}})
    assert rp.choose(0.0, None, None) in rp.backends


def test_hash_exclude_gives_a_stable_second_choice(world: MakeWorld) -> None:
    rp, _ = region_pool(world, 4, balance={"algorithm": "hash",
                                           "affinity": {"client_ip": True}})
    first = rp.choose(0.0, b"k", None)
    assert first is not None
    second = rp.choose(0.0, b"k", {first.id})
    assert second is not None and second is not first
    assert rp.choose(0.0, b"k", {first.id}) is second


def test_maglev_weights_shape_the_table() -> None:
    a = BackendState("p", "r", "10.0.0.1", 80, weight=1)
    b = BackendState("p", "r", "10.0.0.2", 80, weight=3)
    share = Counter(x.id for x in maglev_table([a, b]))
    assert share[b.id] / sum(share.values()) == pytest.approx(0.75, abs=0.01)


def test_slow_start_limits_a_returning_backend(world: MakeWorld) -> None:
    random.seed(5)
    rp, cluster = region_pool(world, 2, balance={"algorithm": "round_robin"},
                              slow_start={"duration_s": 30, "min_weight_percent": 10})
    back = rp.backends[0]
    cluster.set_active_health("api", back.id, False, 0.0)
    cluster.set_active_health("api", back.id, True, 100.0)     # returns at t=100
    assert back.slow_until == 130.0

    def share(now: float) -> float:
        picks = [rp.choose(now, None, None) for _ in range(4000)]
        return sum(1 for p in picks if p is back) / 4000

    assert share(100.0) < 0.12          # 10% of its turns: ~9% of picks
    assert 0.25 < share(115.0) < 0.40   # half its turns: ~1/3 of picks
    assert share(131.0) == 0.5          # ramp over: plain round robin


def test_rendezvous_weights_and_fast_path_agree(world: MakeWorld) -> None:
    bal = {"algorithm": "hash", "hash_method": "rendezvous", "affinity": {"client_ip": True}}
    _, cluster, _ = world({"eu-west-1": [{"address": "10.0.0.1:80", "weight": 1},
                                         {"address": "10.0.0.2:80", "weight": 3}]},
                          balance=bal)
    rp = cluster.pools["api"]["eu-west-1"]
    share = Counter(owners(rp, KEYS[:8000]))
    assert share["eu-west-1/10.0.0.2:80"] / 8000 == pytest.approx(0.75, abs=0.02)
    # The equal-weight fast path picks what the general formula picks.
    rp2, _ = region_pool(world, 6, balance=bal)
    slow = [rendezvous_pick(rp2.backends, k, lambda b: True) for k in KEYS[:2000]]
    assert [rp2.choose(0.0, k, None) for k in KEYS[:2000]] == slow
