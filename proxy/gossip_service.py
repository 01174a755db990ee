"""Gossip in the control plane: publish this region's backend health and
replication lag, and hand every worker the latency matrix and the other
regions' health so that routing goes around a failed region."""
from __future__ import annotations

import asyncio
import logging
from typing import Any

from .config import Config
from .control import ControlPlane
from .gossip import GossipNode, start_gossip, stop_gossip

log = logging.getLogger("novaedge.gossip.service")

PUBLISH_INTERVAL_S = 0.5


class GossipService:
    def __init__(self, view: Any, health: Any) -> None:
        self.view = view          # ControlView: status page and admin API read from us
        self.health = health      # HealthService: this region's active-check results
        self.node: GossipNode | None = None
        self.control: ControlPlane | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_published: dict[str, Any] = {}

    async def start(self, control: ControlPlane) -> None:
        self.control = control
        cfg = control.config.gossip   # region and name default to the node's (config.py)
        self.node = await start_gossip(cfg)
        self.view.gossip = self
        self._task = asyncio.get_running_loop().create_task(self._publish_forever())
        log.info("gossip: %s in %s on %s", cfg.node_name, cfg.region, cfg.bind)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self.node is not None:
            await stop_gossip(self.node, leave=True)

    def reconfigured(self, config: Config) -> None:
        pass   # membership and keys live for the process; a restart changes them

    # -- what the admin view reads ------------------------------------------
    def member_rows(self) -> list[dict[str, Any]]:
        assert self.node is not None
        return [{"node": m.name, "region": m.region, "address": m.address, "state": m.state,
                 "incarnation": m.incarnation} for m in self.node.members()]

    def region_health(self) -> dict[str, Any]:
        assert self.node is not None
        return self.node.region_health()

    def latency_matrix(self) -> dict[str, dict[str, float | None]]:
        assert self.node is not None
        return self.node.latency_matrix()  # type: ignore[return-value]

    # -- the loop -------------------------------------------------------------
    def _local_health(self) -> tuple[int, int]:
        assert self.control is not None
        region = self.control.config.node.region
        up, total = self.health.local_health(region)
        # Passive ejections seen by the workers count too.
        states = self.view.backend_states()
        local = [s for bid, s in states.items() if bid.startswith(region + "/")]
        if local:
            up = min(up, sum(1 for s in local if s["healthy"]))
            total = max(total, len(local))
        return up, total

    def publish_once(self) -> None:
        node, control = self.node, self.control
        assert node is not None and control is not None
        up, total = self._local_health()
        node.set_local_health(up, total)
        health = node.region_health()
        local = control.config.node.region
        # A region with no live node reporting is "unknown", not "down": routing
        # then goes by this node's own checks of it (the report says True, which
        # the RegionView treats as no override).
        remote = {r: (h.healthy if h.alive_nodes > 0 else True)
                  for r, h in health.items() if r != local}
        msg = {"matrix": node.latency_matrix(), "remote_health": remote}
        if msg != self._last_published:
            self._last_published = msg
            control.broadcast({"regions": msg})
        m = self.view.metrics
        counts: dict[str, int] = {}
        for mem in node.members():
            counts[mem.state] = counts.get(mem.state, 0) + 1
        m.set_gossip_members(counts)
        m.set_latency_matrix({a: {b: (v / 1000.0 if v is not None else None) for b, v in row.items()}
                              for a, row in node.latency_matrix().items()})

    async def _publish_forever(self) -> None:
        while True:
            await asyncio.sleep(PUBLISH_INTERVAL_S)
            try:
                self.publish_once()
            except Exception:
                log.exception("gossip publish failed")

    def on_message(self, worker_id: int, msg: dict[str, Any]) -> None:
        # A worker that joins late gets the current view at once.
        if "hello" in msg and self.control is not None and self._last_published:
            ch = self.control.workers.get(worker_id)
            if ch is not None:
                ch.send({"regions": self._last_published})

