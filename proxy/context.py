"""Per-request state: one small object that every phase reads and writes.

Lifetime: created when a request's head is parsed, handed to the access log
and metrics when the response ends (or fails). Phases that only compute are
plain functions of (snapshot, node state, ctx); see proxy/phases.py.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from geodb import GeoRecord


class RequestContext:
    # __slots__: about 30% cheaper to create than a dataclass with a __dict__,
    # and a request makes exactly one.
    __slots__ = (
        "request_id", "start", "method", "host", "path", "query", "version",
        "client_ip", "client_port", "geo", "headers", "listener",
        "route", "region", "backend", "policy_note",
        "status", "bytes_in", "bytes_out",
        "upstream_start", "upstream_headers_at", "end",
        "verdicts", "error", "retries", "is_write",
    )

    def __init__(self, request_id: str, start: float, method: str, host: str,
                 path: str, query: str, version: str, client_ip: str,
                 client_port: int, geo: GeoRecord | None,
                 headers: list[tuple[bytes, bytes]], listener: str) -> None:
        self.request_id = request_id
        self.start = start              # time.monotonic() at head complete
        self.method = method            # "GET"
        self.host = host                # lower-cased, without port
        self.path = path                # raw path, without query
        self.query = query              # raw query string, "" if none
        self.version = version          # "1.1" or "1.0"
        self.client_ip = client_ip      # effective client (PROXY/XFF aware)
        self.client_port = client_port
        self.geo = geo                  # geodb.GeoRecord of client_ip (per connection)
        # (lower-cased name, value) as received, in order; hop-by-hop included.
        self.headers = headers
        self.listener = listener        # listener name, e.g. "127.0.0.1:8080"
        # routing decisions
        self.route: Any = None          # compiled route (proxy.routing.Route)
        self.region: str | None = None
        self.backend: str | None = None  # stable backend id "region/host:port"
        self.policy_note: str | None = None
        # outcome
        self.status = 0
        self.bytes_in = 0               # request body bytes from the client
        self.bytes_out = 0              # response body bytes to the client
        self.upstream_start = 0.0
        self.upstream_headers_at = 0.0
        self.end = 0.0
        self.verdicts: list[str] = []   # e.g. ["ratelimit:per-ip:shadow"]
        self.error: str | None = None   # e.g. "upstream-connect-refused"
        self.retries = 0
        self.is_write = False

    def header(self, lname: bytes) -> bytes | None:
        """First value of a header by lower-case name (linear: a request has ~10)."""
        for n, v in self.headers:
            if n == lname:
                return v
        return None
