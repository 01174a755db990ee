"""Active health checks: one asyncio task per backend, aiohttp client.

Each task probes `GET http://host:port<path>` every interval_s (the first
probe at a random offset within the interval so checks of many backends do
not arrive together), feeds the result to a `RiseFall` and reports a
transition as `on_change(key, healthy)`. A probe fails on a timeout, a
connection error or a status outside expect_status. Every probe opens a new
connection (force_close): a check riding a kept-alive connection would not
notice that the backend stopped accepting new ones.

Detection time: a backend that starts failing is reported down within
fall x interval_s + timeout_s (the probes already scheduled, plus the last one's
timeout); likewise up within rise x interval_s.

The probe is injectable (`probe=`), so unit tests drive the scheduler without
sockets; tests/integration/test_health_checks.py runs the real aiohttp probe.
"""
from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Hashable, Mapping

import aiohttp

from .config import HealthCheckConfig, format_address
from .health import RiseFall

log = logging.getLogger(__name__)

# (host, port, Host header or None, check config): Cluster.health_targets() values.
Target = tuple[str, int, "str | None", HealthCheckConfig]
Probe = Callable[[Target], Awaitable[bool]]


class HealthChecker:
    def __init__(self, on_change: Callable[[Hashable, bool], None],
                 probe: Probe | None = None, initial_healthy: bool = True) -> None:
        self.on_change = on_change
        self.initial_healthy = initial_healthy
        self._probe = probe
        self._session: aiohttp.ClientSession | None = None
        self._tasks: dict[Hashable, asyncio.Task[None]] = {}
        self._targets: dict[Hashable, Target] = {}
        self._state: dict[Hashable, RiseFall] = {}
        self.probes = 0                    # total probes sent (for metrics/tests)

    # -- lifecycle -------------------------------------------------------------
    def sync(self, targets: Mapping[Hashable, Target]) -> None:
        """Check exactly these targets: start new ones, stop removed ones,
        restart those whose address or config changed (state is kept)."""
        for key in list(self._tasks):
            if key not in targets or targets[key] != self._targets.get(key):
                self._tasks.pop(key).cancel()
                if key not in targets:
                    self._targets.pop(key, None)
                    self._state.pop(key, None)
        loop = asyncio.get_running_loop()
        for key, target in targets.items():
            if key in self._tasks:
                continue
            self._targets[key] = target
            cfg = target[3]
            rf = self._state.get(key)
            if rf is None or (rf.rise, rf.fall) != (cfg.rise, cfg.fall):
                rf = RiseFall(cfg.rise, cfg.fall,
                              healthy=rf.healthy if rf else self.initial_healthy)
                self._state[key] = rf
            self._tasks[key] = loop.create_task(self._run(key, target, rf),
                                                name=f"healthcheck {key}")

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    def healthy(self, key: Hashable) -> bool | None:
        rf = self._state.get(key)
        return rf.healthy if rf else None

    # -- probing ------------------------------------------------------------------
    async def _run(self, key: Hashable, target: Target, rf: RiseFall) -> None:
        interval = target[3].interval_s
        loop = asyncio.get_running_loop()
        await asyncio.sleep(random.random() * interval)
        next_at = loop.time()
        while True:
            ok = await self.probe(target)
            self.probes += 1
            change = rf.record(ok)
            if change is not None:
                log.info("health check %s: %s", key, "up" if change else "down")
                try:
                    self.on_change(key, change)
                except Exception:      # a bad callback must not stop checking
                    log.exception("health check callback failed for %s", key)
            # Fixed schedule (not sleep(interval) after the probe) so a slow
            # probe does not stretch the detection time.
            next_at += interval
            now = loop.time()
            if next_at < now:
                next_at = now
            await asyncio.sleep(next_at - now)

    async def probe(self, target: Target) -> bool:
        if self._probe is not None:
            return await self._probe(target)
        return await self._probe_http(target)

    async def _probe_http(self, target: Target) -> bool:
        host, port, host_header, cfg = target
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True, limit=0),
                auto_decompress=False)
        url = f"http://{format_address(host, port)}{cfg.path}"
        headers = {"Host": host_header} if host_header else None
        try:
            async with self._session.get(
                    url, headers=headers, allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=cfg.timeout_s)) as resp:
                return resp.status in cfg.expected()
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            return False
