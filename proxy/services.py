"""The control-plane services a node runs, and the NodeView the admin API reads.

The view is assembled from what the control plane already has: the config,
the workers' per-second reports (backend state, metric deltas, GeoIP), and
the gossip view when gossip runs. Reads are synchronous and cheap.
"""
from __future__ import annotations

import logging
import time
from typing import Any

from aiohttp import web

from . import __version__
from .config import Config, region_catalogue
from .control import ControlPlane
from .observe import MetricsAggregator, start_admin

log = logging.getLogger("novaedge.services")


class ControlView:
    """NodeView over the control plane (see proxy/observe/view.py for shapes)."""

    def __init__(self, control: ControlPlane, metrics: MetricsAggregator) -> None:
        self.control = control
        self._metrics = metrics
        self.loaded_at = time.time()
        self.gossip: Any = None   # set by the gossip service when it runs

    @property
    def metrics(self) -> MetricsAggregator:
        return self._metrics

    def _reports(self, key: str) -> list[Any]:
        return [st[key] for st in self.control.worker_stats.values() if key in st]

    def status(self) -> dict[str, Any]:
        c = self.control
        st = c.status()
        geo = self._reports("geoip")
        st.update({
            "version": __version__,
            "config": {"generation": c.reloads_ok + 1, "loaded_at": self.loaded_at,
                       "last_error": "\n".join(c.last_reload_error) or None},
            "geoip": geo[0] if geo else None,
        })
        return st

    def effective_config(self) -> dict[str, Any]:
        return self.control.config.model_dump(mode="json")

    def backend_states(self) -> dict[str, dict[str, Any]]:
        """Merge the workers' views: a backend is healthy if every worker says so."""
        merged: dict[str, dict[str, Any]] = {}
        for rep in self._reports("backends"):
            for bid, st in rep.items():
                m = merged.setdefault(bid, {"healthy": True, "ejected": False, "inflight": 0,
                                            "latency_ms": None})
                m["healthy"] = m["healthy"] and bool(st.get("healthy", True))
                m["ejected"] = m["ejected"] or bool(st.get("ejected", False))
                m["inflight"] += int(st.get("inflight", 0))
                lat = st.get("latency_ms")
                if lat is not None:
                    m["latency_ms"] = lat if m["latency_ms"] is None else max(m["latency_ms"], lat)
        return merged

    def regions(self) -> list[dict[str, Any]]:
        cfg: Config = self.control.config
        cat = region_catalogue()
        states = self.backend_states()
        remote = self.gossip.region_health() if self.gossip is not None else {}
        by_region: dict[str, list[dict[str, Any]]] = {}
        for pool in cfg.pools.values():
            for region, backends in pool.regions.items():
                for b in backends:
                    bid = f"{region}/{b.address}"
                    st = states.get(bid, {"healthy": True, "ejected": False, "inflight": 0,
                                          "latency_ms": None})
                    row = {"id": bid, "address": b.address, **st}
                    lst = by_region.setdefault(region, [])
                    if all(x["id"] != bid for x in lst):
                        lst.append(row)
        out = []
        for rid in list(by_region) + [r for r in remote if r not in by_region]:
            info = cat.get(rid, {})
            row: dict[str, Any] = {"id": rid, "name": info.get("name", rid), "lat": info.get("lat"),
                                   "lon": info.get("lon"), "local": rid == cfg.node.region,
                                   "backends": by_region.get(rid, [])}
            rh = remote.get(rid)
            if rh is not None and rid not in by_region:
                row["health"] = "healthy" if getattr(rh, "healthy", rh) else "down"
            out.append(row)
        return out

    def members(self) -> list[dict[str, Any]]:
        return list(self.gossip.member_rows()) if self.gossip is not None else []

    def latency_matrix(self) -> dict[str, dict[str, float | None]]:
        if self.gossip is not None:
            return self.gossip.latency_matrix()
        return {}

    def mitigations(self) -> list[dict[str, Any]]:
        seen: dict[str, dict[str, Any]] = {}
        for rep in self._reports("mitigations"):
            for m in rep:
                seen.setdefault(str(m.get("id", m.get("key"))), m)
        return list(seen.values())

    async def reload(self) -> dict[str, Any]:
        res = self.control.reload(source="admin API")
        self._metrics.config_reload(bool(res.get("ok")))
        if res.get("ok"):
            self.loaded_at = time.time()
        return res

    async def drain(self) -> dict[str, Any]:
        self.control.request_stop()
        return {"ok": True, "draining": True}

    def _known(self, backend_id: str) -> None:
        ids = {f"{r}/{b.address}" for p in self.control.config.pools.values()
               for r, bs in p.regions.items() for b in bs}
        if backend_id not in ids:
            raise KeyError(backend_id)

    async def eject(self, backend_id: str) -> dict[str, Any]:
        self._known(backend_id)
        self.control.broadcast({"eject": backend_id})
        self._metrics.ejection(backend_id)
        return {"ok": True, "ejected": backend_id}

    async def restore(self, backend_id: str) -> dict[str, Any]:
        self._known(backend_id)
        self.control.broadcast({"restore": backend_id})
        return {"ok": True, "restored": backend_id}


class AdminService:
    def __init__(self, view: ControlView) -> None:
        self.view = view
        self.runner: web.AppRunner | None = None

    async def start(self, control: ControlPlane) -> None:
        self.runner = await start_admin(self.view, control.config.admin)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def reconfigured(self, config: Config) -> None:
        pass


class MetricsService:
    """Folds the workers' per-second deltas into the node's one registry."""

    def __init__(self, metrics: MetricsAggregator) -> None:
        self.metrics = metrics

    def on_message(self, worker_id: int, msg: dict[str, Any]) -> None:
        st = msg.get("stats")
        if not st:
            return
        d = st.get("metrics")
        if d:
            self.metrics.apply(d)
        geo = st.get("geoip")
        if geo:   # every worker watches the same file: any one's view will do
            self.metrics.set_geoip(geo["build_epoch"], geo["reloads_ok"], geo["reloads_failed"])

    async def start(self, control: ControlPlane) -> None:
        pass

    async def stop(self) -> None:
        pass

    def reconfigured(self, config: Config) -> None:
        pass


class HealthService:
    """Active health checks, once per node: results go to every worker.

    A control-side Cluster only knows the targets; the workers' Clusters
    hold the state that routing reads. A worker that starts later gets the
    full current picture with its first message.
    """

    def __init__(self) -> None:
        from .balance import Cluster
        from .balance.checker import HealthChecker
        self.cluster = Cluster()
        self.checker = HealthChecker(self._changed)
        self.state: dict[tuple[str, str], bool] = {}
        self.control: ControlPlane | None = None

    def _changed(self, key: Any, healthy: bool) -> None:
        self.state[key] = healthy
        if self.control is not None:
            self.control.broadcast({"active_health": {key: healthy}})

    def on_message(self, worker_id: int, msg: dict[str, Any]) -> None:
        if "hello" in msg and self.control is not None and self.state:
            ch = self.control.workers.get(worker_id)
            if ch is not None:
                ch.send({"active_health": dict(self.state)})

    async def start(self, control: ControlPlane) -> None:
        self.control = control
        self.reconfigured(control.config)

    def reconfigured(self, config: Config) -> None:
        self.cluster.apply(config.pools, time.monotonic())
        targets = self.cluster.health_targets()
        self.state = {k: v for k, v in self.state.items() if k in targets}
        self.checker.sync(targets)

    async def stop(self) -> None:
        await self.checker.close()

    def local_health(self, region: str) -> tuple[int, int]:
        """(healthy, total) backends of `region` by active checks (all, if unchecked)."""
        bs = [b for b in self.cluster.backends() if b.region == region]
        up = sum(1 for b in bs if self.state.get((b.pool_name, b.id), True))
        return up, len(bs)


def install_services(control: ControlPlane) -> ControlView:
    metrics = MetricsAggregator()
    view = ControlView(control, metrics)
    ms = MetricsService(metrics)
    control.message_hooks.append(ms.on_message)
    control.detach_hooks.append(metrics.forget_worker)
    control.services.append(ms)
    hs = HealthService()
    control.services.append(hs)
    control.message_hooks.append(hs.on_message)
    if control.config.gossip.enabled:
        from .gossip_service import GossipService
        gs = GossipService(view, hs)
        control.services.append(gs)
        control.message_hooks.append(gs.on_message)
    if control.config.admin.enabled:
        control.services.append(AdminService(view))
    control.view = view  # type: ignore[attr-defined]
    return view
