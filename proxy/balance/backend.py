"""BackendState: everything NovaEdge knows about one backend, for the process.

Keyed by (pool, "region/host:port") in the `Cluster`, so a config reload that
keeps a backend keeps its latency estimate, in-flight count, ejection and
active-health state (Pingora carries health over the same way).

The latency estimate is a peak-EWMA (Finagle / linkerd / tower): a sample
above the estimate replaces it at once, a sample below is blended in with a
weight that depends on the time since the last sample (time constant tau), and
reads decay it toward zero so an idle slow backend is probed again after a while
(tower's `RttEstimate::decay`).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

from .config import format_address

if TYPE_CHECKING:
    from .pool import RegionPool

# Outcomes reported by the data plane in on_done().
OK = "ok"
HTTP_5XX = "5xx"
CONNECT_ERROR = "connect_error"
TIMEOUT = "timeout"
OUTCOMES = frozenset((OK, HTTP_5XX, CONNECT_ERROR, TIMEOUT))


class BackendState:
    __slots__ = (
        # identity (fixed for the object's life)
        "id", "pool_name", "region", "host", "port", "address", "origin",
        # from config (refreshed on reload)
        "weight", "zone", "pool",
        # live load, read on every pick
        "ewma_ms", "stamp", "samples", "in_flight",
        # health: `up` is the one flag the hot path reads
        "up", "active_ok", "ejected_until", "times_ejected", "last_return",
        "consecutive_5xx", "consecutive_conn",
        "slow_start_at", "slow_until",
        # consistent-hash seed (rendezvous) computed once
        "hash_seed",
    )

    def __init__(self, pool_name: str, region: str, host: str, port: int,
                 weight: int = 1, zone: str | None = None, origin: str | None = None,
                 initial_latency_ms: float = 30.0) -> None:
        self.address = format_address(host, port)
        self.id = f"{region}/{self.address}"
        self.pool_name = pool_name
        self.region = region
        self.host = host
        self.port = port
        self.origin = origin            # DNS name this address came from, if any
        self.weight = weight
        self.zone = zone
        self.pool: RegionPool | None = None
        self.ewma_ms = initial_latency_ms
        self.stamp = 0.0                # time of the last sample (or creation)
        self.samples = 0
        self.in_flight = 0
        self.up = True
        self.active_ok = True           # optimistic until the first failed checks
        self.ejected_until = 0.0        # 0: not ejected
        self.times_ejected = 0
        self.last_return = -math.inf    # when the last ejection ended
        self.consecutive_5xx = 0
        self.consecutive_conn = 0
        self.slow_start_at = 0.0
        self.slow_until = 0.0           # slow start active while now < slow_until
        self.hash_seed = 0

    def __repr__(self) -> str:
        return (f"BackendState({self.pool_name}:{self.id} up={self.up} "
                f"ewma={self.ewma_ms:.1f}ms inflight={self.in_flight})")

    # -- latency estimate -------------------------------------------------
    def observe(self, latency_ms: float, now: float, tau_s: float) -> None:
        """Blend one latency sample in (peak-sensitive)."""
        if latency_ms >= self.ewma_ms or self.samples == 0:
            self.ewma_ms = latency_ms
        else:
            w = math.exp((self.stamp - now) / tau_s) if now > self.stamp else 1.0
            self.ewma_ms = self.ewma_ms * w + latency_ms * (1.0 - w)
        self.stamp = now
        self.samples += 1

    def cost_ms(self, now: float, tau_s: float) -> float:
        """Decayed estimate times (in-flight + 1): the p2c score, lower wins.
        The pool inlines this on the hot path; this is the readable version."""
        age = now - self.stamp
        est = self.ewma_ms * math.exp(-age / tau_s) if age > 0 else self.ewma_ms
        return est * (self.in_flight + 1)

    # -- health -------------------------------------------------------------
    @property
    def ejected(self) -> bool:
        return self.ejected_until > 0.0

    def refresh_up(self) -> bool:
        """Recompute `up`; True when it changed."""
        up = self.active_ok and self.ejected_until == 0.0
        if up != self.up:
            self.up = up
            return True
        return False

    def slow_factor(self, now: float, duration_s: float, min_share: float,
                    aggression: float) -> float:
        """Share of its normal load this backend should get now (0..1]."""
        if now >= self.slow_until or duration_s <= 0:
            return 1.0
        frac = (now - self.slow_start_at) / duration_s
        if frac <= 0:
            return min_share
        f = frac if aggression == 1.0 else frac ** (1.0 / aggression)
        return f if f > min_share else min_share
