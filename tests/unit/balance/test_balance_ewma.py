"""Peak-EWMA and power of two choices, with a fake clock."""
import heapq
import math
import random

import pytest
from balance_world import MakeWorld

from proxy.balance import BackendState, on_done, on_start


def test_peak_sample_replaces_at_once() -> None:
    b = BackendState("p", "r", "10.0.0.1", 80, initial_latency_ms=30.0)
    b.observe(5.0, 1.0, 10.0)
    assert b.ewma_ms == 5.0                       # first sample replaces the default
    b.observe(200.0, 1.1, 10.0)
    assert b.ewma_ms == 200.0                     # peak: no smoothing upward


def test_lower_samples_blend_by_elapsed_time() -> None:
    b = BackendState("p", "r", "10.0.0.1", 80)
    b.observe(200.0, 0.0, 10.0)
    b.observe(0.0, 10.0, 10.0)                    # one tau later: weight e^-1 on the old
    assert b.ewma_ms == pytest.approx(200.0 * math.exp(-1.0))
    b.observe(0.0, 10.0, 10.0)                    # same instant: no decay at all
    assert b.ewma_ms == pytest.approx(200.0 * math.exp(-1.0))


def test_cost_decays_on_read_and_counts_in_flight() -> None:
    b = BackendState("p", "r", "10.0.0.1", 80)
    b.observe(100.0, 0.0, 10.0)
    assert b.cost_ms(0.0, 10.0) == 100.0
    assert b.cost_ms(10.0, 10.0) == pytest.approx(100.0 / math.e)   # idle: probed again
    b.in_flight = 3
    assert b.cost_ms(0.0, 10.0) == 400.0


def test_slow_start_factor_ramps() -> None:
    b = BackendState("p", "r", "10.0.0.1", 80)
    b.slow_start_at, b.slow_until = 100.0, 130.0
    assert b.slow_factor(100.0, 30.0, 0.1, 1.0) == 0.1
    assert b.slow_factor(115.0, 30.0, 0.1, 1.0) == pytest.approx(0.5)
    assert b.slow_factor(115.0, 30.0, 0.1, 2.0) == pytest.approx(0.5 ** 0.5)
    assert b.slow_factor(130.0, 30.0, 0.1, 1.0) == 1.0


def simulate(world: MakeWorld, slow_id_index: int, slow_at: float, until: float,
             gap_s: float = 0.002) -> tuple[list[tuple[float, str]], str]:
    """Open-loop traffic: a request every gap_s, each completing after its
    backend's latency (5 ms; 200 ms for one backend from slow_at on)."""
    random.seed(7)
    sel, cluster, _ = world({"eu-west-1": 4})
    plan = sel.plan("api")
    slow_id = cluster.pools["api"]["eu-west-1"].backends[slow_id_index].id
    pending: list[tuple[float, int, BackendState, float]] = []
    sent: list[tuple[float, str]] = []
    now, seq = 0.0, 0
    while now < until:
        while pending and pending[0][0] <= now:
            t_end, _, b, lat = heapq.heappop(pending)
            on_done(b, lat, "ok", t_end)
        d = sel.pick(plan, None, None, None, None, now)
        b = d.backend
        assert b is not None
        on_start(b)
        lat = 0.2 if (b.id == slow_id and now >= slow_at) else 0.005
        seq += 1
        heapq.heappush(pending, (now + lat, seq, b, lat))
        sent.append((now, b.id))
        now += gap_s
    return sent, slow_id


def test_p2c_shifts_load_away_from_a_backend_that_slows(world: MakeWorld) -> None:
    sent, slow = simulate(world, 2, slow_at=1.0, until=3.0)

    def share(t0: float, t1: float) -> tuple[int, int]:
        ids = [bid for t, bid in sent if t0 <= t < t1]
        return sum(1 for i in ids if i == slow), len(ids)

    before, n_before = share(0.5, 1.0)
    assert 0.15 < before / n_before < 0.35        # a fair quarter while fast
    # Before its first slow answer comes back (200 ms = 100 requests), the
    # growing in-flight count already steers away: a quarter would be 25.
    during, _ = share(1.0, 1.2)
    assert during <= 8
    # Once a 200 ms sample is in, the peak EWMA makes it lose every duel.
    after, n_after = share(1.21, 3.0)
    assert after <= 2, (after, n_after)


def test_p2c_without_ewma_would_not_shift(world: MakeWorld) -> None:
    """Control: the same traffic with the backend never slowing keeps a
    quarter, so the previous test measures the EWMA, not the harness."""
    sent, slow = simulate(world, 2, slow_at=math.inf, until=2.0)
    ids = [bid for t, bid in sent if t >= 1.21]
    assert 0.15 < ids.count(slow) / len(ids) < 0.35


def test_connect_failure_counts_as_penalty_latency(world: MakeWorld) -> None:
    sel, cluster, _ = world({"eu-west-1": 2})
    b = cluster.pools["api"]["eu-west-1"].backends[0]
    on_start(b)
    on_done(b, 0.0001, "connect_error", 1.0)      # refused in 0.1 ms
    assert b.ewma_ms == 1000.0                    # failure_penalty_ms, not 0.1
    on_start(b)
    on_done(b, 0.003, "5xx", 11.0)                # a real answer: its real latency
    assert b.ewma_ms == pytest.approx(1000.0 / math.e + 3.0 * (1 - 1 / math.e))
    assert b.in_flight == 0
    with pytest.raises(ValueError):
        on_done(b, 0.001, "weird", 1.0)


def test_one_slow_answer_is_enough_without_concurrency(world: MakeWorld) -> None:
    """Closed loop (one request at a time, so in-flight never helps): the
    peak-sensitive estimate alone moves traffic after a single 200 ms answer."""
    random.seed(9)
    sel, cluster, _ = world({"eu-west-1": 4})
    plan = sel.plan("api")
    slow = cluster.pools["api"]["eu-west-1"].backends[1]
    now, picks = 0.0, []
    for i in range(400):
        b = sel.pick(plan, None, None, None, None, now).backend
        assert b is not None
        on_start(b)
        lat = 0.2 if (b is slow and i >= 200) else 0.005
        on_done(b, lat, "ok", now + lat)
        now += lat
        picks.append(b is slow)
    assert 30 < sum(picks[100:200]) < 70          # a quarter while fast
    first_slow = picks.index(True, 200)
    assert sum(picks[first_slow + 1:]) <= 1       # then (almost) never again


def test_p2c_honours_weights_under_load(world: MakeWorld) -> None:
    """Same latency, open loop with concurrency: the weight-3 backend ends up
    carrying about three times the in-flight load of the weight-1 one."""
    random.seed(4)
    sel, cluster, _ = world({"eu-west-1": [{"address": "10.0.0.1:80", "weight": 1},
                                           {"address": "10.0.0.2:80", "weight": 3}]})
    plan = sel.plan("api")
    pending: list[tuple[float, int, BackendState]] = []
    counts = {"10.0.0.1:80": 0, "10.0.0.2:80": 0}
    now = 0.0
    for seq in range(6000):
        while pending and pending[0][0] <= now:
            t, _, b = heapq.heappop(pending)
            on_done(b, 0.02, "ok", t)
        b = sel.pick(plan, None, None, None, None, now).backend
        assert b is not None
        on_start(b)
        heapq.heappush(pending, (now + 0.02, seq, b))
        if seq >= 1000:
            counts[b.address] += 1
        now += 0.001                                  # ~20 in flight
    assert 2.2 < counts["10.0.0.2:80"] / counts["10.0.0.1:80"] < 4.0, counts
