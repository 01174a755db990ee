"""The one YAML file: parsed and validated into frozen objects.

Every error names its key path and the offending value, e.g.
``routes[1].match.path_prefix: must start with '/' (got 'api')``. Loading
never half-applies: either a whole new `Config` comes back or a
`ConfigError` listing every problem at once, and the caller keeps the last
good config.
"""
from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .balance.config import PoolConfig, RegionPolicy
from .gossip.config import GossipConfig
from .protect.config import AclConfig, ProtectionConfig
from .observe.config import AccessLogConfig, AdminConfig, MetricsConfig

REPO_CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def parse_hostport(value: str, default_port: int | None = None) -> tuple[str, int]:
    """'127.0.0.1:8080', '[::1]:8080', 'name:80' -> (host, port)."""
    v = value.strip()
    if v.startswith("["):
        host, sep, rest = v[1:].partition("]")
        if not sep:
            raise ValueError(f"unterminated '[' in {value!r}")
        port_s = rest[1:] if rest.startswith(":") else ""
    else:
        host, sep, port_s = v.rpartition(":")
        if not sep:
            host, port_s = v, ""
        elif ":" in host:
            raise ValueError(f"IPv6 addresses need brackets: {value!r}")
    if not port_s:
        if default_port is None:
            raise ValueError(f"missing port in {value!r} (expected host:port)")
        return host, default_port
    if not port_s.isdigit() or not 0 <= int(port_s) < 65536:   # 0: any free port
        raise ValueError(f"bad port in {value!r}")
    if not host:
        raise ValueError(f"missing host in {value!r}")
    return host, int(port_s)


def _cidrs(values: list[str]) -> list[str]:
    for v in values:
        try:
            ipaddress.ip_network(v, strict=False)
        except ValueError:
            raise ValueError(f"not an IP network: {v!r}") from None
    return values


class NodeConfig(Frozen):
    name: str = "edge-1"
    region: str = "us-east-1"


class Limits(Frozen):
    max_request_line: int = Field(8192, ge=64)        # URI and request line: 414 beyond
    max_header_bytes: int = Field(32768, ge=256)      # whole header block: 431 beyond
    max_headers: int = Field(100, ge=4)               # header count: 431 beyond
    max_body_bytes: int = Field(1 << 30, ge=0)        # default per route: 413 beyond
    header_timeout_s: float = Field(10.0, gt=0)       # slowloris: whole head must arrive in time
    body_idle_timeout_s: float = Field(30.0, gt=0)    # no body byte for this long: 408
    keepalive_timeout_s: float = Field(60.0, gt=0)    # idle client connection
    max_connections: int = Field(10000, ge=1)         # per worker
    drain_timeout_s: float = Field(30.0, ge=0)        # SIGTERM: finish in-flight for this long


class UpstreamConfig(Frozen):
    connect_timeout_s: float = Field(3.0, gt=0)
    response_timeout_s: float = Field(30.0, gt=0)     # request sent -> response head: 504
    idle_timeout_s: float = Field(60.0, gt=0)         # pooled connection unused this long: closed
    max_connections_per_backend: int = Field(1024, ge=1)
    max_idle_per_backend: int = Field(256, ge=0)
    retries: int = Field(2, ge=0, le=10)              # only requests that are safe to retry


class TlsCert(Frozen):
    cert: str
    key: str
    server_names: list[str] = []                      # empty: the default certificate


class ListenerConfig(Frozen):
    bind: str
    name: str | None = None
    proxy_protocol: bool = False
    proxy_protocol_from: list[str] = ["127.0.0.0/8", "::1/128"]
    tls: list[TlsCert] = []     # listener ACLs: protection.listeners.<name>

    @field_validator("bind")
    @classmethod
    def _bind(cls, v: str) -> str:
        parse_hostport(v)
        return v

    @field_validator("proxy_protocol_from")
    @classmethod
    def _nets(cls, v: list[str]) -> list[str]:
        return _cidrs(v)


Method = Literal["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"]


class RouteMatch(Frozen):
    hosts: list[str] = []                             # empty: any host; "*.example.com" allowed
    path_prefix: str = "/"
    methods: list[Method] = []                        # empty: any
    countries: list[str] = []                         # ISO 3166 alpha-2; empty: any
    continents: list[str] = []                        # AF AN AS EU NA OC SA; empty: any

    @field_validator("path_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError(f"must start with '/' (got {v!r})")
        return v

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, v: list[str]) -> list[str]:
        return [h.lower() for h in v]


class RouteConfig(Frozen):
    name: str
    match: RouteMatch = RouteMatch()
    pool: str
    # "latency" | "geo" | "weighted" | "failover", or the full form:
    # {policy: failover, order: [...]} / {policy: weighted, weights: {...}} / {policy: latency, local_bias_ms: 20}
    policy: RegionPolicy = RegionPolicy()
    regions: list[str] = []                           # candidate regions; empty: all of the pool's
    max_body_bytes: int | None = Field(None, ge=0)
    write: bool | None = None                         # None: writes are the non-idempotent methods
    retry_non_idempotent: bool = False                # only with an Idempotency-Key header
    acl: AclConfig | None = None                      # CIDR allow/deny for this route

    @field_validator("policy", mode="before")
    @classmethod
    def _policy_shorthand(cls, v: Any) -> Any:
        return {"policy": v} if isinstance(v, str) else v


class GeoHeaders(Frozen):
    """Headers sent to the backend; a client's own copies are removed first."""
    country: str | None = "X-Client-Country"
    continent: str | None = "X-Client-Continent"
    region: str | None = "X-Edge-Region"      # the region of the edge that took the request
    asn: str | None = "X-Client-ASN"


class GeoIPConfig(Frozen):
    city: str | None = None                   # City or Country database (.mmdb)
    asn: str | None = None
    anonymous: str | None = None
    cache_size: int = Field(65536, ge=0)
    reload_interval_s: float = Field(1.0, gt=0)
    headers: GeoHeaders = GeoHeaders()
    unknown_country: str | None = None        # what unknown clients count as; None: unknown
    deny_countries: list[str] = []
    deny_status: Literal[403, 451] = 451

    @field_validator("city", "asn", "anonymous")
    @classmethod
    def _exists(cls, v: str | None) -> str | None:
        if v is not None and not Path(v).is_file():
            raise ValueError(f"no such database file: {v!r}")
        return v

    @field_validator("deny_countries")
    @classmethod
    def _upper(cls, v: list[str]) -> list[str]:
        return [c.upper() for c in v]


class Jurisdiction(Frozen):
    """Data residency: clients from these countries are served only in these regions."""
    countries: list[str]
    regions: list[str]

    @field_validator("countries")
    @classmethod
    def _cc(cls, v: list[str]) -> list[str]:
        for c in v:
            if len(c) != 2 or not c.isalpha():
                raise ValueError(f"not an ISO 3166 alpha-2 country code: {c!r}")
        return [c.upper() for c in v]


class Config(Frozen):
    node: NodeConfig = NodeConfig()
    workers: int | Literal["auto"] = 1
    listeners: list[ListenerConfig] = [ListenerConfig(bind="127.0.0.1:8080")]
    trusted_proxies: list[str] = []                   # X-Forwarded-For is believed only from these
    limits: Limits = Limits()
    upstream: UpstreamConfig = UpstreamConfig()
    pools: dict[str, PoolConfig] = {}
    routes: list[RouteConfig] = []
    # Seed round-trip times between regions, in ms (gossip replaces them with
    # measurements); pairs not given are estimated from distance.
    latency_matrix: dict[str, dict[str, float]] = {}
    debug_headers: bool = False                       # X-NovaEdge-Decision on every response
    geoip: GeoIPConfig = GeoIPConfig()
    jurisdictions: dict[str, Jurisdiction] = {}
    admin: AdminConfig = AdminConfig()
    access_log: AccessLogConfig = AccessLogConfig()
    metrics: MetricsConfig = MetricsConfig()
    gossip: GossipConfig = GossipConfig()
    protection: ProtectionConfig = ProtectionConfig()

    @model_validator(mode="before")
    @classmethod
    def _gossip_identity(cls, data: Any) -> Any:
        # gossip.region and gossip.node_name default to this node's own.
        if isinstance(data, dict) and isinstance(data.get("gossip"), dict):
            node = data.get("node") if isinstance(data.get("node"), dict) else {}
            g = dict(data["gossip"])
            g.setdefault("region", node.get("region", "us-east-1"))
            g.setdefault("node_name", node.get("name", "edge-1"))
            data = {**data, "gossip": g}
        return data

    @field_validator("trusted_proxies")
    @classmethod
    def _trusted(cls, v: list[str]) -> list[str]:
        return _cidrs(v)

    @field_validator("workers")
    @classmethod
    def _workers(cls, v: int | str) -> int | str:
        if isinstance(v, int) and not 1 <= v <= 256:
            raise ValueError("must be between 1 and 256, or 'auto'")
        return v

    def worker_count(self) -> int:
        return (os.cpu_count() or 1) if self.workers == "auto" else int(self.workers)


def _cross_refs(data: dict[str, Any]) -> list[str]:
    """Checks between sections, on the raw data so they run even when some
    fields are invalid: one `check` run reports every problem."""
    def d(v: Any) -> dict[str, Any]:
        return v if isinstance(v, dict) else {}

    def lst(v: Any) -> list[Any]:
        return v if isinstance(v, list) else []

    catalogue = region_catalogue()
    errors: list[str] = []
    region = d(data.get("node")).get("region", "us-east-1")
    if region not in catalogue:
        errors.append(f"node.region: unknown region {region!r} (known: {', '.join(catalogue)})")
    pools = d(data.get("pools"))
    for pname, pool in pools.items():
        for rname in d(d(pool).get("regions")):
            if rname not in catalogue:
                errors.append(f"pools.{pname}.regions.{rname}: unknown region {rname!r}")
    names: set[str] = set()
    for i, r in enumerate(lst(data.get("routes"))):
        r = d(r)
        name = r.get("name")
        if name in names:
            errors.append(f"routes[{i}].name: duplicate route name {name!r}")
        names.add(name)  # type: ignore[arg-type]
        pool = r.get("pool")
        if pool is None:
            continue
        if pool not in pools:
            errors.append(f"routes[{i}].pool: no pool named {pool!r} "
                          f"(pools: {', '.join(pools) or 'none'})")
            continue
        pool_regions = d(d(pools[pool]).get("regions"))
        for j, reg in enumerate(lst(r.get("regions"))):
            if reg not in pool_regions:
                errors.append(f"routes[{i}].regions[{j}]: pool {pool!r} has no region {reg!r}")
    seen: dict[str, str] = {}
    for jname, j in d(data.get("jurisdictions")).items():
        for k, reg in enumerate(lst(d(j).get("regions"))):
            if reg not in catalogue:
                errors.append(f"jurisdictions.{jname}.regions[{k}]: unknown region {reg!r}")
        for k, cc in enumerate(lst(d(j).get("countries"))):
            cc = str(cc).upper()
            if cc in seen:
                errors.append(f"jurisdictions.{jname}.countries[{k}]: {cc} is already "
                              f"in jurisdiction {seen[cc]!r}")
            seen[cc] = jname
    binds = [d(li).get("bind") for li in lst(data.get("listeners"))]
    binds = [b for b in binds if isinstance(b, str)]
    if len(set(binds)) != len(binds):
        errors.append("listeners: two listeners bind the same address")
    return errors


class ConfigError(Exception):
    """Every problem found, one per line, each starting with its key path."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("function-after", "function-before", "union", "literal"):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _format(err: ValidationError) -> list[str]:
    problems: list[str] = []
    for e in err.errors(include_url=False):
        msg = e["msg"].removeprefix("Value error, ")
        loc = _loc(tuple(p for p in e["loc"] if not (isinstance(p, str) and "[" in p)))
        if "\n" in msg:  # cross-reference errors carry their own key paths
            problems.extend(msg.splitlines())
            continue
        if loc == "(top level)" and ":" in msg.split(" ")[0]:
            problems.append(msg)
            continue
        value = e.get("input")
        shown = "" if e["type"] == "missing" or isinstance(value, (dict, list)) \
            or repr(value) in msg else f" (got {value!r})"
        problems.append(f"{loc}: {msg}{shown}")
    return problems


def parse_config(data: Any) -> Config:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"(top level): expected a mapping, got {type(data).__name__}"])
    problems: list[str] = []
    config: Config | None = None
    try:
        config = Config.model_validate(data)
    except ValidationError as e:
        problems = _format(e)
    problems += _cross_refs(data)
    if problems or config is None:
        raise ConfigError(problems)
    return config


def load_config(path: str | os.PathLike[str]) -> Config:
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError([f"(file): cannot read {path}: {e.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        raise ConfigError([f"(yaml): {where}: {getattr(e, 'problem', e)}"]) from None
    return parse_config(data)


_CATALOGUE: dict[str, dict[str, Any]] | None = None


def region_catalogue() -> dict[str, dict[str, Any]]:
    """The 13 regions (config/regions.yaml): name -> {name, lat, lon, area}."""
    global _CATALOGUE
    if _CATALOGUE is None:
        _CATALOGUE = yaml.safe_load((REPO_CONFIG_DIR / "regions.yaml").read_text())["regions"]
    return _CATALOGUE
