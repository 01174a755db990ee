"""Frozen config models for pools, backends, health and region policy.

Everything here is validated once at load and never mutated: the compiled
`Cluster` and route `Plan`s read these objects, the hot path never does.
Unknown keys are errors (extra='forbid') so a typo names its key path.
"""
from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_REGION_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_HOST_RE = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,62}))*\.?$")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def split_address(address: str) -> tuple[str, int]:
    """'host:port' or '[v6]:port' -> (host, port); raises ValueError."""
    if address.startswith("["):
        host, sep, port_s = address[1:].partition("]:")
        if not sep:
            raise ValueError(f"bad address {address!r}: expected [v6]:port")
        ipaddress.IPv6Address(host)
    else:
        host, sep, port_s = address.rpartition(":")
        if not sep or not host:
            raise ValueError(f"bad address {address!r}: expected host:port")
        if ":" in host:
            raise ValueError(f"bad address {address!r}: write IPv6 as [addr]:port")
    if not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise ValueError(f"bad port in {address!r}")
    if not _is_ip(host) and not _HOST_RE.match(host):
        raise ValueError(f"bad host name in {address!r}")
    return host, int(port_s)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class BackendSpec(_Frozen):
    """One backend: a literal address, or a DNS name that expands to many."""

    address: str
    weight: Annotated[int, Field(ge=1, le=1000)] = 1
    zone: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, v: Any) -> Any:
        return {"address": v} if isinstance(v, str) else v

    @field_validator("address")
    @classmethod
    def _check_address(cls, v: str) -> str:
        split_address(v)
        return v

    @property
    def host(self) -> str:
        return split_address(self.address)[0]

    @property
    def port(self) -> int:
        return split_address(self.address)[1]

    @property
    def is_name(self) -> bool:
        """True when the host needs DNS resolution."""
        return not _is_ip(self.host)


class HealthCheckConfig(_Frozen):
    path: str = "/healthz"
    interval_s: Annotated[float, Field(gt=0, le=3600)] = 1.0
    timeout_s: Annotated[float, Field(gt=0, le=60)] = 0.5
    # 200, [200, 204], or "200-299"
    expect_status: int | list[int] | str = 200
    rise: Annotated[int, Field(ge=1, le=100)] = 2
    fall: Annotated[int, Field(ge=1, le=100)] = 2
    host_header: str | None = None

    @field_validator("path")
    @classmethod
    def _check_path(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("path must start with '/'")
        return v

    @field_validator("expect_status")
    @classmethod
    def _check_status(cls, v: int | list[int] | str) -> int | list[int] | str:
        _status_set(v)
        return v

    @model_validator(mode="after")
    def _timeout_below_interval(self) -> HealthCheckConfig:
        if self.timeout_s > self.interval_s:
            raise ValueError("timeout_s must not exceed interval_s")
        return self

    def expected(self) -> frozenset[int]:
        return _status_set(self.expect_status)


def _status_set(v: int | list[int] | str) -> frozenset[int]:
    if isinstance(v, int):
        codes = [v]
    elif isinstance(v, list):
        codes = list(v)
    else:
        lo, sep, hi = v.partition("-")
        if not sep or not lo.strip().isdigit() or not hi.strip().isdigit():
            raise ValueError(f"expect_status {v!r}: use 200, [200, 204] or '200-299'")
        codes = list(range(int(lo), int(hi) + 1))
    if not codes or any(not 100 <= c <= 599 for c in codes):
        raise ValueError(f"expect_status {v!r}: codes must be within 100-599")
    return frozenset(codes)


class OutlierConfig(_Frozen):
    """Passive ejection from live traffic (Envoy outlier detection, simplified)."""

    consecutive_5xx: Annotated[int, Field(ge=1)] = 5
    consecutive_connect_failures: Annotated[int, Field(ge=1)] = 3
    base_ejection_s: Annotated[float, Field(gt=0)] = 5.0
    max_ejection_s: Annotated[float, Field(gt=0)] = 300.0
    max_ejection_percent: Annotated[float, Field(ge=0, le=100)] = 50.0
    enabled: bool = True

    @model_validator(mode="after")
    def _order(self) -> OutlierConfig:
        if self.max_ejection_s < self.base_ejection_s:
            raise ValueError("max_ejection_s must be >= base_ejection_s")
        return self


class SlowStartConfig(_Frozen):
    """Ramp a returning backend's share up over `duration_s` (Envoy's formula:
    factor = max(min_weight_percent/100, (elapsed/duration) ** (1/aggression)))."""

    duration_s: Annotated[float, Field(ge=0)] = 30.0
    min_weight_percent: Annotated[float, Field(gt=0, le=100)] = 10.0
    aggression: Annotated[float, Field(gt=0)] = 1.0


class PanicThreshold(_Frozen):
    """Below this share of healthy backends a region pool spreads load over all
    of its backends instead of crushing the few healthy ones. Zero healthy
    still means the region is down (traffic fails over to another region)."""

    healthy_percent: Annotated[float, Field(ge=0, le=100)] = 50.0


class AffinityConfig(_Frozen):
    """Exactly one source for the consistent-hash key."""

    cookie: str | None = None
    header: str | None = None
    client_ip: bool = False

    @model_validator(mode="after")
    def _exactly_one(self) -> AffinityConfig:
        n = (self.cookie is not None) + (self.header is not None) + self.client_ip
        if n != 1:
            raise ValueError("affinity needs exactly one of cookie, header, client_ip")
        return self


Algorithm = Literal["p2c_ewma", "round_robin", "least_inflight", "weighted", "hash"]


class BalanceConfig(_Frozen):
    algorithm: Algorithm = "p2c_ewma"
    affinity: AffinityConfig | None = None
    hash_method: Literal["maglev", "rendezvous"] = "maglev"
    ewma_decay_s: Annotated[float, Field(gt=0)] = 10.0
    # Cost assumed for a backend with no sample yet: 0 would flood a new one.
    initial_latency_ms: Annotated[float, Field(gt=0)] = 30.0
    # Connect errors and timeouts count as this latency (peak-sensitive).
    failure_penalty_ms: Annotated[float, Field(ge=0)] = 1000.0

    @model_validator(mode="after")
    def _hash_needs_affinity(self) -> BalanceConfig:
        if self.algorithm == "hash" and self.affinity is None:
            raise ValueError("algorithm 'hash' needs an affinity source")
        return self


class PoolConfig(_Frozen):
    """A named service: its backends per region and how to balance them."""

    regions: dict[str, list[BackendSpec]]
    balance: BalanceConfig = BalanceConfig()
    health_check: HealthCheckConfig | None = None   # active checks only when configured
    outlier: OutlierConfig = OutlierConfig()
    slow_start: SlowStartConfig = SlowStartConfig()
    panic: PanicThreshold = PanicThreshold()

    @field_validator("regions")
    @classmethod
    def _check_regions(cls, v: dict[str, list[BackendSpec]]) -> dict[str, list[BackendSpec]]:
        if not v:
            raise ValueError("a pool needs at least one region")
        for name, backends in v.items():
            check_region_name(name)
            # An empty list is allowed: a region being built out, or emptied to
            # drain it; it is simply never chosen (requests get a clear 503).
            seen = [b.address for b in backends]
            if len(set(seen)) != len(seen):
                raise ValueError(f"region {name!r} lists a backend twice")
        return v


class RegionPolicy(_Frozen):
    """How a route chooses the region (the backend is the pool's business)."""

    policy: Literal["latency", "geo", "weighted", "failover"] = "latency"
    order: list[str] | None = None          # failover: tried in this order
    weights: dict[str, float] | None = None  # weighted: share per region
    regions: list[str] | None = None        # latency/geo: candidates (None = the pool's)
    local_bias_ms: Annotated[float, Field(ge=0)] = 20.0
    # Spill to the next region when a region has this many requests in flight
    # per healthy backend (None = never spill for load).
    max_inflight_per_backend: Annotated[int, Field(ge=1)] | None = 100

    @model_validator(mode="after")
    def _policy_fields(self) -> RegionPolicy:
        if self.policy == "failover" and not self.order:
            raise ValueError("policy 'failover' needs 'order'")
        if self.policy == "weighted":
            if not self.weights or not any(w > 0 for w in self.weights.values()):
                raise ValueError("policy 'weighted' needs 'weights' with a positive share")
            if any(w < 0 for w in self.weights.values()):
                raise ValueError("weights must be >= 0")
        for names in (self.order or [], self.weights or {}, self.regions or []):
            for name in names:
                check_region_name(name)
        return self


class RegionInfo(_Frozen):
    """One entry of config/regions.yaml."""

    name: str
    lat: Annotated[float, Field(ge=-90, le=90)]
    lon: Annotated[float, Field(ge=-180, le=180)]
    area: str


def check_region_name(name: str) -> str:
    if not _REGION_RE.match(name):
        raise ValueError(f"bad region name {name!r}")
    return name
