"""Freeze, then swap: a validated Config compiled once into what the hot path reads.

A request reads `node.snapshot` once; a reload builds a whole new Snapshot and
swaps it in one assignment. Everything here is immutable after `compile`.
State that must survive a reload (pools, EWMAs, buckets) is keyed by stable
ids (backend "region/host:port", route name), not by these objects.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from functools import lru_cache

from .config import Config


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    prefix: str
    methods: frozenset[str]
    countries: frozenset[str]
    continents: frozenset[str]
    max_body: int
    write: bool | None
    catch_all: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "catch_all", self.prefix == "/" and not (
            self.methods or self.countries or self.continents))

    def matches(self, path: str, method: str, country: str | None, continent: str | None) -> bool:
        p = self.prefix
        if p != "/" and not (path == p or (path.startswith(p) and (p[-1] == "/" or path[len(p)] in "/?"))):
            return False
        if self.methods and method not in self.methods:
            return False
        if self.countries and country not in self.countries:
            return False
        if self.continents and continent not in self.continents:
            return False
        return True


class Router:
    """Host (exact, then *.suffix, then any) -> routes, longest prefix first."""

    def __init__(self, routes: list[Route], hosts: dict[str, list[str]]) -> None:
        self.exact: dict[str, tuple[Route, ...]] = {}
        self.wild: list[tuple[str, tuple[Route, ...]]] = []
        anyhost = [r for r in routes if not hosts[r.name]]
        keyed: dict[str, list[Route]] = {}
        for r in routes:
            for h in hosts[r.name]:
                keyed.setdefault(h, []).append(r)

        def order(rs: list[Route]) -> tuple[Route, ...]:
            return tuple(sorted(rs, key=lambda r: -len(r.prefix)))

        for h, rs in keyed.items():
            if h.startswith("*."):
                self.wild.append((h[1:], order(rs + anyhost)))
            else:
                self.exact[h] = order(rs + anyhost)
        self.wild.sort(key=lambda kv: -len(kv[0]))
        self.anyhost = order(anyhost)
        # The route every request matches, when there is one: no host keys and
        # a catch-all first among the rest (the single-route config). Node.dispatch
        # then skips match().
        self.every: Route | None = (self.anyhost[0] if not self.exact and not self.wild and self.anyhost
                                    and self.anyhost[0].catch_all else None)

    def candidates(self, host: str) -> tuple[Route, ...]:
        rs = self.exact.get(host)
        if rs is not None:
            return rs
        for suffix, wrs in self.wild:
            if host.endswith(suffix):
                return wrs
        return self.anyhost

    def match(self, host: str, path: str, method: str, country: str | None,
              continent: str | None) -> Route | None:
        rs = self.exact.get(host)
        for r in (rs if rs is not None else self.candidates(host)):
            # "/" with no method or geo condition (the usual catch-all) matches
            # without a call; anything else asks the route.
            if r.catch_all or r.matches(path, method, country, continent):
                return r
        return None


@dataclass(frozen=True)
class Snapshot:
    config: Config
    router: Router
    trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    version: int = 0
    extras: dict[str, object] = field(default_factory=dict)
    # config.upstream.response_timeout_s, read once per request: a plain
    # attribute here (a pydantic model's attribute read costs ~3x a plain one)
    response_timeout_s: float = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "response_timeout_s", self.config.upstream.response_timeout_s)

    def is_trusted_proxy(self, ip: str) -> bool:
        if not self.trusted:
            return False
        return _in_nets(ip, self.trusted)


@lru_cache(maxsize=4096)
def _addr(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(ip)
    except ValueError:
        return None


def _in_nets(ip: str, nets: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> bool:
    a = _addr(ip)
    if a is None:
        return False
    return any(a in n for n in nets if n.version == a.version)


def compile_snapshot(config: Config, version: int = 0) -> Snapshot:
    # Pools and backends are not here: their state lives for the process in
    # proxy.selection (keyed by backend id), re-applied from config on reload.
    routes: list[Route] = []
    hosts: dict[str, list[str]] = {}
    for rc in config.routes:
        routes.append(Route(
            name=rc.name, prefix=rc.match.path_prefix, methods=frozenset(rc.match.methods),
            countries=frozenset(c.upper() for c in rc.match.countries),
            continents=frozenset(c.upper() for c in rc.match.continents),
            max_body=rc.max_body_bytes if rc.max_body_bytes is not None else config.limits.max_body_bytes,
            write=rc.write))
        hosts[rc.name] = list(rc.match.hosts)
    trusted = tuple(ipaddress.ip_network(n, strict=False) for n in config.trusted_proxies)
    return Snapshot(config=config, router=Router(routes, hosts), trusted=trusted, version=version)
