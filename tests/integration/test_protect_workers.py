"""Node-wide accuracy: two forked worker processes charge one key through
the shared GCRA table at full speed for 3 s; together they must admit
rate*t + burst within 10%, as one process would (not 2x).

Real processes, no sockets. Takes ~4 s per case."""
from __future__ import annotations

import multiprocessing
import time
from typing import Any

import pytest

from proxy.protect.ratelimit import EPS, GcraTable

SECS = 3.0


def _hammer(table: GcraTable, key: int, rate: float, burst: int, start: float,
            q: Any) -> None:
    interval, tau = 1.0 / rate, burst / rate + EPS
    admitted = offered = 0
    while time.monotonic() < start:
        pass
    end = start + SECS
    admit = table.admit
    while True:
        now = time.monotonic()
        if now >= end:
            break
        offered += 1
        if admit(key, now, interval, tau) == 0.0:
            admitted += 1
    q.put((admitted, offered))


def run_workers(shared: bool, rate: float, burst: int, workers: int = 2) -> tuple[int, int]:
    ctx = multiprocessing.get_context("fork")
    table = GcraTable(1 << 12, shared=shared)         # allocated BEFORE fork
    q = ctx.Queue()
    start = time.monotonic() + 0.5                     # both start together
    procs = [ctx.Process(target=_hammer, args=(table, 0xC0FFEE, rate, burst, start, q))
             for _ in range(workers)]
    for p in procs:
        p.start()
    try:
        results = [q.get(timeout=SECS + 20) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join()
    return sum(a for a, _ in results), sum(o for _, o in results)


@pytest.mark.parametrize("rate,burst", [(100.0, 10), (1000.0, 100)])
def test_two_workers_admit_the_node_limit(rate: float, burst: int) -> None:
    admitted, offered = run_workers(True, rate, burst)
    expected = rate * SECS + burst
    assert offered > 20 * expected                     # a high offered rate
    assert abs(admitted - expected) <= 0.10 * expected, (admitted, expected)


def test_without_shared_memory_each_worker_admits_the_limit() -> None:
    # The control: the same run with process-local tables (each worker gets
    # a copy-on-write copy) admits about twice the limit.
    admitted, _ = run_workers(False, 1000.0, 100)
    assert admitted > 1.8 * (1000.0 * SECS + 100)
