"""Test helpers for the observe tests: a RequestContext factory and a Geo stand-in."""
from __future__ import annotations

from typing import Any, NamedTuple

from proxy.context import RequestContext


class Geo(NamedTuple):  # the two fields of geodb.GeoRecord that observe reads
    country: str | None = None
    continent: str | None = None


class Route:
    def __init__(self, name: str) -> None:
        self.name = name


def make_ctx(*, route: str | None = "api", region: str | None = "eu-west-1",
              backend: str | None = "eu-west-1/10.0.0.1:80", status: int = 200,
              start: float = 100.0, end: float = 100.02, upstream: tuple[float, float] | None = (100.001, 100.015),
              geo: Geo | None = Geo("IE", "EU"), path: str = "/api/items/1", **attrs: Any) -> RequestContext:
    ctx = RequestContext("req-1", start, "GET", "api.example.com", path, "token=abc", "1.1",
                         "198.51.100.7", 40000, geo, [(b"host", b"api.example.com")], "127.0.0.1:8080")
    ctx.route = Route(route) if route is not None else None
    ctx.region = region
    ctx.backend = backend
    ctx.status = status
    ctx.end = end
    if upstream is not None:
        ctx.upstream_start, ctx.upstream_headers_at = upstream
    for k, v in attrs.items():
        setattr(ctx, k, v)
    return ctx
