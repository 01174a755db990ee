"""Region and backend selection, and backend health.

Pure cores (`Cluster`, `RegionPool`, `Selector`, `OutlierDetector`,
`RiseFall`, `DnsCache`) take explicit `now` values; the asyncio wrappers
(`HealthChecker`, `Resolver`) only do I/O and feed them.

Integration, in order of lifetime:
- process: `cluster = Cluster()`, `view = RegionView(local, load_catalogue(p),
  seed_matrix)`, `selector = Selector(cluster, view)`.
- reload: `cluster.apply({name: PoolConfig}, now)`; compile one
  `selector.plan(pool_name, RegionPolicy)` per route.
- request attempt: `d = selector.pick(plan, allowed, key, latlon, exclude, now)`;
  `d.backend is None` -> 503 with `d.reason`; else `on_start(d.backend)` and,
  when the attempt ends, `on_done(d.backend, latency_s, outcome, now)`.
"""
from .affinity import affinity_key
from .backend import CONNECT_ERROR, HTTP_5XX, OK, TIMEOUT, BackendState
from .cluster import Cluster, on_done, on_start
from .config import (AffinityConfig, BackendSpec, BalanceConfig, HealthCheckConfig,
                     OutlierConfig, PanicThreshold, PoolConfig, RegionInfo, RegionPolicy,
                     SlowStartConfig)
from .explain import explain
from .health import OutlierDetector, RiseFall
from .pool import RegionPool
from .region import RegionView, great_circle_km, load_catalogue
from .selector import Decision, NoRegion, Plan, Selector

__all__ = [
    "AffinityConfig", "BackendSpec", "BackendState", "BalanceConfig", "CONNECT_ERROR",
    "Cluster", "Decision", "HTTP_5XX", "HealthCheckConfig", "NoRegion", "OK",
    "OutlierConfig", "OutlierDetector", "PanicThreshold", "Plan", "PoolConfig",
    "RegionInfo", "RegionPolicy", "RegionPool", "RegionView", "RiseFall", "Selector",
    "SlowStartConfig", "TIMEOUT", "affinity_key", "explain", "great_circle_km",
    "load_catalogue", "on_done", "on_start",
]
