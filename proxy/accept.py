"""Accepting on a listener that has both a PROXY header and TLS.

The L4 tier writes the PROXY header in clear before the client's TLS
ClientHello, so TLS must start exactly after the header, not one byte later.
We accept the socket ourselves, read exactly the header's bytes (v2 says its
length; v1 is read to its CRLF, at most 107 bytes), then hand the socket to
the loop with TLS and the client address already known.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from typing import TYPE_CHECKING

from .proxyproto import V1_MAX, ProxyHeaderError, parse_proxy_header

if TYPE_CHECKING:
    from .node import Listener, Node

log = logging.getLogger("novaedge.accept")


async def _read_exactly_header(loop: asyncio.AbstractEventLoop, conn: socket.socket) -> bytes:
    buf = b""
    while len(buf) < 16:
        chunk = await loop.sock_recv(conn, 16 - len(buf) if buf[:1] != b"P" else 1)
        if not chunk:
            raise ProxyHeaderError("closed before the PROXY header")
        buf += chunk
        parse_proxy_header(buf)   # raises at once on anything that is not a PROXY header
        if buf[:1] == b"P" and (buf.endswith(b"\r\n") or len(buf) >= V1_MAX):
            return buf
    if buf[:1] == b"P":
        while not buf.endswith(b"\r\n") and len(buf) < V1_MAX:
            chunk = await loop.sock_recv(conn, 1)
            if not chunk:
                raise ProxyHeaderError("closed in the PROXY header")
            buf += chunk
        return buf
    need = 16 + int.from_bytes(buf[14:16], "big")
    while len(buf) < need:
        chunk = await loop.sock_recv(conn, need - len(buf))
        if not chunk:
            raise ProxyHeaderError("closed in the PROXY header")
        buf += chunk
    return buf


async def _handle(node: "Node", li: "Listener", conn: socket.socket, peer: tuple[str, int],
                  ctx: ssl.SSLContext) -> None:
    from .downstream import Downstream
    loop = node.loop
    timeout = node.snapshot.config.limits.header_timeout_s
    try:
        peer_ip = peer[0][7:] if peer[0].startswith("::ffff:") else peer[0]
        if not li.proxy_from(peer_ip):
            raise ProxyHeaderError(f"PROXY header from {peer_ip}, not a trusted L4 tier")
        raw = await asyncio.wait_for(_read_exactly_header(loop, conn), timeout)
        parsed = parse_proxy_header(raw)
        if parsed is None or parsed[1] != len(raw):
            raise ProxyHeaderError("bad PROXY header")
        client = parsed[0] or (peer_ip, peer[1])
        await loop.connect_accepted_socket(
            lambda: Downstream(node, li, client=client), conn, ssl=ctx,
            ssl_handshake_timeout=timeout)
    except (ProxyHeaderError, asyncio.TimeoutError, OSError, ssl.SSLError) as e:
        log.debug("connection from %s refused: %s", peer, e)
        conn.close()


async def serve_proxy_tls(node: "Node", li: "Listener", sock: socket.socket,
                          ctx: ssl.SSLContext) -> None:
    loop = node.loop
    while not node.draining:
        try:
            conn, peer = await loop.sock_accept(sock)
        except OSError:
            if node.draining:
                return
            await asyncio.sleep(0.01)
            continue
        conn.setblocking(False)
        loop.create_task(_handle(node, li, conn, peer, ctx))
