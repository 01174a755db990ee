"""ACLs through the real node: a denied listener peer is closed at accept,
a route ACL answers 403 with its reason, others pass; rate limits answer 429
with Retry-After and the RateLimit headers."""
from __future__ import annotations

from tests.support.backend import TestBackend
from tests.support.node import node_config, raw_exchange, run_node, statuses

REQ = b"GET /admin/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"


async def test_listener_and_route_acls() -> None:
    b = await TestBackend.start("b")
    try:
        cfg = node_config([b.address],
                          routes=[{"name": "admin", "pool": "default", "match": {"path_prefix": "/admin"},
                                   "acl": {"allow": ["127.0.0.0/24"]}},
                                  {"name": "default", "pool": "default"}],
                          protection={"acl": {"deny": ["127.9.0.0/16"]}})
        async with run_node(cfg) as node:
            port = node.listeners[0].port
            assert statuses(await raw_exchange(port, REQ, local_addr=("127.0.0.2", 0))) == [200]
            raw = await raw_exchange(port, REQ, local_addr=("127.0.5.2", 0))
            assert statuses(raw) == [403] and b"X-NovaEdge-Error" in raw
            other = REQ.replace(b"/admin/x", b"/public")
            assert statuses(await raw_exchange(port, other, local_addr=("127.0.5.2", 0))) == [200]
            assert await raw_exchange(port, REQ, local_addr=("127.9.1.1", 0)) == b""   # closed at accept
            assert b.stats.paths.count("/admin/x") == 1
    finally:
        await b.stop()


async def test_rate_limit_answers_429_with_its_headers() -> None:
    b = await TestBackend.start("b")
    try:
        cfg = node_config([b.address], protection={
            "rate_limits": [{"name": "per-ip", "key": "ip", "rate": 1, "burst": 3}]})
        async with run_node(cfg) as node:
            port = node.listeners[0].port
            pipelined = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n" * 5 + b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
            raw = await raw_exchange(port, pipelined, local_addr=("127.0.7.7", 0))
            assert statuses(raw) == [200, 200, 200, 429, 429, 429]
            low = raw.lower()
            assert b"retry-after: " in low and b'ratelimit-policy: "per-ip";q=1;w=1' in low
            assert b.stats.requests == 3
    finally:
        await b.stop()
