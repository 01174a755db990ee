"""Selector: choose the region, then the backend, for one request attempt.

Compile one `Plan` per route at snapshot compile time (`selector.plan(pool,
RegionPolicy)`); then per attempt call `selector.pick(plan, allowed, key,
latlon, exclude, now)`. It is synchronous and does no I/O.

Region ranking is the expensive part (13 regions x latency + service time),
so a plan caches its ranking of *available* regions and recomputes it only
when the cluster or region view changes (generation counters) or every
`refresh_s` (service times drift). Per request, pick walks that ranking and
takes the first region that is allowed (jurisdiction), not saturated
(in-flight >= healthy x max_inflight_per_backend spills to the next) and has a
backend left after `exclude`. Geo orders are cached per client location.

Policies:
- latency: rtt(local, r) + service(r); local gets `local_bias_ms` off unless
  it is in panic mode (degraded). service(r) is the mean peak-EWMA of r's
  healthy backends minus the rtt (as this node sees it), else what r reports
  over gossip, else 0.
- geo: nearest by great circle to the client's GeoIP location (latency when
  the location is unknown).
- weighted: random by the route's weights, among allowed available regions.
- failover: the first available region in `order`.
"""
from __future__ import annotations

import math
import random
from bisect import bisect_right

from .backend import BackendState
from .cluster import Cluster, on_done, on_start
from .config import AffinityConfig, RegionPolicy
from .pool import RegionPool
from .region import RegionView

_random = random.random
_GEO_CACHE_MAX = 4096


class Plan:
    """A route's compiled region policy plus its cached ranking."""

    __slots__ = ("pool_name", "policy", "kind", "bias", "max_ifpb", "view",
                 "ranking", "scores", "cum", "total", "valid_until", "gen",
                 "geo", "affinity", "algorithm")

    def __init__(self, pool_name: str, policy: RegionPolicy, view: RegionView) -> None:
        self.pool_name = pool_name
        self.policy = policy
        self.kind = policy.policy
        self.bias = policy.local_bias_ms
        self.max_ifpb = policy.max_inflight_per_backend
        self.view = view
        self.ranking: list[RegionPool] = []
        self.scores: dict[str, float | str] = {}
        self.cum: list[float] = []
        self.total = 0.0
        self.valid_until = -math.inf
        self.gen = -1
        self.geo: dict[tuple[float, float], list[RegionPool]] = {}
        self.affinity: AffinityConfig | None = None   # the pool's, for affinity_key()
        self.algorithm = ""


class Decision:
    """The outcome of pick(). `backend is None` means no region: answer 503
    with `reason`. Scores for explain() are read from the plan lazily."""

    __slots__ = ("region", "backend", "plan", "why")
    reason: str | None = None
    saturated_spill = False

    def __init__(self, region: str | None, backend: BackendState | None, plan: Plan,
                 why: tuple[float, frozenset[str] | None, tuple[float, float] | None]) -> None:
        self.region = region
        self.backend = backend
        self.plan = plan
        self.why = why                   # (now, allowed, client latlon)

    @property
    def policy(self) -> str:
        return self.plan.kind

    def scores(self) -> list[tuple[str, float | str]]:
        """Candidate regions with their score (ms for latency, km for geo,
        weight for weighted, position for failover) or why they were out."""
        plan = self.plan
        now, allowed, latlon = self.why
        out: list[tuple[str, float | str]] = []
        for region, s in plan.scores.items():
            if allowed is not None and region not in allowed and not isinstance(s, str):
                s = "denied"
            elif plan.kind == "geo" and latlon is not None and not isinstance(s, str):
                s = round(plan.view.distance_km(latlon, region))
            out.append((region, s))
        return out


class NoRegion(Decision):
    __slots__ = ("reason",)

    def __init__(self, plan: Plan, why: tuple[float, frozenset[str] | None,
                                            tuple[float, float] | None], reason: str) -> None:
        super().__init__(None, None, plan, why)
        self.reason = reason


class _Spill(Decision):
    __slots__ = ()
    saturated_spill = True


class Selector:
    on_start = staticmethod(on_start)
    on_done = staticmethod(on_done)

    def __init__(self, cluster: Cluster, view: RegionView, refresh_s: float = 0.25) -> None:
        self.cluster = cluster
        self.view = view
        self.refresh_s = refresh_s

    def plan(self, pool_name: str, policy: RegionPolicy | None = None) -> Plan:
        return Plan(pool_name, policy or RegionPolicy(), self.view)

    # -- the hot path ---------------------------------------------------------
    def pick(self, plan: Plan, allowed: frozenset[str] | None, client_key: bytes | None,
             client_latlon: tuple[float, float] | None, exclude: set[str] | None,
             now: float, jurisdiction: str | None = None) -> Decision:
        cluster = self.cluster
        if now >= cluster.next_event:
            cluster.tick(now)
        if now >= plan.valid_until or plan.gen != cluster.gen + self.view.gen:
            self._refresh(plan, now)
        kind = plan.kind
        if kind == "weighted":
            rk = plan.ranking
            if rk:
                rp = rk[bisect_right(plan.cum, _random() * plan.total)]
                if allowed is None or rp.region in allowed:
                    cap = plan.max_ifpb
                    if cap is None or rp.in_flight < len(rp.view) * cap:
                        b = rp.choose(now, client_key, exclude)
                        if b is not None:
                            return Decision(rp.region, b, plan, (now, allowed, client_latlon))
            order = self._weighted_order(plan, allowed)
        elif kind == "geo" and client_latlon is not None:
            order = plan.geo.get(client_latlon) or self._geo_order(plan, client_latlon)
        else:
            order = plan.ranking
        cap = plan.max_ifpb
        for rp in order:
            if allowed is not None and rp.region not in allowed:
                continue
            if cap is not None and rp.in_flight >= len(rp.view) * cap:
                continue
            b = rp.choose(now, client_key, exclude)
            if b is not None:
                return Decision(rp.region, b, plan, (now, allowed, client_latlon))
        return self._last_resort(plan, order, allowed, client_key, client_latlon,
                                 exclude, now, jurisdiction)

    # -- slow paths -------------------------------------------------------------
    def _last_resort(self, plan: Plan, order: list[RegionPool], allowed: frozenset[str] | None,
                     key: bytes | None, latlon: tuple[float, float] | None,
                     exclude: set[str] | None, now: float, jurisdiction: str | None) -> Decision:
        why = (now, allowed, latlon)
        permitted = [rp for rp in order if allowed is None or rp.region in allowed]
        # Every permitted region saturated: overload the best one rather than fail.
        for rp in permitted:
            b = rp.choose(now, key, exclude)
            if b is not None:
                return _Spill(rp.region, b, plan, why)
        if permitted and exclude:
            reason = "no untried healthy backend left"
        elif allowed is not None:
            reason = f"no healthy region within jurisdiction {jurisdiction or 'of the client'}"
        else:
            reason = "no healthy region"
        return NoRegion(plan, why, reason)

    def _weighted_order(self, plan: Plan, allowed: frozenset[str] | None) -> list[RegionPool]:
        """Weighted random order without replacement over allowed regions."""
        weights = plan.policy.weights or {}
        pool = [(rp, weights.get(rp.region, 0.0)) for rp in plan.ranking
                if allowed is None or rp.region in allowed]
        order = []
        while pool:
            total = sum(w for _, w in pool)
            r = _random() * total
            for i, (rp, w) in enumerate(pool):
                r -= w
                if r < 0 or i == len(pool) - 1:
                    order.append(rp)
                    del pool[i]
                    break
        return order

    def _geo_order(self, plan: Plan, latlon: tuple[float, float]) -> list[RegionPool]:
        view = self.view
        if len(plan.geo) >= _GEO_CACHE_MAX:
            plan.geo.clear()
        order = sorted(plan.ranking, key=lambda rp: (view.distance_km(latlon, rp.region),
                                                     rp.region))
        plan.geo[latlon] = order
        return order

    def _refresh(self, plan: Plan, now: float) -> None:
        cluster, view = self.cluster, self.view
        pools = cluster.pools.get(plan.pool_name, {})
        pol = plan.policy
        kind = plan.kind
        if kind == "failover":
            cands = list(pol.order or ())
        elif kind == "weighted":
            cands = [r for r, w in (pol.weights or {}).items() if w > 0]
        else:
            cands = list(pol.regions or pools)
        scores: dict[str, float | str] = {}
        ranked: list[tuple[float, int, RegionPool]] = []
        for pos, region in enumerate(cands):
            rp = pools.get(region)
            if rp is None:
                scores[region] = "absent"
                continue
            if not rp.available:
                scores[region] = "down"
                continue
            if not view.remote_ok(region, plan.pool_name):
                scores[region] = "remote-down"
                continue
            if kind == "failover":
                score = key = float(pos)
            elif kind == "weighted":
                score = key = float((pol.weights or {})[region])
            else:
                score, key = self._latency_score(rp, plan.bias)
            scores[region] = round(score, 1)
            ranked.append((key, pos, rp))
        if kind == "latency" or kind == "geo":
            ranked.sort(key=lambda t: (t[0], t[1]))
        plan.ranking = [rp for _, _, rp in ranked]
        plan.scores = scores
        if kind == "weighted":
            ws = pol.weights or {}
            plan.cum = []
            plan.total = 0.0
            for rp in plan.ranking:
                plan.total += ws[rp.region]
                plan.cum.append(plan.total)
        first = next(iter(pools.values()), None)
        plan.affinity = first.cfg.balance.affinity if first is not None else None
        plan.algorithm = first.cfg.balance.algorithm if first is not None else ""
        gen = cluster.gen + view.gen
        if gen != plan.gen:
            plan.geo.clear()     # availability may have changed
        plan.gen = gen
        plan.valid_until = now + self.refresh_s

    def _latency_score(self, rp: RegionPool, bias: float) -> tuple[float, float]:
        """(score shown, sort key) in ms; the key includes the local bias."""
        view = self.view
        rtt = view.latency_ms(view.local, rp.region)
        svc = rp.service_ms()
        if svc is None:
            svc = view.reported_service_ms(rp.region) or 0.0
        elif rp.region != view.local:
            svc = max(0.0, svc - rtt)
        score = rtt + svc
        local_ok = rp.region == view.local and not rp.panic
        return score, (score - bias if local_ok else score)

    # -- health for gossip and the status page ------------------------------------
    def region_health(self, region: str, pool: str | None = None) -> bool:
        """Local backend health (any pool, or the named one) and remote reports."""
        pools = ([self.cluster.pools.get(pool, {})] if pool is not None
                 else list(self.cluster.pools.values()))
        rps = [p[region] for p in pools if region in p]
        local = any(rp.available for rp in rps) if rps else True
        return local and self.view.remote_ok(region, pool)

    def service_report(self) -> dict[str, float]:
        """pool -> recent service time (ms) of this node's own region, for
        gossip to publish; peers feed it to RegionView.update_service_times."""
        out = {}
        for pname, regions in self.cluster.pools.items():
            rp = regions.get(self.view.local)
            svc = rp.service_ms() if rp is not None else None
            if svc is not None:
                out[pname] = round(svc, 2)
        return out
