"""Regions fail over under load with no failed GET, and traffic comes back.

Three simulated regions on loopback; the node is in us-east-1. Every
backend of the local region is killed while clients run GETs.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any

from proxy.config import Config
from proxy.features import FeatureHooks
from proxy.runner import Stack
from tests.support.backend import TestBackend
from tests.support.node import node_config

REGIONS = ("us-east-1", "eu-west-1", "ap-northeast-1")


class Recording(FeatureHooks):
    def __init__(self, config: Config, worker_id: int) -> None:
        super().__init__(config, worker_id)
        self.log: list[tuple[float, int, str | None, int]] = []
        self.health: list[tuple[float, dict[Any, bool]]] = []

    def finished(self, node: Any, ctx: Any) -> None:
        super().finished(node, ctx)
        self.log.append((time.monotonic(), ctx.status, ctx.region, ctx.retries))

    def control_message(self, node: Any, msg: dict[str, Any]) -> None:
        super().control_message(node, msg)
        if "active_health" in msg:
            self.health.append((time.monotonic(), msg["active_health"]))


async def test_local_region_dies_and_comes_back() -> None:
    backends = {r: [await TestBackend.start(f"{r}-{i}") for i in range(2)] for r in REGIONS}
    # A lenient probe timeout: on a loaded CI machine a 0.2 s one failed healthy backends.
    hc = {"path": "/healthz", "interval_s": 0.4, "timeout_s": 0.4, "rise": 2, "fall": 2}
    cfg = node_config({r: [b.address for b in bs] for r, bs in backends.items()},
                      pools={"default": {"regions": {r: [b.address for b in bs] for r, bs in backends.items()},
                                         "health_check": hc,
                                         "outlier": {"base_ejection_s": 1.0}}},
                      access_log={"enabled": False}, admin={"enabled": False})
    hooks: list[Recording] = []

    def factory(c: Config, w: int) -> Recording:
        hooks.append(Recording(c, w))
        return hooks[-1]

    stack = Stack(cfg, hooks_factory=factory)
    node = await stack.start()
    port = node.listeners[0].port
    stop = asyncio.Event()
    failures: list[str] = []

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for _ in range(20000):
                if stop.is_set():
                    break
                writer.write(b"GET /x HTTP/1.1\r\nHost: app\r\n\r\n")
                head = await reader.readuntil(b"\r\n\r\n")
                n = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                await reader.readexactly(n)
                if not head.startswith(b"HTTP/1.1 200"):
                    failures.append(head.decode("latin-1"))
                await asyncio.sleep(0.01)
        finally:
            writer.close()

    clients: list[asyncio.Task[None]] = []
    try:
        clients = [asyncio.create_task(client()) for _ in range(6)]
        await asyncio.sleep(1.0)
        rec = hooks[0].log
        assert {r for _t, _s, r, _n in rec} == {"us-east-1"}   # local first

        killed_at = time.monotonic()
        for b in backends["us-east-1"]:
            await b.stop()
        await asyncio.sleep(4.0)
        after = [(t, r, n) for t, _s, r, n in rec if t > killed_at]
        moved = [t for t, r, n in after if r == "eu-west-1" and n == 0]
        assert moved, "traffic never reached eu-west-1"
        # After 3 s no request even tries the dead region (no retry needed).
        late = [(t, r, n) for t, r, n in after if t > killed_at + 3.0]
        assert late and all(r == "eu-west-1" and n == 0 for _t, r, n in late), late[:5]
        first_clean = min(t for t, r, n in after if r == "eu-west-1" and n == 0
                          and all(n2 == 0 for t2, _r2, n2 in after if t2 >= t))
        print(f"failover: clean eu-west-1 traffic {first_clean - killed_at:.2f}s after the kill")

        back_at = time.monotonic()
        for b in backends["us-east-1"]:
            await b.restart()
        await asyncio.sleep(3.0)
        returned = [t for t, _s, r, _n in rec if t > back_at and r == "us-east-1"]
        assert returned, "traffic did not return to us-east-1"
        print(f"return: first us-east-1 answer {min(returned) - back_at:.2f}s after restart")
        ups = [t for t, h in hooks[0].health if t > back_at and any(h.values())]
        assert ups and min(returned) >= min(ups)   # not before the checks' rise threshold
        assert min(returned) - back_at < 2.5   # rise (2 x 0.4 s) + ejection backoff (1 s) + slack
        stop.set()
        await asyncio.gather(*clients)
        assert failures == [], failures[:5]   # not one failed GET
    finally:
        stop.set()
        await asyncio.gather(*clients, return_exceptions=True)
        await stack.stop(0.5)
        for bs in backends.values():
            for b in bs:
                await b.stop()
