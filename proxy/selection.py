"""Route -> region -> backend, for the data plane.

This adapter owns the process-lifetime selection state and delegates to the
pure cores in proxy/balance when they are configured; the fallback here is
local-first round robin that skips backends with recent connect failures.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .context import RequestContext
    from .node import Node
    from .snapshot import Backend


class Selector:
    def __init__(self, node: "Node") -> None:
        self.node = node
        self.rr: dict[tuple[str, str], int] = {}
        self.down_until: dict[str, float] = {}
        self.fails: dict[str, int] = {}
        self.inflight: dict[str, int] = {}

    def reconfigured(self) -> None:
        pass

    def _region_order(self, ctx: "RequestContext") -> list[str]:
        route = ctx.route
        local = self.node.snapshot.config.node.region
        regions = list(route.regions)
        if local in regions:
            regions.remove(local)
            regions.insert(0, local)
        return regions

    def pick(self, ctx: "RequestContext", exclude: set[str]) -> "Backend | tuple[int, str]":
        snap = self.node.snapshot
        route = ctx.route
        pool = snap.pool_regions.get(route.pool, {})
        now = time.monotonic()
        residency = self.node.hooks.allowed_regions(ctx)
        regions = self._region_order(ctx)
        if residency is not None:
            regions = [r for r in regions if r in residency[1]]
        for region in regions:
            backends = [b for b in pool.get(region, ()) if b.id not in exclude
                        and self.down_until.get(b.id, 0.0) <= now and b.weight > 0]
            if not backends:
                continue
            k = (route.pool, region)
            i = self.rr.get(k, 0)
            self.rr[k] = i + 1
            return backends[i % len(backends)]
        if residency is not None:
            return (503, f"no healthy region within jurisdiction {residency[0]}")
        return (503, "no backend available") if not exclude else (502, "all backends failed")

    def on_start(self, backend: "Backend") -> None:
        self.inflight[backend.id] = self.inflight.get(backend.id, 0) + 1

    def on_done(self, backend: "Backend", latency: float, outcome: str) -> None:
        self.inflight[backend.id] = self.inflight.get(backend.id, 1) - 1
        if outcome == "connect_error":
            n = self.fails.get(backend.id, 0) + 1
            self.fails[backend.id] = n
            if n >= 3:
                self.down_until[backend.id] = time.monotonic() + 5.0
                self.fails[backend.id] = 0
        elif outcome == "ok":
            self.fails.pop(backend.id, None)

    def force(self, backend_id: str, ejected: bool) -> None:
        """An operator's eject/restore from the admin API."""
        if ejected:
            self.down_until[backend_id] = float("inf")
        else:
            self.down_until.pop(backend_id, None)

    def report(self) -> dict[str, dict[str, object]]:
        now = time.monotonic()
        return {bid: {"healthy": self.down_until.get(bid, 0.0) <= now,
                      "ejected": self.down_until.get(bid, 0.0) > now,
                      "inflight": self.inflight.get(bid, 0), "latency_ms": None}
                for bid in self.node.snapshot.backends}

    def explain(self, ctx: "RequestContext") -> str:
        return f"region={ctx.region}; backend={ctx.backend}; policy=local-first-rr"
