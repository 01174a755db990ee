"""A scriptable test backend: raw asyncio + httptools, so tests control every byte.

Behaviour by path (query arguments in brackets):
  /                      JSON echo: method, target, headers, body length, body sha256
  /status/N              answers status N with a short body
  /bytes/N               N bytes with Content-Length
  /chunked/N             N bytes, chunked, in 16 KiB chunks
  /close/N               N bytes, no Content-Length, ended by closing the connection
  /download/N            N bytes streamed with back-pressure (for the 1 GiB test)
  /slow/MS               waits MS milliseconds before answering
  /hints                 103 Early Hints, then 200
  /ws                    101 if the request asks to upgrade, then echoes bytes
  /unasked101            a 101 whatever the request said
  /reset                 closes the connection without answering
  /bad/NAME              a malformed response: cl-te, dup-cl, bad-chunk, garbage,
                         obs-fold, neg-cl, bad-status, nul-header
  /healthz               200 "ok" (503 when the backend is marked unhealthy)
  /sink                  reads the body without hashing it (fast for 1 GiB), answers its length
                         [?stall_every=BYTES&stall_ms=MS: stop reading for MS after every BYTES]
  /stall                 a head promising 100 bytes, 10 of them, then nothing
  /truncate/KIND         a head (KIND: length | chunked), part of the body, then a close
  /early/N               answers N at once, before reading the request body
  /hop                   a response carrying hop-by-hop fields (and X-End: 1, which is not)
  /bighead/N             a response with N bytes of header fields, sent in 1000-byte pieces
  /trailers              a chunked response with trailer fields
  /twice                 two responses to one request (the second says "extra")
Every response carries X-Backend: <name>.
`drop_reused = k`: the next k requests that arrive on an already-used connection
find it closed (reset before a byte is read), like a keep-alive connection the
backend timed out just as the proxy reused it.
`stats.heads` records (method, target, headers) of every request head.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass, field

import httptools

BAD = {
    b"cl-te": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"dup-cl": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    b"bad-chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    b"garbage": b"this is not http\r\n\r\n",
    b"obs-fold": b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 2\r\n\r\nok",
    b"neg-cl": b"HTTP/1.1 200 OK\r\nContent-Length: -2\r\n\r\nok",
    b"bad-status": b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok",
    b"nul-header": b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 2\r\n\r\nok",
}


@dataclass
class BackendStats:
    requests: int = 0
    connections: int = 0
    paths: list[str] = field(default_factory=list)
    upload_bytes: int = 0
    heads: list[tuple[str, str, list[tuple[str, str]]]] = field(default_factory=list)
    dropped: int = 0


class _Conn(asyncio.Protocol):
    def __init__(self, server: "TestBackend") -> None:
        self.server = server
        self.t: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = hashlib.sha256()
        self.body_len = 0
        self.tunnel = False
        self.hash_body = True
        self.stall_every = 0
        self.stall_ms = 0
        self.next_stall = 0
        self.served = 0
        self.in_message = False
        self.can_write = asyncio.Event()
        self.can_write.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = transport  # type: ignore[assignment]
        self.server.stats.connections += 1
        self.server.conns.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.conns.discard(self)
        self.can_write.set()

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()

    def data_received(self, data: bytes) -> None:
        if self.tunnel:
            assert self.t is not None
            self.t.write(data)
            return
        if not self.in_message and self.served and self.server.drop_reused > 0:
            self.server.drop_reused -= 1
            self.server.stats.dropped += 1
            assert self.t is not None
            self.t.abort()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            rest = data[int(e.args[0]):] if e.args else b""
            if self.tunnel and rest and self.t is not None:
                self.t.write(rest)
        except httptools.HttpParserError:
            if self.t is not None:
                self.t.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                self.t.close()

    def on_message_begin(self) -> None:
        self.in_message = True
        self.url = b""
        self.headers = []
        self.body = hashlib.sha256()
        self.body_len = 0

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        path, _, query = self.url.partition(b"?")
        self.hash_body = not path.startswith(b"/sink")
        args = dict(kv.split(b"=", 1) for kv in query.split(b"&") if b"=" in kv)
        self.stall_every = int(args.get(b"stall_every", 0))
        self.stall_ms = int(args.get(b"stall_ms", 0))
        self.next_stall = self.stall_every
        self.server.stats.heads.append((
            self.parser.get_method().decode(), self.url.decode("latin-1"),
            [(n.decode("latin-1"), v.decode("latin-1")) for n, v in self.headers]))
        if path.startswith(b"/early/"):
            st = int(path.split(b"/")[2])
            self._send(self._head(st, [b"Content-Length: 5"], False) + b"early")
            if self.t is not None:
                self.t.close()
            return
        if path == b"/ws" and self.parser.should_upgrade():
            self._send(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                       b"Connection: Upgrade\r\nX-Backend: " + self.server.name.encode() + b"\r\n\r\n")
            self.tunnel = True

    def on_body(self, body: bytes) -> None:
        if self.hash_body:
            self.body.update(body)
        self.body_len += len(body)
        self.server.stats.upload_bytes += len(body)
        if self.stall_every and self.body_len >= self.next_stall and self.t is not None:
            # A slow consumer: the proxy in front must stop reading its client.
            self.next_stall += self.stall_every
            self.t.pause_reading()
            asyncio.get_running_loop().call_later(self.stall_ms / 1000, self._resume)

    def _resume(self) -> None:
        if self.t is not None and not self.t.is_closing():
            self.t.resume_reading()

    def on_message_complete(self) -> None:
        self.in_message = False
        self.served += 1
        if self.tunnel:
            return
        s = self.server
        s.stats.requests += 1
        path = self.url.split(b"?")[0]
        s.stats.paths.append(path.decode("latin-1"))
        asyncio.get_running_loop().create_task(self._respond(path, self.parser.get_method(),
                                                             self.parser.should_keep_alive()))

    def _send(self, data: bytes) -> None:
        if self.t is not None and not self.t.is_closing():
            self.t.write(data)

    def _head(self, status: int, headers: list[bytes], keep: bool) -> bytes:
        lines = [b"HTTP/1.1 %d %s" % (status, b"OK" if status < 400 else b"Error"),
                 b"X-Backend: " + self.server.name.encode()] + headers
        if not keep:
            lines.append(b"Connection: close")
        return b"\r\n".join(lines) + b"\r\n\r\n"

    async def _respond(self, path: bytes, method: bytes, keep: bool) -> None:
        s = self.server
        parts = path.strip(b"/").split(b"/")
        kind = parts[0]
        arg = parts[1] if len(parts) > 1 else b"0"
        head_only = method == b"HEAD"
        if s.delay_s:
            await asyncio.sleep(s.delay_s)
        if kind == b"reset":
            if self.t is not None:
                self.t.abort()
            return
        if kind == b"slow":
            await asyncio.sleep(int(arg) / 1000)
        if kind == b"bad":
            self._send(BAD.get(arg, BAD[b"garbage"]))
            if self.t is not None:
                self.t.close()
            return
        if kind == b"early":
            return
        if kind == b"hop":
            self._send(self._head(200, [b"Connection: keep-alive, X-Hop", b"X-Hop: 1",
                                        b"Keep-Alive: timeout=5", b"Proxy-Authenticate: Basic",
                                        b"Upgrade: foo", b"Trailer: X-T", b"X-End: 1",
                                        b"Content-Length: 2"], keep) + b"ok")
            return
        if kind == b"bighead":
            n = int(arg)
            head = self._head(200, [b"X-Big: " + b"h" * n, b"Content-Length: 2"], keep) + b"ok"
            for i in range(0, len(head), 1000):
                self._send(head[i:i + 1000])
                await asyncio.sleep(0)
            return
        if kind == b"trailers":
            self._send(self._head(200, [b"Transfer-Encoding: chunked", b"Trailer: X-T"], keep)
                       + b"2\r\nok\r\n0\r\nX-T: 1\r\nX-U: 2\r\n\r\n")
            return
        if kind == b"twice":
            self._send(self._head(200, [b"Content-Length: 5"], True) + b"first"
                       + self._head(200, [b"Content-Length: 5"], True) + b"extra")
            return
        if kind == b"truncate":
            if arg == b"chunked":
                self._send(self._head(200, [b"Transfer-Encoding: chunked"], keep) + b"a\r\n0123456789\r\n5\r\nab")
            else:
                self._send(self._head(200, [b"Content-Length: 100"], keep) + b"t" * 10)
            await asyncio.sleep(0.05)
            if self.t is not None:
                self.t.close()
            return
        if kind == b"stall":
            self._send(self._head(200, [b"Content-Length: 100"], keep) + b"s" * 10)
            return
        if kind == b"unasked101":
            self._send(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
            return
        if kind == b"hints":
            self._send(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n")
        if kind == b"healthz":
            st = 200 if s.healthy else 503
            self._send(self._head(st, [b"Content-Length: 2"], keep) + b"ok")
        elif kind == b"status":
            st = int(arg)
            if st in (204, 304):
                self._send(self._head(st, [], keep))
            else:
                body = b"status %d" % st
                self._send(self._head(st, [b"Content-Length: %d" % len(body)], keep)
                           + (b"" if head_only else body))
        elif kind == b"bytes":
            n = int(arg)
            self._send(self._head(200, [b"Content-Length: %d" % n], keep) + (b"" if head_only else b"x" * n))
        elif kind == b"chunked":
            n = int(arg)
            out = [self._head(200, [b"Transfer-Encoding: chunked"], keep)]
            while n > 0 and not head_only:
                k = min(n, 16384)
                out.append(b"%x\r\n%s\r\n" % (k, b"y" * k))
                n -= k
            out.append(b"" if head_only else b"0\r\n\r\n")
            self._send(b"".join(out))
        elif kind == b"close":
            n = int(arg)
            self._send(self._head(200, [], False) + b"z" * n)
            if self.t is not None:
                self.t.close()
            return
        elif kind == b"download":
            n = int(arg)
            self._send(self._head(200, [b"Content-Length: %d" % n], keep))
            block = b"d" * 65536
            while n > 0 and self.t is not None and not self.t.is_closing():
                await self.can_write.wait()
                k = min(n, len(block))
                self._send(block[:k])
                n -= k
        else:
            body = json.dumps({
                "backend": s.name,
                "method": method.decode(),
                "target": self.url.decode("latin-1"),
                "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in self.headers],
                "body_len": self.body_len,
                "body_sha256": self.body.hexdigest(),
            }).encode()
            self._send(self._head(200, [b"Content-Type: application/json",
                                        b"Content-Length: %d" % len(body)], keep)
                       + (b"" if head_only else body))
        if not keep and self.t is not None:
            self.t.close()


class TestBackend:
    """Start with `await TestBackend.start(name)`; `.port`, `.stats`, `await .stop()`."""

    __test__ = False

    def __init__(self, name: str) -> None:
        self.name = name
        self.stats = BackendStats()
        self.server: asyncio.AbstractServer | None = None
        self.conns: set[_Conn] = set()
        self.host = "127.0.0.1"
        self.port = 0
        self.delay_s = 0.0
        self.healthy = True
        self.drop_reused = 0

    @classmethod
    async def start(cls, name: str = "b1", host: str = "127.0.0.1", port: int = 0) -> "TestBackend":
        b = cls(name)
        b.host = host
        loop = asyncio.get_running_loop()
        b.server = await loop.create_server(lambda: _Conn(b), host, port)
        b.port = b.server.sockets[0].getsockname()[1]
        return b

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for c in list(self.conns):
                if c.t is not None:
                    c.t.abort()
            await self.server.wait_closed()
            self.server = None

    async def restart(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _Conn(self), self.host, self.port)
