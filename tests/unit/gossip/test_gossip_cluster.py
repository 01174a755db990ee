"""13 regions x 2 nodes on the in-memory network and fake clock (200 ms probes
and gossip): the issue's acceptance numbers, in simulated time."""

from __future__ import annotations

import pytest

from proxy.gossip.messages import MemberState
from proxy.gossip.simcluster import REGIONS_13, SimCluster, load_region_coordinates, region_one_way_s


def formed(seed: int = 1, loss: float = 0.0) -> SimCluster:
    c = SimCluster(REGIONS_13, 26, seed=seed, loss=loss)
    c.start()
    assert c.run_until(c.fully_joined, 30) is not None
    c.run(6.0)  # every node has probed every other once: matrix rows are full
    return c


@pytest.mark.parametrize("seed", [1, 2])
def test_state_change_reaches_every_node_within_3s(seed: int) -> None:
    c = formed(seed)
    origin = c.nodes["ap-southeast-2-1"]
    origin.set_local_health(0, 3)

    def everyone_knows() -> bool:
        return all(not n.region_health()["ap-southeast-2"].healthy for n in c.live())

    # the region's other node never reported: the freshest report is the failure
    took = c.run_until(everyone_knows, 3.0, check_every=0.01)
    assert took is not None and took <= 3.0


@pytest.mark.parametrize("seed", [1, 2])
def test_killed_node_is_dead_in_every_view_within_6s(seed: int) -> None:
    c = formed(seed)
    c.kill("eu-central-1-0")
    took = c.run_until(lambda: c.all_see("eu-central-1-0", MemberState.DEAD), 6.0)
    assert took is not None and took <= 6.0
    assert all(n.membership.num_live() == 25 for n in c.live())


def test_no_false_death_in_60s_at_5_percent_loss() -> None:
    c = formed(seed=3)
    c.net.loss = 0.05
    deaths = 0
    for _ in range(120):
        c.run(0.5)
        deaths += sum(1 for n in c.live() for m in n.membership.members.values() if m.state == MemberState.DEAD)
    assert deaths == 0
    assert c.net.packets_dropped > 1000  # the loss was real
    assert sum(n.membership.stats["declared_dead"] for n in c.live()) == 0


def test_views_agree_after_a_partition_heals() -> None:
    c = formed(seed=4)
    americas = [c.addr[n] for n in c.nodes if n.startswith(("us-", "ca-", "sa-"))]
    rest = [c.addr[n] for n in c.nodes if c.addr[n] not in americas]
    c.net.partition([americas, rest])
    c.run(15.0)
    sample = c.nodes["us-east-1-0"]
    assert sum(1 for m in sample.membership.members.values() if m.state == MemberState.DEAD) == len(rest)
    c.nodes["eu-west-1-0"].set_local_health(1, 2)  # news on one side only
    c.net.heal()

    def agree() -> bool:
        views = c.views()
        first = next(iter(views.values()))
        if any(v != first for v in views.values()) or any(s != "ALIVE" for s, _ in first.values()):
            return False
        return all(n.region_health()["eu-west-1"].healthy_backends == 1 for n in c.live())

    assert c.run_until(agree, 30.0, check_every=0.2) is not None
    matrices = [n.latency_matrix() for n in c.live()]
    assert all(set(m) == set(REGIONS_13) for m in matrices)


def test_restarted_node_rejoins_and_its_new_state_wins() -> None:
    c = formed(seed=5)
    c.nodes["sa-east-1-0"].set_local_health(5, 5)
    c.run(2.0)
    c.kill("sa-east-1-0")
    assert c.run_until(lambda: c.all_see("sa-east-1-0", MemberState.DEAD), 10.0) is not None
    node = c.restart("sa-east-1-0")
    node.set_local_health(1, 5)
    assert c.run_until(lambda: c.all_see("sa-east-1-0", MemberState.ALIVE), 10.0) is not None
    assert node.membership.local.incarnation > 0  # it refuted its own death
    c.run(2.0)
    assert all(n.state.rows["sa-east-1-0"].healthy_backends == 1 for n in c.live())


def test_graceful_leave_is_seen_as_left() -> None:
    c = formed(seed=6)
    c.nodes["me-south-1-1"].leave()
    assert c.run_until(lambda: c.all_see("me-south-1-1", MemberState.LEFT), 3.0) is not None


def test_every_node_reports_the_latency_matrix_of_the_network() -> None:
    c = formed(seed=7)
    one_way = region_one_way_s(load_region_coordinates())
    for n in c.live():
        matrix = n.latency_matrix()
        for src in REGIONS_13:
            for dst in REGIONS_13:
                if src == dst:
                    continue
                expected = 2 * one_way(src, dst) * 1000
                # 5 % jitter on each one-way trip (2.5 % on average)
                assert matrix[src][dst] == pytest.approx(expected, rel=0.06), (n.name, src, dst)
