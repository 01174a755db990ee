"""The floor: the least a uvloop + httptools proxy in Python can cost per request.

Not NovaEdge and not for use: GET/HEAD without bodies, Content-Length
responses, no timeouts, no validation, no retries. It puts the same bytes on
the wire as NovaEdge (strips hop-by-hop headers; adds X-Forwarded-For/-Proto/
-Host, X-Real-IP, Via, X-Request-Id upstream and Via, X-Request-Id
downstream) so its CPU per request is the number NovaEdge's hot path can
approach, and the gap to nginx that no amount of tuning removes.

What it does per request, by design: one upstream write (head), one
downstream write (head and body joined when they arrive together), upstream
connections pooled LIFO, no timer, no task, no per-request reference cycle.

    python loadtests/bench/floor_proxy.py LISTEN_PORT BACKEND_PORT
"""
from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import httptools
import uvloop

HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                 b"transfer-encoding", b"upgrade", b"proxy-authenticate", b"proxy-authorization",
                 b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-real-ip",
                 b"x-request-id", b"via"})


class Upstream(asyncio.Protocol):
    def __init__(self, pool: list["Upstream"]) -> None:
        self.pool = pool
        self.transport: Any = None
        self.client: Client | None = None
        self.parser = httptools.HttpResponseParser(self)   # one per connection, reused
        self.out: list[bytes] = []
        self.head: list[bytes] = []
        self.pending: bytes | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        if self.pending is not None:
            transport.write(self.pending)
            self.pending = None

    def data_received(self, data: bytes) -> None:
        c = self.client   # on_message_complete detaches it during feed_data
        self.parser.feed_data(data)
        if self.out:
            out, self.out = self.out, []
            if c is not None and c.transport is not None:
                c.transport.write(b"".join(out))
        if self.client is None and c is not None:
            self.pool.append(self)

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() not in HOP:
            self.head.append(name + b": " + value + b"\r\n")

    def on_headers_complete(self) -> None:
        c = self.client
        assert c is not None
        self.out.append(b"HTTP/1.1 %d OK\r\n" % self.parser.get_status_code())
        self.out.extend(self.head)
        self.head = []
        self.out.append(b"Via: 1.1 floor\r\nX-Request-Id: " + c.rid + b"\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self.out.append(body)

    def on_message_complete(self) -> None:
        c, self.client = self.client, None
        if c is not None:
            c.up = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.pool:
            self.pool.remove(self)
        if self.client is not None and self.client.transport is not None:
            self.client.transport.close()


class Client(asyncio.Protocol):
    ids = 0

    def __init__(self, backend: tuple[str, int], pool: list[Upstream]) -> None:
        self.backend = backend
        self.pool = pool
        self.transport: Any = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.lines: list[bytes] = []
        self.host = b""
        self.peer = b""
        self.rid = b""
        self.up: Upstream | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.peer = transport.get_extra_info("peername")[0].encode()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        ln = name.lower()
        if ln == b"host":
            self.host = value
        if ln not in HOP:
            self.lines.append(name + b": " + value + b"\r\n")

    def on_message_complete(self) -> None:
        Client.ids += 1
        self.rid = b"%x-%d" % (os.getpid(), Client.ids)
        head = b"".join([self.parser.get_method(), b" ", self.url, b" HTTP/1.1\r\n", *self.lines,
                         b"X-Forwarded-For: ", self.peer, b"\r\nX-Forwarded-Proto: http\r\n"
                         b"X-Forwarded-Host: ", self.host, b"\r\nX-Real-IP: ", self.peer,
                         b"\r\nVia: 1.1 floor\r\nX-Request-Id: ", self.rid, b"\r\n\r\n"])
        self.url, self.lines = b"", []
        if self.pool:
            up = self.pool.pop()
            up.client, self.up = self, up
            up.transport.write(head)
            return
        up = Upstream(self.pool)
        up.client, self.up, up.pending = self, up, head
        asyncio.get_running_loop().create_task(
            asyncio.get_running_loop().create_connection(lambda: up, *self.backend))

    def connection_lost(self, exc: Exception | None) -> None:
        up, self.up = self.up, None
        if up is not None:
            up.client = None
            if up.transport is not None:
                up.transport.close()
        self.transport = None


async def serve(port: int, backend_port: int) -> None:
    pool: list[Upstream] = []
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Client(("127.0.0.1", backend_port), pool),
                                      "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1]), int(sys.argv[2])))
