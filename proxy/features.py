"""The hooks that plug GeoIP, protection, metrics and logs into the hot path.

`build_hooks` reads the config and returns hooks with only the features that
are configured, so an unconfigured feature costs next to nothing per request.
"""
from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .config import Config
from .geo import GeoPhase
from .node import NodeHooks
from .request import header_actions
from .observe import AccessLog, WorkerMetrics, open_access_log
from .observe.finish import observe_and_log
from .protect import Protection, SharedState

if TYPE_CHECKING:
    from .context import RequestContext
    from .downstream import Downstream
    from .node import Node
    from .snapshot import Snapshot


def route_acls(config: Config) -> dict[str, Any]:
    return {r.name: r.acl for r in config.routes if r.acl is not None}


def protection_configured(config: Config) -> bool:
    p = config.protection
    return bool(p.rate_limits or p.acl.allow or p.acl.deny or p.listeners
                or p.detector.enabled or route_acls(config))


class FeatureHooks(NodeHooks):
    def __init__(self, config: Config, worker_id: int, shared: SharedState | None = None) -> None:
        self.worker_id = worker_id
        self.protection = Protection(shared)
        self._apply_protection(config)
        self.geo = GeoPhase(config)
        # the phase's method itself, not a call through this class's: the same
        # answer, one Python call a request fewer (self.geo is never replaced)
        self.forward_headers = self.geo.forward_headers  # type: ignore[method-assign]
        self.header_actions = header_actions(self.geo.strip)
        al = config.access_log
        self.alog: AccessLog | None = (open_access_log(al.path, al.buffer_kib, al.flush_ms)
                                       if al.enabled else None)
        self.metrics: WorkerMetrics | None = (WorkerMetrics(worker_id, access_log=self.alog)
                                              if config.metrics.enabled else None)
        self._observe = self._observer()   # metrics and the log are fixed for the hooks' life
        self._set_active()

    # identify
    def geo_lookup(self, ip: str) -> Any:
        return self.geo.lookup(ip)

    def forward_headers(self, node: "Node", ctx: "RequestContext") -> list[tuple[bytes, bytes]]:
        return self.geo.forward_headers(node, ctx)   # (an instance is given GeoPhase's own, in __init__)

    # admit: the listener ACL once per connection
    def admit_connection(self, node: "Node", conn: "Downstream") -> bool:
        ok = self.protection.permits_connection(conn.listener.name, conn.client_ip)
        if not ok and self.metrics is not None:
            self.metrics.protect_decision("listener", "deny")
        return ok

    # protect: country deny, then ACLs, rate limits and the detector before
    # routing; the route-scoped part once the route is known.
    def protect(self, node: "Node", conn: "Downstream",
                ctx: "RequestContext") -> tuple[int, str, list[tuple[bytes, bytes]]] | None:
        geo = ctx.geo
        if self.geo.deny and geo is not None and geo.country in self.geo.deny:
            ctx.verdicts.append("geo:deny:" + geo.country)
            return (self.geo.deny_status, f"not available in {geo.country}", [])
        if not self.protect_on:
            return None   # geo deny only (with nothing configured the node skips this call)
        client = conn.protect_memo
        if client is None or client.ip != ctx.client_ip:
            client = conn.protect_memo = self.protection.client(ctx.client_ip, geo)
        rej = self.protection.check(ctx, node.now(), client)
        return None if rej is None else (rej.status, rej.reason, rej.headers)

    def route_check(self, node: "Node", conn: "Downstream",
                    ctx: "RequestContext") -> tuple[int, str, list[tuple[bytes, bytes]]] | None:
        if not self.protect_on:
            return None
        rej = self.protection.check_route(ctx, node.now(), conn.protect_memo)
        return None if rej is None else (rej.status, rej.reason, rej.headers)

    def tick(self, node: "Node", now: float) -> None:
        # At every sweep (4x a second): the engine rolls the detector's second
        # over itself once a full second has passed. (Gated here by the integer
        # second as well, a call 0.999 s after the last was skipped and the next
        # came a second later: a 2 s detector period, a 1 s later mitigation.)
        self.protection.tick(now)

    def allowed_regions(self, ctx: "RequestContext") -> tuple[str, frozenset[str]] | None:
        return self.geo.allowed_regions(ctx.geo)

    # log
    def _observer(self) -> Callable[["RequestContext"], object] | None:
        """Metrics and the access log in one pass (finish.observe_and_log, in C
        when built; see loadtests/bench_observe.py), or either alone."""
        m = self.metrics
        a = self.alog
        if m is not None and a is not None:
            return functools.partial(observe_and_log, m, a)
        if m is not None:
            return m.observe
        if a is not None:
            return a.log
        return None

    def finisher(self, node: "Node") -> Callable[["RequestContext"], object] | None:
        """The one call node.finish makes a request: the observer itself, or
        finished() when a subclass overrides it."""
        if type(self).finished is not FeatureHooks.finished:
            return functools.partial(self.finished, node)
        return self._observe

    def finished(self, node: "Node", ctx: "RequestContext") -> None:
        if self._observe is not None:
            self._observe(ctx)

    def drain_report(self, node: "Node") -> dict[str, Any]:
        out: dict[str, Any] = {"backends": node.selector.report(),
                               "mitigations": self._mitigation_rows()}
        if self.metrics is not None:
            out["metrics"] = self.metrics.drain(inflight=node.inflight)
        g = self.geo.db
        if g is not None:
            epochs = g.build_epochs
            out["geoip"] = {"build_epoch": max(epochs.values()) if epochs else None,
                            "reloads_ok": g.reloads_ok, "reloads_failed": g.reloads_failed}
        return out

    def _mitigation_rows(self) -> list[dict[str, Any]]:
        """The engine's mitigations in the admin API's shape (proxy/observe/view.py)."""
        rows = []
        wall = time.time()
        for m in self.protection.mitigations():
            rows.append({**m, "id": f"{m['kind']}:{m['key']}", "rule": f"anomaly:{m['kind']}",
                         "action": "shadow" if m.get("shadow") else m["action"],
                         "since": wall - m["age_s"], "expires_in_s": m["ttl_s"],
                         "reason": f"{m['rate']:.0f}/s vs mean {m['mean']:.1f} + 3 x {m['sigma']:.1f}"})
        return rows

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
    def _apply_protection(self, config: Config) -> None:
        self.protection.apply_config(config.protection, route_acls(config))
        self.protect_on = protection_configured(config)

    def _set_active(self) -> None:
        """Which per-request hooks can say anything under this config."""
        self.protect_active = self.protect_on or bool(self.geo.deny)
        self.residency_active = bool(self.geo.residency)

    def reconfigured(self, node: "Node", snapshot: "Snapshot") -> None:
        self._apply_protection(snapshot.config)
        self.geo.configure(snapshot.config)
        self.header_actions = header_actions(self.geo.strip)
        self._set_active()
        self.geo.start_watching()

    def started(self, node: "Node") -> None:
        self.geo.start_watching()
        if self.alog is not None:
            self.alog.start(asyncio.get_running_loop())

    def stopped(self, node: "Node") -> None:
        self.geo.stop()
        if self.alog is not None:
            asyncio.get_running_loop().create_task(self.alog.close())


def build_hooks(config: Config, worker_id: int, shared: SharedState | None = None) -> NodeHooks:
    return FeatureHooks(config, worker_id, shared)
