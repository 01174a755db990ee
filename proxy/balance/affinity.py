"""The consistent-hash key of a request, from the pool's affinity config.

Only computed for pools whose algorithm is `hash` (the plan says so:
`plan.affinity is not None`). A missing cookie or header gives None and the
pool falls back to p2c for that request: a client without a session has
nothing to stick to yet.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .config import AffinityConfig

if TYPE_CHECKING:
    from proxy.context import RequestContext


def affinity_key(cfg: AffinityConfig | None, ctx: RequestContext) -> bytes | None:
    if cfg is None:
        return None
    if cfg.client_ip:
        return ctx.client_ip.encode()
    if cfg.header is not None:
        return ctx.header(cfg.header.lower().encode())
    if cfg.cookie is not None:
        return cookie_value(ctx.headers, cfg.cookie.encode())
    return None


def cookie_value(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """First value of cookie `name` across Cookie headers (RFC 6265 syntax:
    'a=1; b=2'). Hand-rolled: http.cookies parses every cookie and rejects
    whole headers over one bad one, and is ~10x slower for this one lookup."""
    for n, v in headers:
        if n != b"cookie":
            continue
        for part in v.split(b";"):
            k, sep, val = part.strip().partition(b"=")
            if sep and k == name:
                return val.strip(b'"') or None
    return None
