"""Cluster: every pool's RegionPools and BackendStates for the process.

`apply(pools, now)` swaps in a new config (Pingora-style): backends that still
exist keep their object, and with it their EWMA, in-flight count, ejection and
active-health state; RegionPools that still exist are reconfigured in place so
route plans compiled earlier keep working. DNS names expand to one backend per
resolved address (`update_dns`), each with the spec's weight and zone.

`on_start` / `on_done` are the per-request hooks the data plane calls around
each upstream attempt; they are plain functions so the call is one lookup.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence

from .backend import CONNECT_ERROR, OK, OUTCOMES, TIMEOUT, BackendState
from .config import BackendSpec, HealthCheckConfig, PoolConfig
from .pool import RegionPool

_exp = math.exp


def on_start(b: BackendState) -> None:
    """An attempt to `b` begins (call right before writing upstream)."""
    b.in_flight += 1
    p = b.pool
    if p is not None:
        p.in_flight += 1


def on_done(b: BackendState, latency_s: float, outcome: str, now: float) -> None:
    """An attempt ends: `latency_s` to response headers (or to the failure),
    outcome one of "ok", "5xx", "connect_error", "timeout"."""
    b.in_flight -= 1
    pool = b.pool
    if pool is None:
        return
    pool.in_flight -= 1
    ms = latency_s * 1000.0
    if outcome == OK:
        if b.consecutive_5xx or b.consecutive_conn:
            b.consecutive_5xx = b.consecutive_conn = 0
    elif outcome in (CONNECT_ERROR, TIMEOUT):
        # A refused connect is fast; without a penalty it would look like
        # the quickest backend and draw more traffic.
        penalty = pool.cfg.balance.failure_penalty_ms
        if ms < penalty:
            ms = penalty
    elif outcome not in OUTCOMES:
        raise ValueError(f"unknown outcome {outcome!r}")
    # Inlined BackendState.observe (peak-EWMA), ~0.2 us cheaper than the call.
    if ms >= b.ewma_ms or not b.samples:
        b.ewma_ms = ms
    else:
        w = _exp((now - b.stamp) * pool._neg_inv_tau) if now > b.stamp else 1.0
        b.ewma_ms = b.ewma_ms * w + ms * (1.0 - w)
    b.stamp = now
    b.samples += 1
    if outcome != OK:
        pool.record_failure(b, outcome, now)


class Cluster:
    def __init__(self) -> None:
        self.pools: dict[str, dict[str, RegionPool]] = {}
        self.gen = 0                    # bumped on any membership/health change
        self.next_event = math.inf      # earliest ejection expiry, all pools
        self._configs: dict[str, PoolConfig] = {}
        self._states: dict[tuple[str, str], BackendState] = {}
        self._resolved: dict[str, tuple[str, ...]] = {}
        self.listeners: list[Callable[[RegionPool], None]] = []

    # -- config -------------------------------------------------------------
    def apply(self, pools: Mapping[str, PoolConfig], now: float) -> None:
        """Swap in a new pool config, carrying state over by backend id."""
        self._configs = dict(pools)
        new_pools: dict[str, dict[str, RegionPool]] = {}
        for pname, cfg in pools.items():
            old = self.pools.get(pname, {})
            regions: dict[str, RegionPool] = {}
            for region in cfg.regions:
                rp = old.get(region)
                if rp is None:
                    rp = RegionPool(pname, region, cfg, self._pool_changed)
                else:
                    rp.configure(cfg)
                regions[region] = rp
            new_pools[pname] = regions
        self.pools = new_pools
        live = {}
        for pname, regions in new_pools.items():
            for region, rp in regions.items():
                states = self._expand(pname, region, self._configs[pname])
                for b in states:
                    live[(pname, b.id)] = b
                rp.set_backends(states, now)
        self._states = live
        self._pool_changed(None)

    def _expand(self, pname: str, region: str, cfg: PoolConfig) -> list[BackendState]:
        out: list[BackendState] = []
        seen: set[str] = set()
        init = cfg.balance.initial_latency_ms
        for spec in cfg.regions[region]:
            hosts: Sequence[str]
            if spec.is_name:
                hosts = self._resolved.get(spec.host.rstrip(".").lower(), ())
            else:
                hosts = (spec.host,)
            for host in hosts:
                b = self._state(pname, region, spec, host, init)
                if b.id not in seen:     # two names may resolve to one address
                    seen.add(b.id)
                    out.append(b)
        return out

    def _state(self, pname: str, region: str, spec: BackendSpec, host: str,
               init: float) -> BackendState:
        fresh = BackendState(pname, region, host, spec.port, spec.weight, spec.zone,
                             origin=spec.host if spec.is_name else None,
                             initial_latency_ms=init)
        b = self._states.get((pname, fresh.id))
        if b is None:
            return fresh
        b.weight = spec.weight
        b.zone = spec.zone
        return b

    # -- DNS ------------------------------------------------------------------
    def dns_names(self) -> set[str]:
        """Host names the current config needs resolved."""
        return {s.host.rstrip(".").lower() for cfg in self._configs.values()
                for specs in cfg.regions.values() for s in specs if s.is_name}

    def update_dns(self, name: str, addresses: Iterable[str], now: float) -> None:
        """New addresses for a name: re-expand the region pools that use it."""
        name = name.rstrip(".").lower()
        addrs = tuple(sorted(set(addresses)))
        if self._resolved.get(name) == addrs:
            return
        self._resolved[name] = addrs
        for pname, cfg in self._configs.items():
            for region, specs in cfg.regions.items():
                if any(s.is_name and s.host.rstrip(".").lower() == name for s in specs):
                    rp = self.pools[pname][region]
                    states = self._expand(pname, region, cfg)   # reuses kept ones
                    for b in rp.backends:
                        self._states.pop((pname, b.id), None)
                    for b in states:
                        self._states[(pname, b.id)] = b
                    rp.set_backends(states, now)

    # -- health -----------------------------------------------------------------
    def backend(self, pool: str, backend_id: str) -> BackendState | None:
        return self._states.get((pool, backend_id))

    def backends(self) -> list[BackendState]:
        return list(self._states.values())

    def set_active_health(self, pool: str, backend_id: str, healthy: bool, now: float) -> bool:
        """Apply an active-check transition (from HealthChecker, possibly via
        the control plane in another process). False when the id is unknown."""
        b = self._states.get((pool, backend_id))
        if b is None or b.pool is None:
            return False
        b.pool.set_active(b, healthy, now)
        return True

    def health_targets(self, regions: set[str] | None = None
                       ) -> dict[tuple[str, str], tuple[str, int, str | None, HealthCheckConfig]]:
        """(pool, backend id) -> (host, port, host header, check config) for
        every backend whose pool has active checks (optionally some regions)."""
        out = {}
        for (pname, bid), b in self._states.items():
            hc = self._configs[pname].health_check
            if hc is None or (regions is not None and b.region not in regions):
                continue
            out[(pname, bid)] = (b.host, b.port, hc.host_header or b.origin, hc)
        return out

    def tick(self, now: float) -> None:
        """Release due ejections (called lazily by the selector)."""
        if now < self.next_event:
            return
        for regions in self.pools.values():
            for rp in regions.values():
                if now >= rp.next_event:
                    rp.tick(now)
        self._recompute_next_event()

    def health_report(self, region: str) -> dict[str, bool]:
        """pool -> has a healthy backend in `region` (what gossip publishes)."""
        return {p: regions[region].available for p, regions in self.pools.items()
                if region in regions}

    def _pool_changed(self, rp: RegionPool | None) -> None:
        self.gen += 1
        self._recompute_next_event()
        if rp is not None:
            for fn in self.listeners:
                fn(rp)

    def _recompute_next_event(self) -> None:
        self.next_event = min((rp.next_event for regions in self.pools.values()
                               for rp in regions.values()), default=math.inf)
