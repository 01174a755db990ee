"""The hooks that plug GeoIP, protection, metrics and logs into the hot path.

`build_hooks` reads the config and returns hooks with only the features that
are configured, so an unconfigured feature costs next to nothing per request.
"""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from .config import Config
from .geo import GeoPhase
from .node import NodeHooks
from .observe import AccessLog, WorkerMetrics, open_access_log

if TYPE_CHECKING:
    from .context import RequestContext
    from .downstream import Downstream
    from .node import Node
    from .snapshot import Snapshot


class FeatureHooks(NodeHooks):
    def __init__(self, config: Config, worker_id: int) -> None:
        self.worker_id = worker_id
        self.geo = GeoPhase(config)
        self.strip_request_headers = self.geo.strip
        al = config.access_log
        self.alog: AccessLog | None = (open_access_log(al.path, al.buffer_kib, al.flush_ms)
                                       if al.enabled else None)
        self.metrics: WorkerMetrics | None = (WorkerMetrics(worker_id, access_log=self.alog)
                                              if config.metrics.enabled else None)

    # identify
    def geo_lookup(self, ip: str) -> Any:
        return self.geo.lookup(ip)

    def forward_headers(self, node: "Node", ctx: "RequestContext") -> list[tuple[bytes, bytes]]:
        return self.geo.forward_headers(ctx.geo)

    # protect
    def protect(self, node: "Node", conn: "Downstream",
                ctx: "RequestContext") -> tuple[int, str, list[tuple[bytes, bytes]]] | None:
        geo = ctx.geo
        if self.geo.deny and geo is not None and geo.country in self.geo.deny:
            ctx.verdicts.append("geo:deny:" + geo.country)
            return (self.geo.deny_status, f"not available in {geo.country}", [])
        return None

    def allowed_regions(self, ctx: "RequestContext") -> tuple[str, frozenset[str]] | None:
        return self.geo.allowed_regions(ctx.geo)

    # log
    def begin(self, ctx: "RequestContext") -> None:
        if self.metrics is not None:
            self.metrics.inflight += 1

    def finished(self, node: "Node", ctx: "RequestContext") -> None:
        if self.metrics is not None:
            self.metrics.observe(ctx)
        if self.alog is not None:
            self.alog.log(ctx)

    def drain_report(self, node: "Node") -> dict[str, Any]:
        out: dict[str, Any] = {"backends": node.selector.report()}
        if self.metrics is not None:
            out["metrics"] = self.metrics.drain()
        g = self.geo.db
        if g is not None:
            epochs = g.build_epochs
            out["geoip"] = {"build_epoch": max(epochs.values()) if epochs else None,
                            "reloads_ok": g.reloads_ok, "reloads_failed": g.reloads_failed}
        return out

    def control_message(self, node: "Node", msg: dict[str, Any]) -> None:
        if msg.get("reopen_logs") and self.alog is not None:
            self.alog.reopen()
        if "eject" in msg:
            node.selector.force(msg["eject"], ejected=True)
        if "restore" in msg:
            node.selector.force(msg["restore"], ejected=False)
        if "active_health" in msg:
            node.selector.set_active_health(msg["active_health"])
        if "regions" in msg:
            r = msg["regions"]
            node.selector.update_regions(r.get("matrix"), r.get("remote_health"), r.get("service_ms"))

    # lifecycle
    def reconfigured(self, node: "Node", snapshot: "Snapshot") -> None:
        self.geo.configure(snapshot.config)
        self.strip_request_headers = self.geo.strip
        self.geo.start_watching()

    def started(self, node: "Node") -> None:
        self.geo.start_watching()
        if self.alog is not None:
            self.alog.start(asyncio.get_running_loop())

    def stopped(self, node: "Node") -> None:
        self.geo.stop()
        if self.alog is not None:
            asyncio.get_running_loop().create_task(self.alog.close())


def build_hooks(config: Config, worker_id: int) -> NodeHooks:
    return FeatureHooks(config, worker_id)
