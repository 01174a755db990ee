"""Upgrade (WebSocket and others): after a 101 from the backend the node is a
byte tunnel both ways; a 101 nobody asked for is a broken backend (502); h2c
is never forwarded (RFC 9113 3.1 dropped it; forwarding it lets a client
tunnel HTTP/2 past the proxy's rules: "h2c smuggling")."""
from __future__ import annotations

import asyncio
import json
import os

from tests.support.harness import harness
from tests.support.http import RawClient, exchange, request

WS = [("Connection", "Upgrade"), ("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13"),
      ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")]


async def test_websocket_tunnel_carries_bytes_both_ways() -> None:
    async with harness() as h:
        c = await RawClient.connect(h.port)
        try:
            # The first frame travels in the same write as the head.
            await c.send(request("GET", "/ws", headers=WS) + b"early-bytes")
            head = await c.read_until(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101 ")
            assert b"Upgrade: websocket" in head and b"X-Request-Id: " in head
            assert await c.read_until(b"early-bytes") == b"early-bytes"
            for i in range(3):
                msg = b"frame-%d" % i
                await c.send(msg)
                assert await c.read_until(msg) == msg
            # a bulk transfer both ways, concurrently
            blob = os.urandom(2 * 1024 * 1024)
            send = asyncio.ensure_future(c.send(blob))
            got = await c.read_until(blob[-64:], timeout=10)
            await send
            assert got == blob
        finally:
            await c.close()
        heads = h.backend.stats.heads
        assert [v for n, v in heads[0][2] if n.lower() == "upgrade"] == ["websocket"]


async def test_tunnel_ends_when_the_backend_closes() -> None:
    async with harness() as h:
        c = await RawClient.connect(h.port)
        try:
            await c.send(request("GET", "/ws", headers=WS))
            await c.read_until(b"\r\n\r\n")
            await c.send(b"x")
            await c.read_until(b"x")
            for conn in list(h.backend.conns):
                assert conn.t is not None
                conn.t.close()
            assert await c.closed_within(2)
        finally:
            await c.close()


async def test_tunnel_ends_when_the_client_closes() -> None:
    async with harness() as h:
        c = await RawClient.connect(h.port)
        await c.send(request("GET", "/ws", headers=WS))
        await c.read_until(b"\r\n\r\n")
        assert len(h.backend.conns) == 1
        await c.close()
        for _ in range(40):
            if not h.backend.conns:
                break
            await asyncio.sleep(0.05)
        assert not h.backend.conns, "the upstream side of the tunnel outlived the client"
        assert not h.node.connections


async def test_unrequested_101_is_a_bad_gateway() -> None:
    async with harness() as h:
        r = await h.get("/unasked101")
        assert r.status == 502 and r.header("x-novaedge-error") == "upstream-bad-response"


async def test_h2c_upgrade_is_never_forwarded() -> None:
    async with harness() as h:
        r = await h.get("/ws", headers=[("Connection", "Upgrade, HTTP2-Settings"), ("Upgrade", "h2c"),
                                        ("HTTP2-Settings", "AAMAAABkAAQAAP__")])
        assert r.status == 200   # the backend saw a plain request, so no 101
        (head,) = h.backend.stats.heads
        names = {n.lower() for n, _v in head[2]}
        assert "upgrade" not in names and "http2-settings" not in names
        assert "upgrade" not in (dict((n.lower(), v.lower()) for n, v in head[2]).get("connection", ""))


async def test_h2c_is_removed_from_a_protocol_list() -> None:
    async with harness() as h:
        c = await RawClient.connect(h.port)
        try:
            await c.send(request("GET", "/ws", headers=[("Connection", "Upgrade"), ("Upgrade", "h2c, websocket")]))
            head = await c.read_until(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101 ")
        finally:
            await c.close()
        (head,) = h.backend.stats.heads
        assert [v for n, v in head[2] if n.lower() == "upgrade"] == ["websocket"]


async def test_refused_upgrade_then_next_request_on_same_connection() -> None:
    async with harness() as h:
        # The backend answers the upgrade request with a plain 200; the pipelined
        # request behind it is then parsed as HTTP again.
        raw = request("GET", "/bytes/2", headers=WS) + request("GET", "/bytes/3")
        resps, _raw, _closed = await exchange(h.port, raw, expect=2)
        assert [(r.status, r.body) for r in resps] == [(200, b"xx"), (200, b"xxx")]
        assert h.backend.stats.paths == ["/bytes/2", "/bytes/3"]


async def test_upgrade_request_headers_forwarded_end_to_end() -> None:
    async with harness() as h:
        c = await RawClient.connect(h.port)
        try:
            await c.send(request("GET", "/ws", headers=WS + [("Sec-WebSocket-Protocol", "chat")]))
            await c.read_until(b"\r\n\r\n")
        finally:
            await c.close()
        (head,) = h.backend.stats.heads
        got = {n.lower(): v for n, v in head[2]}
        assert got["sec-websocket-key"] == "dGhlIHNhbXBsZSBub25jZQ=="
        assert got["sec-websocket-protocol"] == "chat"
        assert got["connection"].lower() == "upgrade" and got["upgrade"] == "websocket"
        assert json.dumps(got)   # and nothing unserializable slipped in


async def test_upgrade_pipelined_behind_another_request() -> None:
    async with harness() as h:
        c = await RawClient.connect(h.port)
        try:
            await c.send(request("GET", "/slow/100") + request("GET", "/ws", headers=WS) + b"tunnel-bytes")
            (first,) = await c.responses(1)
            assert first.status == 200
            head = await c.read_until(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101 ")
            # the bytes after the upgrade request belong to the tunnel, not to HTTP
            assert await c.read_until(b"tunnel-bytes") == b"tunnel-bytes"
        finally:
            await c.close()
        assert h.backend.stats.paths == ["/slow/100"]   # /ws is a tunnel, not a finished request
