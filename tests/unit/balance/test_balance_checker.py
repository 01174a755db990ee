"""HealthChecker scheduling with an injected probe (no sockets)."""
import asyncio
from collections.abc import Hashable

from proxy.balance import HealthCheckConfig
from proxy.balance.checker import HealthChecker, Target

CFG = HealthCheckConfig(interval_s=0.01, timeout_s=0.005, rise=2, fall=2)


async def test_transitions_reported_once_each() -> None:
    results = {"a": True}
    events: list[tuple[Hashable, bool]] = []

    async def probe(t: Target) -> bool:
        return results[t[0]]

    chk = HealthChecker(lambda k, h: events.append((k, h)), probe=probe)
    chk.sync({"k1": ("a", 80, None, CFG)})
    try:
        await asyncio.sleep(0.05)
        assert events == [] and chk.probes >= 3
        results["a"] = False
        for _ in range(100):
            if events:
                break
            await asyncio.sleep(0.005)
        assert events == [("k1", False)] and chk.healthy("k1") is False
        results["a"] = True
        for _ in range(100):
            if len(events) == 2:
                break
            await asyncio.sleep(0.005)
        assert events == [("k1", False), ("k1", True)]
    finally:
        await chk.close()


async def test_sync_stops_removed_targets_and_survives_bad_callbacks() -> None:
    seen: list[str] = []

    async def probe(t: Target) -> bool:
        seen.append(t[0])
        return False

    def boom(k: Hashable, h: bool) -> None:
        raise RuntimeError("callback bug")

    chk = HealthChecker(boom, probe=probe)
    chk.sync({"x": ("x", 80, None, CFG), "y": ("y", 80, None, CFG)})
    try:
        await asyncio.sleep(0.05)
        assert chk.healthy("x") is False                  # kept checking past the error
        chk.sync({"y": ("y", 80, None, CFG)})
        await asyncio.sleep(0)
        n_x = seen.count("x")
        await asyncio.sleep(0.04)
        assert seen.count("x") == n_x and chk.healthy("x") is None
        assert seen.count("y") > 4
    finally:
        await chk.close()
