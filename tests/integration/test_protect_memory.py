"""A million distinct (spoofed) client addresses through Protection.check:
memory stays bounded and the heavy real clients keep their buckets.

No sockets, but real sizes: 1,000,000 requests from 1,000,000 addresses in
two simulated seconds, plus 20 heavy clients at 5x their limit throughout,
against a 65,536-slot shared GCRA table (1 MiB), so the table is full and
evicting for most of the run. Stated bound: RSS grows by less than 48 MiB
(measured ~10-20 MiB, see loadtests/bench_protect.py memory). Takes ~15-30 s.
"""
from __future__ import annotations

import gc

from proxy.context import RequestContext
from proxy.protect import Protection, ProtectionConfig, SharedState

N = 1_000_000
SECONDS = 2.0
HEAVY = [f"192.0.2.{i}" for i in range(1, 21)]
BOUND_KIB = 48 * 1024

CONFIG = {
    "rate_limits": [
        {"name": "per-ip", "key": "ip", "rate": 10, "burst": 20},
        {"name": "per-net", "key": "prefix", "rate": 1000, "burst": 2000},
    ],
    "detector": {"enabled": True, "keys": ["ip", "prefix", "route"], "max_keys": 20_000},
    "table_size": 1 << 16,
}


class Route:
    name = "web"


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def spoofed(i: int) -> str:
    return f"{10 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}.{1 + (i % 250)}"


def test_a_million_distinct_clients_stay_bounded() -> None:
    shared = SharedState(CONFIG["table_size"], workers=2)    # type: ignore[arg-type]
    prot = Protection(shared)
    prot.apply_config(ProtectionConfig.model_validate(CONFIG))
    route = Route()
    t0 = 1000.0

    def request(ip: str, now: float) -> bool:
        ctx = RequestContext("r", now, "GET", "h", "/", "", "1.1", ip, 1, None, [], "l")
        ctx.route = route
        return prot.check(ctx, now) is None

    # Warm the structures (detector tables fill to their caps), then measure.
    for i in range(50_000):
        request(spoofed(N + i), t0 - 1.0 + i * 1e-6)
    prot.tick(t0)
    gc.collect()
    rss0 = rss_kib()
    nbytes = shared.table.nbytes

    heavy_admitted = 0
    next_tick = t0 + 1.0
    for i in range(N):
        now = t0 + i * SECONDS / N
        request(spoofed(i), now)
        if i % 500 == 0:                       # each heavy client ~50 req/s: 5x its limit
            ip = HEAVY[(i // 500) % len(HEAVY)]
            heavy_admitted += request(ip, now)
        if now >= next_tick:
            prot.tick(now)
            next_tick += 1.0
    gc.collect()
    growth = rss_kib() - rss0

    assert shared.table.nbytes == nbytes == 65_536 * 16
    assert shared.table.evictions > 100_000                 # full, and bounded by evicting
    det = prot._det
    assert det is not None
    assert all(len(s) <= 20_000 for s in det.stats.values())
    assert all(len(c) <= 20_000 for c in det.cur.values())
    assert len(prot._clients) <= 8_192
    # Heavy clients kept their buckets: at most rate*t + burst each.
    assert heavy_admitted <= len(HEAVY) * (10 * SECONDS + 20) * 1.05, heavy_admitted
    print(f"\nRSS growth over 1M distinct clients: {growth / 1024:.1f} MiB "
          f"(table {nbytes / 2**20:.0f} MiB fixed, {shared.table.evictions:,} evictions, "
          f"heavy admitted {heavy_admitted})")
    assert growth < BOUND_KIB, f"RSS grew {growth / 1024:.1f} MiB"
