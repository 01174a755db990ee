"""The worker's end of the control channel: applies what the control plane
publishes (config, health, region views, drain) and reports stats."""
from __future__ import annotations

import asyncio
import logging
import os
from typing import Any, Callable

from .channel import Channel
from .node import Node

log = logging.getLogger("novaedge.agent")

REPORT_INTERVAL_S = 1.0


class WorkerAgent:
    def __init__(self, node: Node, channel: Channel, on_drain: Callable[[], None]) -> None:
        self.node = node
        self.channel = channel
        self.on_drain = on_drain
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.channel.send({"hello": os.getpid()})
        self._task = asyncio.get_running_loop().create_task(self._report_forever())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def handle(self, msg: dict[str, Any]) -> None:
        node = self.node
        if "config" in msg:
            try:
                node.apply_config(msg["config"])
            except Exception:
                # Validated by the control plane; a failure here (say an unreadable
                # certificate) keeps this worker on its last good snapshot.
                log.exception("worker %d could not apply the new config; keeping the old one",
                              node.worker_id)
        if "drain" in msg:
            self.on_drain()
        other = {k: v for k, v in msg.items() if k not in ("config", "drain")}
        if other:
            node.hooks.control_message(node, other)

    def report(self) -> None:
        node = self.node
        stats: dict[str, Any] = {
            "counters": dict(node.stats),
            "open_connections": len(node.connections),
            "pools": {k: p.stats() for k, p in node.pools.items()},
        }
        stats.update(node.hooks.drain_report(node))
        self.channel.send({"stats": stats})

    async def _report_forever(self) -> None:
        while True:
            await asyncio.sleep(REPORT_INTERVAL_S)
            try:
                self.report()
            except Exception:
                log.exception("stats report failed")
