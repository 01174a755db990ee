"""The control plane: once per node, beside the workers.

It owns the config file (reload on SIGHUP, on file change, or on the admin
call: validate, then publish; on error keep the last good config), collects
the workers' stats, and publishes what the workers need. Feature services
(admin API, active health checks, gossip, anycast) attach through
`ControlService` objects so this module stays about the lifecycle.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Any, Protocol

from .channel import Channel
from .config import Config, ConfigError, load_config

log = logging.getLogger("novaedge.control")


class ControlService(Protocol):
    async def start(self, control: "ControlPlane") -> None: ...
    async def stop(self) -> None: ...
    def reconfigured(self, config: Config) -> None: ...


class ControlPlane:
    def __init__(self, config: Config, config_path: str | None) -> None:
        self.config = config
        self.config_path = config_path
        self.workers: dict[int, Channel] = {}
        self.worker_stats: dict[int, dict[str, Any]] = {}
        self.services: list[ControlService] = []
        self.reloads_ok = 0
        self.reloads_failed = 0
        self.last_reload_error: list[str] = []
        self.started_at = time.time()
        self.draining = False
        self._file_sig: tuple[int, int, int] | None = self._sig()
        self._tasks: list[asyncio.Task[None]] = []
        self.stop_requested = asyncio.Event()
        self.message_hooks: list[Any] = []
        self.detach_hooks: list[Any] = []

    # -- workers -------------------------------------------------------
    def attach(self, worker_id: int, channel: Channel) -> None:
        self.workers[worker_id] = channel

    def detach(self, worker_id: int) -> None:
        self.workers.pop(worker_id, None)
        self.worker_stats.pop(worker_id, None)
        for hook in self.detach_hooks:
            hook(worker_id)

    def on_message(self, worker_id: int, msg: dict[str, Any]) -> None:
        if "stats" in msg:
            self.worker_stats[worker_id] = msg["stats"]
        for hook in self.message_hooks:
            hook(worker_id, msg)

    def broadcast(self, msg: dict[str, Any]) -> None:
        for ch in list(self.workers.values()):
            ch.send(msg)

    def totals(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for st in self.worker_stats.values():
            for k, v in st.get("counters", {}).items():
                out[k] = out.get(k, 0) + v
        return out

    # -- lifecycle -----------------------------------------------------
    async def start(self) -> None:
        for svc in self.services:
            await svc.start(self)
        if self.config_path is not None:
            self._tasks.append(asyncio.get_running_loop().create_task(self._watch_file()))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for svc in reversed(self.services):
            try:
                await svc.stop()
            except Exception:
                log.exception("stopping %r failed", svc)

    def request_stop(self) -> None:
        self.stop_requested.set()

    # -- config --------------------------------------------------------
    def _sig(self) -> tuple[int, int, int] | None:
        if self.config_path is None:
            return None
        try:
            st = os.stat(self.config_path)
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    async def _watch_file(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            sig = self._sig()
            if sig is not None and sig != self._file_sig:
                self._file_sig = sig
                log.info("config file changed: reloading")
                self.reload(source="file change")

    def reload(self, source: str = "SIGHUP") -> dict[str, Any]:
        """Validate the file, then publish it whole; on error keep the last good one."""
        if self.config_path is None:
            return {"ok": False, "errors": ["no config file (quick-start mode)"]}
        self._file_sig = self._sig()
        try:
            new = load_config(self.config_path)
        except ConfigError as e:
            self.reloads_failed += 1
            self.last_reload_error = e.problems
            log.error("reload (%s) refused; keeping the last good config:\n  %s",
                      source, "\n  ".join(e.problems))
            return {"ok": False, "errors": e.problems}
        unchangeable = [k for k in ("listeners", "workers") if getattr(new, k) != getattr(self.config, k)]
        if unchangeable:
            log.warning("reload (%s): %s changes need a restart; kept as they were",
                        source, ", ".join(unchangeable))
            new = new.model_copy(update={k: getattr(self.config, k) for k in unchangeable})
        self.config = new
        self.reloads_ok += 1
        self.last_reload_error = []
        self.broadcast({"config": new})
        for svc in self.services:
            svc.reconfigured(new)
        log.info("config reloaded (%s) from %s", source, Path(self.config_path).name)
        return {"ok": True, "restart_needed_for": unchangeable}

    def status(self) -> dict[str, Any]:
        totals = self.totals()
        return {
            "node": self.config.node.name,
            "region": self.config.node.region,
            "pid": os.getpid(),
            "workers": len(self.workers),
            "uptime_s": round(time.time() - self.started_at, 1),
            "draining": self.draining,
            "reloads_ok": self.reloads_ok,
            "reloads_failed": self.reloads_failed,
            "last_reload_error": self.last_reload_error,
            "requests": totals.get("requests", 0),
            "connections": totals.get("connections", 0),
        }
