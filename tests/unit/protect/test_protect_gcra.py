"""GCRA table: exactness with a fake clock, bounding, eviction order.

Every test runs on both the process-local table and the shared-memory one
(used here in one process: same code plus the striped locks)."""
from __future__ import annotations

import math
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.protect.ratelimit import EPS, GcraTable


@pytest.fixture(params=[False, True], ids=["local", "shared"])
def shared(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def _run(table: GcraTable, key: int, rate: float, burst: int, t: float, step: float) -> int:
    """Offer a request every `step` seconds over [0, t]; count admissions."""
    interval, tau = 1.0 / rate, burst / rate + EPS
    admitted = 0
    n = int(round(t / step))
    for i in range(n + 1):
        if table.admit(key, 1000.0 + i * step, interval, tau) == 0.0:
            admitted += 1
    return admitted


@pytest.mark.parametrize("rate,burst,t", [(10, 5, 10.0), (100, 1, 3.0), (0.5, 3, 20.0),
                                          (1000, 250, 2.0), (7, 7, 1.0)])
def test_admits_exactly_rate_times_t_plus_burst(shared: bool, rate: float, burst: int,
                                                t: float) -> None:
    table = GcraTable(1024, shared=shared)
    # Offered far above the rate: 20 requests per emission interval.
    assert _run(table, 42, rate, burst, t, 1.0 / rate / 20) == int(rate * t) + burst


@settings(max_examples=60, deadline=None)
@given(rate=st.integers(1, 500), burst=st.integers(1, 300), secs=st.integers(1, 5))
def test_exactness_property(rate: int, burst: int, secs: int) -> None:
    table = GcraTable(1024)
    expected = rate * secs + burst
    # Offer on a grid that divides the emission interval, >= 4x what can pass.
    step = 1.0 / rate / math.ceil(4 * (1 + burst / (rate * secs)))
    assert _run(table, 7, rate, burst, float(secs), step) == expected


def test_under_the_rate_everything_is_admitted(shared: bool) -> None:
    table = GcraTable(1024, shared=shared)
    assert _run(table, 1, 10, 1, 10.0, 0.1) == 101     # exactly at the rate
    assert _run(table, 2, 10, 1, 10.0, 0.2) == 51


def test_wait_is_time_until_next_admission(shared: bool) -> None:
    table = GcraTable(1024, shared=shared)
    for _ in range(5):
        assert table.admit(9, 0.0, 0.5, 2.5) == 0.0     # 2 req/s, burst 5
    wait = table.admit(9, 0.0, 0.5, 2.5)
    assert wait == pytest.approx(0.5)
    assert table.admit(9, 0.49, 0.5, 2.5) > 0
    assert table.admit(9, 0.5, 0.5, 2.5) == 0.0


def test_refund_returns_one_request(shared: bool) -> None:
    table = GcraTable(1024, shared=shared)
    assert table.admit(3, 0.0, 1.0, 1.0) == 0.0
    assert table.admit(3, 0.0, 1.0, 1.0) > 0
    table.refund(3, 1.0)
    assert table.admit(3, 0.0, 1.0, 1.0) == 0.0


def test_independent_keys(shared: bool) -> None:
    table = GcraTable(1024, shared=shared)
    assert table.admit(1, 0.0, 1.0, 1.0) == 0.0
    assert table.admit(1, 0.0, 1.0, 1.0) > 0
    assert table.admit(2, 0.0, 1.0, 1.0) == 0.0


def test_flood_of_distinct_keys_is_bounded_and_spares_heavy_clients(shared: bool) -> None:
    """A full table: 1000 slots, 100,000 spoofed one-shot keys arriving within
    one emission interval (so every slot stays live), and 50 heavy clients
    hammering at 10x their limit throughout. The heavy clients keep their
    buckets (stay limited), the table never grows."""
    table = GcraTable(1000, shared=shared)
    slots = table.slots
    interval, tau = 1.0 / 10, 20 / 10 + EPS            # 10 req/s, burst 20
    heavy = [0xABCDEF00 + i for i in range(50)]
    now = 0.0
    for _ in range(40):                                # drain every heavy bucket
        for h in heavy:
            table.admit(h, now, interval, tau)
    admitted_heavy = 0
    for i in range(100_000):
        now = i * 1e-7                                 # 0.01 s in all: < interval
        table.admit(0x100000000 + i * 7919, now, interval, tau)
        if i % 100 == 0:
            for h in heavy:
                admitted_heavy += table.admit(h, now, interval, tau) == 0.0
    assert table.slots == slots and table.nbytes == slots * 16
    # 1000 rounds x 50 heavy offers over 0.01 s: a heavy client whose bucket
    # was evicted would get a fresh burst of 20. Evicted at most rarely:
    assert admitted_heavy == 0                         # an evicted one would get 20 more
    assert all(table.tat(h) is not None for h in heavy)
    assert table.evictions > 90_000                    # the flood evicted itself


def test_expired_slots_are_reused(shared: bool) -> None:
    table = GcraTable(8, shared=shared)                # one bucket of 8 slots
    for k in range(1, 100):                            # each expires before the next
        assert table.admit(k * 2, float(k), 0.5, 0.5) == 0.0
    assert table.evictions == 0                        # all reused slots were expired
    assert table.live(99.0) == 1


def test_a_stripe_locked_for_good_stalls_once_then_not_at_all() -> None:
    """A worker killed inside the critical section leaves its lock held."""
    table = GcraTable(1024, shared=True, lock_timeout=0.05)
    assert table._locks is not None
    key = 0x10                                           # bucket 16, stripe 16
    assert table._locks[16].acquire(False)               # the "dead worker" holds it
    t0 = time.monotonic()
    assert table.admit(key, 0.0, 1.0, 1.0 + EPS) == 0.0  # waited, then went on
    assert 0.04 < time.monotonic() - t0 < 1.0
    assert table.lock_timeouts == 1
    t0 = time.monotonic()
    assert table.admit(key, 0.0, 1.0, 1.0 + EPS) > 0     # no wait, still a real decision
    assert time.monotonic() - t0 < 0.02
    table._locks[16].release()
    assert table.admit(key, 5.0, 1.0, 1.0 + EPS) == 0.0     # the lock is taken again
    assert table.lock_timeouts == 1
