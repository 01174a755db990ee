"""Rise/fall, passive outlier ejection, backoff, caps, panic mode."""
import pytest
from balance_world import MakeWorld

from proxy.balance import BackendState, OutlierConfig, OutlierDetector, RiseFall, on_done, on_start


def test_rise_fall_hysteresis() -> None:
    rf = RiseFall(rise=2, fall=3)
    assert [rf.record(False), rf.record(False)] == [None, None]
    assert rf.record(True) is None and rf.healthy         # a good check resets the count
    assert [rf.record(False) for _ in range(3)] == [None, None, False]
    assert rf.record(False) is None                       # already down: no new event
    assert [rf.record(True), rf.record(True)] == [None, True]


def fail(b: BackendState, outcome: str, now: float, times: int = 1) -> None:
    for _ in range(times):
        on_start(b)
        on_done(b, 0.01, outcome, now)


def test_consecutive_5xx_eject_and_success_resets(world: MakeWorld) -> None:
    _, cluster, _ = world({"eu-west-1": 4})
    rp = cluster.pools["api"]["eu-west-1"]
    b = rp.backends[0]
    fail(b, "5xx", 1.0, 4)
    fail(b, "ok", 1.0)
    fail(b, "5xx", 1.0, 4)
    assert b.up and b in rp.view                          # never 5 in a row
    fail(b, "5xx", 1.0)
    assert not b.up and b not in rp.view
    assert b.ejected_until == 6.0                         # base_ejection_s = 5


def test_connect_failures_eject_sooner(world: MakeWorld) -> None:
    _, cluster, _ = world({"eu-west-1": 4})
    b = cluster.pools["api"]["eu-west-1"].backends[1]
    fail(b, "connect_error", 1.0, 2)
    fail(b, "timeout", 1.0)
    assert not b.up


def test_backoff_grows_and_is_capped() -> None:
    det = OutlierDetector(OutlierConfig(base_ejection_s=5, max_ejection_s=12))
    b = BackendState("p", "r", "10.0.0.1", 80)
    others = [BackendState("p", "r", f"10.0.0.{i}", 80) for i in range(2, 5)]
    now, lengths = 0.0, []
    for _ in range(4):
        assert det.try_eject(b, [b, *others], now)
        lengths.append(b.ejected_until - now)
        now = b.ejected_until
        assert det.release_due(b, now)
        now += 1.0                                        # misbehaves again soon
    assert lengths == [5.0, 10.0, 12.0, 12.0]
    # Well-behaved for longer than max_ejection_s: back to the base backoff.
    now += 13.0
    det.try_eject(b, [b, *others], now)
    assert b.ejected_until - now == 5.0


def test_max_ejection_percent_caps_a_pool() -> None:
    det = OutlierDetector(OutlierConfig(max_ejection_percent=50))
    bs = [BackendState("p", "r", f"10.0.0.{i}", 80) for i in range(5)]
    results = [det.try_eject(b, bs, 0.0) for b in bs]
    assert results == [True, True, False, False, False]   # floor(5 * 50%) = 2
    single = [BackendState("p", "r", "10.0.1.1", 80)]
    assert det.try_eject(single[0], single, 0.0)          # at least one: a lone backend
    # can be ejected, its region goes down and traffic fails over elsewhere
    assert OutlierDetector(OutlierConfig(max_ejection_percent=0)).max_ejected(10) == 0


def test_ejection_ends_lazily_on_pick_with_slow_start(world: MakeWorld) -> None:
    sel, cluster, _ = world({"eu-west-1": 2})
    rp = cluster.pools["api"]["eu-west-1"]
    plan = sel.plan("api")
    b = rp.backends[0]
    fail(b, "connect_error", 10.0, 3)
    assert not b.up and cluster.next_event == 15.0
    for _ in range(20):
        assert sel.pick(plan, None, None, None, None, 14.9).backend is not b
    sel.pick(plan, None, None, None, None, 15.0)          # the pick releases it
    assert b.up and b in rp.view
    assert b.slow_until == 15.0 + 30.0                    # and it starts slowly


def test_panic_spreads_over_all_when_too_few_healthy(world: MakeWorld) -> None:
    _, cluster, _ = world({"eu-west-1": 10})
    rp = cluster.pools["api"]["eu-west-1"]
    for b in rp.backends[:5]:
        cluster.set_active_health("api", b.id, False, 1.0)
    assert not rp.panic and len(rp.view) == 5             # 50% healthy: not below 50%
    cluster.set_active_health("api", rp.backends[5].id, False, 1.0)
    assert rp.panic and len(rp.view) == 10                # 40%: use everyone
    assert rp.available
    for b in rp.backends[6:]:
        cluster.set_active_health("api", b.id, False, 1.0)
    assert not rp.available and rp.view == []             # none: the region is down


def test_unknown_outcome_rejected() -> None:
    det = OutlierDetector(OutlierConfig())
    with pytest.raises(ValueError):
        det.record(BackendState("p", "r", "10.0.0.1", 80), "4xx")
