"""Route -> region -> backend, for the data plane: a thin adapter over the
pure cores in proxy/balance.

Process-lifetime state (the Cluster's backend states with their EWMAs,
ejections and health; the RegionView's matrix and remote health) survives
reloads: `reconfigured` re-applies the pools and recompiles one Plan per
route. The hot path is `pick`: synchronous, no I/O.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from .balance import Cluster, Decision, Plan, RegionPolicy, RegionView, affinity_key, explain
from .balance import Selector as BalanceSelector
from .balance import load_catalogue
from .balance.backend import BackendState
from .balance.cluster import on_done
from ._accel import attach
from .config import REPO_CONFIG_DIR

if TYPE_CHECKING:
    from .context import RequestContext
    from .node import Node

_CATALOGUE = load_catalogue(REPO_CONFIG_DIR / "regions.yaml")
_OUTCOMES = frozenset({"ok", "5xx", "connect_error", "timeout"})


class Selector:
    def __init__(self, node: "Node") -> None:
        self.node = node
        self.cluster = Cluster()
        self.view = RegionView(node.snapshot.config.node.region, _CATALOGUE)
        self.balancer = BalanceSelector(self.cluster, self.view)
        self.plans: dict[str, Plan] = {}
        self.reconfigured()

    def reconfigured(self) -> None:
        cfg = self.node.snapshot.config
        if cfg.node.region != self.view.local:
            self.view = RegionView(cfg.node.region, _CATALOGUE)
            self.balancer = BalanceSelector(self.cluster, self.view)
        if cfg.latency_matrix:
            self.view.update_matrix(cfg.latency_matrix)
        self.cluster.apply(cfg.pools, time.monotonic())
        plans = {}
        for rc in cfg.routes:
            policy: RegionPolicy = rc.policy
            if rc.regions and policy.regions is None and policy.policy in ("latency", "geo"):
                policy = policy.model_copy(update={"regions": list(rc.regions)})
            plans[rc.name] = self.balancer.plan(rc.pool, policy)
        self.plans = plans

    def backend_ids(self) -> set[str]:
        return {b.id for b in self.cluster.backends()}

    # -- hot path ------------------------------------------------------
    def pick(self, ctx: "RequestContext", exclude: set[str], now: float) -> "BackendState | tuple[int, str]":
        plan = self.plans[ctx.route.name]
        hooks = self.node.hooks
        residency = hooks.allowed_regions(ctx) if hooks.residency_active else None
        allowed, jurisdiction = (residency[1], residency[0]) if residency else (None, None)
        key = affinity_key(plan.affinity, ctx) if plan.affinity is not None else None
        geo = ctx.geo
        latlon = (geo.lat, geo.lon) if geo is not None and geo.lat is not None else None
        d = self.balancer.pick(plan, allowed, key, latlon, exclude or None, now, jurisdiction)
        b = d.backend
        if b is None:
            return (503, d.reason or "no backend available")
        if b.id in exclude:
            return (502, "every backend failed")
        ctx.policy_note = d
        return b

    def on_done(self, backend: Any, latency: float, outcome: str, now: float) -> None:
        if outcome in _OUTCOMES:
            on_done(backend, latency, outcome, now)
        else:
            # The client went away: no verdict on the backend, but it is no longer busy.
            backend.in_flight -= 1
            if backend.pool is not None:
                backend.pool.in_flight -= 1

    # -- control plane inputs --------------------------------------------
    def force(self, backend_id: str, ejected: bool) -> None:
        """An operator's eject/restore from the admin API (an active-health override)."""
        now = time.monotonic()
        for b in self.cluster.backends():
            if b.id == backend_id:
                self.cluster.set_active_health(b.pool_name, b.id, not ejected, now)

    def set_active_health(self, updates: dict[tuple[str, str], bool]) -> None:
        now = time.monotonic()
        for (pool, bid), healthy in updates.items():
            self.cluster.set_active_health(pool, bid, healthy, now)

    def update_regions(self, matrix: dict[str, dict[str, float]] | None,
                       remote_health: dict[str, bool] | None,
                       service_ms: dict[str, float] | None) -> None:
        if matrix:
            self.view.update_matrix(matrix)
        if remote_health is not None:
            self.view.update_remote_health(remote_health)
        if service_ms:
            self.view.update_service_times(service_ms)

    def report(self) -> dict[str, dict[str, object]]:
        out: dict[str, dict[str, object]] = {}
        now = time.monotonic()
        for b in self.cluster.backends():
            out[b.id] = {"healthy": bool(b.up), "ejected": b.ejected_until > now or not b.active_ok,
                         "inflight": b.in_flight,
                         "latency_ms": round(b.ewma_ms, 2) if b.samples else None}
        return out

    def local_health(self) -> tuple[int, int]:
        local = self.view.local
        bs = [b for b in self.cluster.backends() if b.region == local]
        return sum(1 for b in bs if b.up), len(bs)

    def explain(self, ctx: "RequestContext") -> str:
        d = ctx.policy_note
        if isinstance(d, Decision):
            return explain(d)
        return f"region={ctx.region}; backend={ctx.backend}"


# --- C: Selector.pick and Selector.on_done's common case (proxy/balance/_pick.c) ---
# The Python methods stay the reference (and take every uncommon call: retries,
# residency, affinity, a plan to refresh, weighted or located geo policies).
Selector._pick_py = Selector.pick          # type: ignore[attr-defined]
Selector._on_done_py = Selector.on_done    # type: ignore[attr-defined]


def _setup_c(pick: Any) -> tuple[Any, Any]:
    from .balance import cluster as _cluster
    from .balance import pool as _pool
    from .balance import selector as _bsel
    from .balance.backend import OK
    from .context import RequestContext
    return pick.setup(Selector, BalanceSelector, RequestContext, Plan, _pool.RegionPool,  # type: ignore[no-any-return]
                      BackendState, _bsel.Decision, Selector._pick_py, Selector._on_done_py,  # type: ignore[attr-defined]
                      vars(_pool), vars(_cluster), globals(), _cluster.on_done, OK)


_c = attach("proxy.balance._pick", _setup_c)
if _c is not None:
    Selector.pick, Selector.on_done = _c   # type: ignore[method-assign]
