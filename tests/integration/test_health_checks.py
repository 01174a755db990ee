"""Active health checks against real aiohttp backends on 127.0.0.2/3.

Each backend serves /healthz as told by its `mode`: ok, fail (503), slow
(answers after the check timeout), or is stopped (connection refused). The
checker (interval 0.1 s, timeout 0.05 s, rise 2, fall 2) must report each
transition within interval x fall (+ the timeout when probes time out, + a
little scheduling slack), and the selector must stop choosing a backend the
moment it is reported down. Runtime: about 2 s.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Hashable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from proxy.balance import (Cluster, HealthCheckConfig, PoolConfig, RegionView, Selector,
                           load_catalogue)
from proxy.balance.checker import HealthChecker

ROOT = Path(__file__).resolve().parents[2]
INTERVAL, TIMEOUT, RISE, FALL = 0.1, 0.05, 2, 2
SLACK = 0.06            # event-loop scheduling and connect time on a busy CI box


@dataclass
class Backend:
    host: str
    mode: str = "ok"
    port: int = 0
    runner: web.AppRunner | None = None
    hits: int = 0
    hosts_seen: list[str] = field(default_factory=list)

    async def handler(self, request: web.Request) -> web.Response:
        self.hits += 1
        self.hosts_seen.append(request.host)
        if self.mode == "slow":
            await asyncio.sleep(TIMEOUT * 3)
        if self.mode == "fail":
            return web.Response(status=503, text="draining")
        return web.Response(text="ok")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self.handler)
        self.runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, self.port, reuse_address=True)
        await site.start()
        self.port = self.runner.addresses[0][1]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


@pytest.fixture
async def backends() -> AsyncIterator[list[Backend]]:
    bs = [Backend("127.0.0.2"), Backend("127.0.0.3")]
    for b in bs:
        await b.start()
    yield bs
    for b in bs:
        await b.stop()


class Harness:
    def __init__(self, bs: list[Backend]) -> None:
        hc = {"path": "/healthz", "interval_s": INTERVAL, "timeout_s": TIMEOUT,
              "rise": RISE, "fall": FALL, "host_header": "api.internal"}
        cfg = PoolConfig.model_validate({
            "regions": {"eu-west-1": [f"{b.host}:{b.port}" for b in bs]},
            "health_check": hc,
            "panic": {"healthy_percent": 0},       # let one healthy of two carry traffic
            "slow_start": {"duration_s": 0},
        })
        self.cluster = Cluster()
        self.cluster.apply({"api": cfg}, time.monotonic())
        view = RegionView("eu-west-1", load_catalogue(ROOT / "config" / "regions.yaml"))
        self.selector = Selector(self.cluster, view)
        self.plan = self.selector.plan("api")
        self.events: list[tuple[float, Hashable, bool]] = []
        self.checker = HealthChecker(self._on_change)

    def _on_change(self, key: Hashable, healthy: bool) -> None:
        pool, bid = key  # type: ignore[misc]
        self.events.append((time.monotonic(), key, healthy))
        self.cluster.set_active_health(pool, bid, healthy, time.monotonic())

    def start(self) -> None:
        self.checker.sync(self.cluster.health_targets())

    async def wait_event(self, host: str, healthy: bool, limit: float) -> float:
        """Seconds until `host` is reported `healthy`; fails after `limit` x 3."""
        t0 = time.monotonic()
        n0 = len(self.events)
        while time.monotonic() - t0 < limit * 3:
            for t, key, h in self.events[n0:]:
                if h is healthy and f"/{host}:" in key[1]:  # type: ignore[index]
                    return t - t0
            await asyncio.sleep(0.005)
        raise AssertionError(f"{host} not reported {'up' if healthy else 'down'} in {limit * 3}s")

    def chosen(self, n: int = 200) -> set[str]:
        now = time.monotonic()
        return {self.selector.pick(self.plan, None, None, None, None, now).backend.host  # type: ignore[union-attr]
                for _ in range(n)}


@pytest.fixture
async def harness(backends: list[Backend]) -> AsyncIterator[Harness]:
    h = Harness(backends)
    h.start()
    yield h
    await h.checker.close()


async def test_fall_and_rise_within_interval_times_threshold(
        backends: list[Backend], harness: Harness) -> None:
    a, b = backends
    await asyncio.sleep(INTERVAL * 2)
    assert harness.events == [] and harness.chosen() == {a.host, b.host}
    assert set(a.hosts_seen) == {"api.internal"}          # Host header for name-based vhosts

    a.mode = "fail"
    took = await harness.wait_event(a.host, False, INTERVAL * FALL + SLACK)
    assert took <= INTERVAL * FALL + SLACK, took
    assert harness.chosen() == {b.host}                    # traffic left at once

    a.mode = "ok"
    took = await harness.wait_event(a.host, True, INTERVAL * RISE + SLACK)
    assert took <= INTERVAL * RISE + SLACK, took
    assert harness.chosen() == {a.host, b.host}
    assert all(key[1].endswith(f"{a.host}:{a.port}") for _, key, _ in harness.events)  # type: ignore[index]


async def test_timeouts_and_refused_connections_count_as_failures(
        backends: list[Backend], harness: Harness) -> None:
    a, b = backends
    await asyncio.sleep(INTERVAL)
    a.mode = "slow"
    took = await harness.wait_event(a.host, False, INTERVAL * FALL + TIMEOUT + SLACK)
    assert took <= INTERVAL * FALL + TIMEOUT + SLACK, took

    await b.stop()                                         # connection refused from now
    took = await harness.wait_event(b.host, False, INTERVAL * FALL + SLACK)
    assert took <= INTERVAL * FALL + SLACK, took
    d = harness.selector.pick(harness.plan, None, None, None, None, time.monotonic())
    assert d.backend is None and d.reason == "no healthy region"


async def test_unexpected_status_is_a_failure_even_if_2xx(backends: list[Backend]) -> None:
    a, _ = backends
    events: list[bool] = []
    cfg = HealthCheckConfig(interval_s=INTERVAL, timeout_s=TIMEOUT, rise=RISE, fall=FALL,
                            expect_status=204)
    chk = HealthChecker(lambda k, h: events.append(h))
    chk.sync({"a": (a.host, a.port, None, cfg)})
    try:
        t0 = time.monotonic()
        while not events and time.monotonic() - t0 < 1.0:
            await asyncio.sleep(0.01)
        assert events == [False]                           # 200 is not the 204 asked for
    finally:
        await chk.close()
