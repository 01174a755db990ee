"""Protection config: frozen pydantic models, validated once per reload.

Everything here is data; proxy.protect.engine compiles it. Error messages
name the offending value so the config loader's key-path messages read well,
e.g. `protection.acl.deny.2: Value error, '10.0.0.1/8' has host bits set;
did you mean '10.0.0.0/8'?`.
"""
from __future__ import annotations

import ipaddress
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

KeyKind = Literal["ip", "prefix", "country", "asn", "header", "route"]
DetectorKey = Literal["ip", "prefix", "country", "route"]

# RFC 8941 sf-string allows more, but rule names also appear in metrics
# labels, verdicts and log lines: keep them boring.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
# RFC 9110 token, lower-cased (we match against lower-cased header names).
_HEADER_RE = re.compile(r"^[a-z0-9!#$%&'*+.^_`|~-]+$")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def check_cidr(value: str) -> str:
    """Validate one CIDR (or bare address); return its canonical text."""
    if not isinstance(value, str):
        raise ValueError(f"expected a CIDR string, got {value!r}")
    try:
        net = ipaddress.ip_network(value.strip(), strict=True)
    except ValueError as e:
        if "host bits set" in str(e):
            fixed = ipaddress.ip_network(value.strip(), strict=False)
            raise ValueError(f"{value!r} has host bits set; did you mean '{fixed}'?") from None
        raise ValueError(f"{value!r} is not an IPv4/IPv6 address or CIDR") from None
    return str(net)


class AclConfig(_Frozen):
    """CIDR allow/deny lists. Deny wins; an empty allow list allows all."""

    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()

    @field_validator("allow", "deny", mode="before")
    @classmethod
    def _cidrs(cls, v: object) -> object:
        if v is None:
            return ()
        if isinstance(v, str):
            raise ValueError("expected a list of CIDRs, got a single string")
        return v

    @field_validator("allow", "deny")
    @classmethod
    def _each(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(check_cidr(c) for c in v)


# The lead embeds this one in the route config (`routes[].acl`).
RouteAcl = AclConfig


class RateLimitRule(_Frozen):
    name: str
    key: KeyKind
    prefix_v4: int = Field(default=24, ge=0, le=32)
    prefix_v6: int = Field(default=64, ge=0, le=128)
    header: str | None = None
    rate: float = Field(gt=0, le=1e7, description="requests per second, node-wide")
    burst: int = Field(ge=1, le=10_000_000)
    shadow: bool = False
    routes: tuple[str, ...] | None = None   # None = every route

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError(f"rule name {v!r} must match {_NAME_RE.pattern}")
        return v

    @field_validator("header")
    @classmethod
    def _header(cls, v: str | None) -> str | None:
        if v is None:
            return v
        v = v.strip().lower()
        if not _HEADER_RE.match(v):
            raise ValueError(f"{v!r} is not a valid header name")
        return v

    @model_validator(mode="after")
    def _header_iff_key(self) -> RateLimitRule:
        if self.key == "header" and not self.header:
            raise ValueError("key 'header' needs 'header: <name>' (e.g. x-api-key)")
        if self.key != "header" and self.header is not None:
            raise ValueError(f"'header' is only meaningful with key 'header', not {self.key!r}")
        return self


class MitigationConfig(_Frozen):
    action: Literal["limit", "block"] = "limit"
    ttl_s: float = Field(default=60.0, gt=0, le=86_400)
    # Node-wide req/s allowed for a mitigated key; None = the key's own
    # baseline threshold (mean + k*sigma) at detection time.
    limit_rate: float | None = Field(default=None, gt=0)
    escalate_after_s: float = Field(default=10.0, gt=0)
    max_level: int = Field(default=3, ge=1, le=10)


class GlobalConfig(_Frozen):
    enabled: bool = True
    k: float = Field(default=3.0, gt=0)
    min_rate: float = Field(default=100.0, ge=0, description="node req/s below which nothing fires")
    strict_per_ip_rate: float = Field(default=10.0, gt=0)
    strict_per_ip_burst: int = Field(default=20, ge=1)
    ttl_s: float = Field(default=30.0, gt=0)


class DetectorConfig(_Frozen):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    enabled: bool = False
    keys: tuple[DetectorKey, ...] = ("ip", "prefix", "country", "route")
    k: float = Field(default=3.0, gt=0)
    alpha: float = Field(default=0.1, gt=0, lt=1, description="EWMA weight of the newest second")
    # Three EWMA time constants (1/alpha) at the default alpha: earlier, the
    # variance estimate is still low and false alarms cluster there.
    warmup_s: int = Field(default=30, ge=1)
    min_rate: float = Field(default=20.0, ge=0, description="per-key node req/s floor")
    # Acting needs the rate above mean + k*sigma for confirm_s consecutive
    # seconds, or above mean + severe_k*sigma once. Measured on Poisson
    # traffic (40 keys at 5-50 req/s, 20 runs of 300 s = 216,000 warm
    # key-seconds per load shape: steady, +0.7%/s compounded, +1%/s, +3%/s):
    # one second above 3 sigma: ~0.16-0.6% of key-seconds; confirm_s=2:
    # 4-11 false alarms per shape (~1 every 30 s over 1000 busy keys);
    # confirm_s=3: none. A 10x step clears 6 sigma for any mean >= 1 req/s,
    # so it is acted on at the first tick after it.
    confirm_s: int = Field(default=3, ge=1, description="consecutive anomalous seconds before acting")
    severe_k: float = Field(default=6.0, gt=0, description="one second above this many sigma acts at once")
    # Weight (fraction of alpha) with which anomalous seconds move the mean;
    # they never move the variance. 0: an attack never becomes the baseline,
    # so a mitigation lasts as long as the attack. 0.1 at alpha 0.1: a
    # lasting legitimate 10x shift is learned (and freed) in about 4 minutes.
    anomaly_learn: float = Field(default=0.0, ge=0, le=1)
    prefix_v4: int = Field(default=24, ge=0, le=32)
    prefix_v6: int = Field(default=64, ge=0, le=128)
    max_keys: int = Field(default=20_000, ge=16, description="tracked keys per kind (bounded)")
    mitigation: MitigationConfig = MitigationConfig()
    global_: GlobalConfig = Field(default=GlobalConfig(), alias="global")
    shadow: bool = False


class ProtectionConfig(_Frozen):
    acl: AclConfig = AclConfig()
    # Per-listener ACLs (by listener name) replace `acl` for that listener.
    listeners: dict[str, AclConfig] = Field(default_factory=dict)
    rate_limits: tuple[RateLimitRule, ...] = ()
    detector: DetectorConfig = DetectorConfig()
    # Slots of the node-wide GCRA table (16 bytes each). Fixed when the
    # supervisor allocates shared memory: a change needs a restart.
    table_size: int = Field(default=1 << 20, ge=1024, le=1 << 26)

    @model_validator(mode="after")
    def _unique_names(self) -> ProtectionConfig:
        seen: set[str] = set()
        for r in self.rate_limits:
            if r.name in seen:
                raise ValueError(f"duplicate rate limit name {r.name!r}")
            seen.add(r.name)
        return self
