"""Compiled rate-limit rules: stable ids, key extraction, response headers.

A rule's seed is a hash of its definition (name, key kind and its
parameters, rate, burst) XOR the node's random salt; the GCRA table key of a
request is xxh3_64(key bytes, seed). A reload that keeps a rule unchanged
compiles the same seed, so its buckets carry over; a changed rule starts
fresh and its old slots simply expire. `shadow` and `routes` are not part of
the id: switching a rule from shadow to enforcing keeps its state.

The salt (random per node start, shared by all workers) keeps an attacker
who controls key bytes (an API-key header) from precomputing keys that land
in a victim's bucket.

Headers follow draft-ietf-httpapi-ratelimit-headers-11 (structured fields):
    RateLimit-Policy: "per-ip";q=100;w=1
    RateLimit: "per-ip";r=0;t=3
and Retry-After is never earlier than the end of the effective window t.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import xxhash

from proxy.protect.client import ClientState
from proxy.protect.config import RateLimitRule
from proxy.protect.ratelimit import EPS

_xxh = xxhash.xxh3_64_intdigest
_M64 = (1 << 64) - 1

K_IP, K_PREFIX, K_COUNTRY, K_ASN, K_HEADER, K_ROUTE = range(6)
_KINDS = {"ip": K_IP, "prefix": K_PREFIX, "country": K_COUNTRY, "asn": K_ASN,
          "header": K_HEADER, "route": K_ROUTE}
# Keys that cannot change within a connection: memoized on ClientState.
PER_CONNECTION = frozenset((K_IP, K_PREFIX, K_COUNTRY, K_ASN))


def policy_item(name: str, rate: float) -> str:
    """Quota in whole requests per whole seconds, as the draft requires."""
    if rate >= 1:
        return f'"{name}";q={int(rate)};w=1'
    w = math.ceil(1 / rate)
    return f'"{name}";q={max(1, int(rate * w))};w={w}'


class Rule:
    """One rate limit, compiled. Also used for the detector's dynamic limits."""

    __slots__ = ("name", "kind", "seed", "rate", "burst", "interval", "tau", "shadow",
                 "routes", "header", "p4", "p6", "per_conn", "policy",
                 "v_reject", "v_shadow", "route_keys", "plan")

    def __init__(self, name: str, kind: int, seed: int, rate: float, burst: int,
                 shadow: bool = False, routes: frozenset[str] | None = None,
                 header: bytes = b"", p4: int = 24, p6: int = 64) -> None:
        self.name = name
        self.kind = kind
        self.seed = seed
        self.rate = rate
        self.burst = burst
        self.interval = 1.0 / rate
        self.tau = burst * self.interval + EPS       # slack for float sums
        self.shadow = shadow
        self.routes = routes
        self.header = header
        self.p4 = p4
        self.p6 = p6
        self.per_conn = kind in PER_CONNECTION
        self.policy = policy_item(name, rate)
        self.v_reject = f"ratelimit:{name}:reject"
        self.v_shadow = f"ratelimit:{name}:shadow"
        self.route_keys: dict[str, int] = {}
        # What the engine's loop reads, in one tuple (see Protection.check).
        self.plan = (self.per_conn, kind == K_ROUTE, seed, self.interval, self.tau)

    def key_bytes(self, ctx: Any, client: ClientState) -> bytes | None:
        """The bytes this rule keys on, or None when the rule does not apply
        (no GeoIP answer, header absent, no route)."""
        kind = self.kind
        if kind == K_IP:
            return client.addr_bytes()
        if kind == K_PREFIX:
            return client.prefix_bytes(self.p4, self.p6)
        if kind == K_HEADER:
            return ctx.header(self.header)   # type: ignore[no-any-return]
        geo = client.geo
        if kind == K_COUNTRY:
            c = getattr(geo, "country", None) if geo is not None else None
            return c.encode() if c else None
        if kind == K_ASN:
            a = getattr(geo, "asn", None) if geo is not None else None
            return str(a).encode() if a else None
        route = ctx.route
        name = getattr(route, "name", None) if route is not None else None
        return name.encode() if name else None

    def key_hash(self, ctx: Any, client: ClientState) -> int | None:
        """Table key for this request; per-connection kinds hit the memo."""
        if self.per_conn:
            h = client.keys.get(self.seed)
            if h is None:
                b = self.key_bytes(ctx, client)
                if b is None:
                    return None
                h = client.keys[self.seed] = _xxh(b, self.seed) or 1   # 0: empty slot
            return h
        if self.kind == K_ROUTE:
            route = ctx.route
            name = route.name if route is not None else None
            if not name:
                return None
            h = self.route_keys.get(name)
            if h is None:
                h = self.route_keys[name] = _xxh(name.encode(), self.seed) or 1
            return h
        b = ctx.header(self.header)
        return None if b is None else _xxh(b, self.seed) or 1


def rule_seed(salt: int, *parts: object) -> int:
    return (_xxh("|".join(map(str, parts)).encode()) ^ salt) & _M64


def compile_rule(cfg: RateLimitRule, salt: int) -> Rule:
    kind = _KINDS[cfg.key]
    ident: list[object] = [cfg.name, cfg.key, repr(float(cfg.rate)), cfg.burst]
    if kind == K_PREFIX:
        ident += [cfg.prefix_v4, cfg.prefix_v6]
    if kind == K_HEADER:
        ident.append(cfg.header)
    return Rule(cfg.name, kind, rule_seed(salt, "rule", *ident), cfg.rate, cfg.burst,
                shadow=cfg.shadow,
                routes=frozenset(cfg.routes) if cfg.routes is not None else None,
                header=(cfg.header or "").encode(), p4=cfg.prefix_v4, p6=cfg.prefix_v6)


def limit_headers(hits: Iterable[tuple[Rule, float]]) -> list[tuple[bytes, bytes]]:
    """429 headers for the rules that refused, with their waits in seconds."""
    policies: list[str] = []
    limits: list[str] = []
    retry = 1
    for rule, wait in hits:
        t = max(1, math.ceil(wait))
        retry = max(retry, t)
        policies.append(rule.policy)
        limits.append(f'"{rule.name}";r=0;t={t}')
    return [(b"retry-after", str(retry).encode()),
            (b"ratelimit-policy", ", ".join(policies).encode()),
            (b"ratelimit", ", ".join(limits).encode())]
