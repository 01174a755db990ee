"""An independent, strict HTTP/1.x response reader for tests, and a raw client.

Written without llhttp on purpose: the node's framing is checked by a second
implementation, so a bug shared with the parser under test cannot hide.
"""
from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from dataclasses import dataclass, field

_STATUS_LINE = re.compile(rb"HTTP/(1\.[01]) (\d{3}) ([^\r\n]*)")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


class Incomplete(Exception):
    """More bytes are needed to finish the current response."""


class Malformed(Exception):
    """The byte stream is not valid HTTP/1.1 response framing."""


@dataclass
class Response:
    version: bytes
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    framing: str                     # "length" | "chunked" | "close" | "none"
    interim: list["Response"] = field(default_factory=list)   # 1xx before this one

    def header(self, name: str) -> str | None:
        vals = self.all(name)
        return vals[0] if vals else None

    def all(self, name: str) -> list[str]:
        ln = name.lower().encode()
        return [v.decode("latin-1") for n, v in self.headers if n.lower() == ln]

    @property
    def closes(self) -> bool:
        conn = ",".join(self.all("connection")).lower()
        return "close" in [t.strip() for t in conn.split(",")]


def _head(buf: bytes, pos: int) -> tuple[bytes, bytes, int, list[tuple[bytes, bytes]], int] | None:
    end = buf.find(b"\r\n\r\n", pos)
    if end < 0:
        if len(buf) - pos > 1 << 20:
            raise Malformed("response head over 1 MiB")
        return None
    lines = buf[pos:end].split(b"\r\n")
    m = _STATUS_LINE.fullmatch(lines[0])
    if m is None:
        raise Malformed(f"bad status line {lines[0][:80]!r}")
    headers: list[tuple[bytes, bytes]] = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.fullmatch(name):
            raise Malformed(f"bad header line {line[:80]!r}")
        if b"\n" in line or b"\r" in line or b"\x00" in line:
            raise Malformed(f"bad characters in {line[:80]!r}")
        headers.append((name, value.strip(b" \t")))
    return m.group(1), m.group(3), int(m.group(2)), headers, end + 4


def _chunked(buf: bytes, pos: int) -> tuple[bytes, int]:
    out = []
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            raise Incomplete
        size_s = buf[pos:eol].split(b";", 1)[0]
        if not re.fullmatch(rb"[0-9a-fA-F]{1,15}", size_s):
            raise Malformed(f"bad chunk size {buf[pos:eol][:40]!r}")
        size = int(size_s, 16)
        pos = eol + 2
        if size == 0:
            # trailer section, then the empty line
            while True:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    raise Incomplete
                line = buf[pos:eol]
                pos = eol + 2
                if not line:
                    return b"".join(out), pos
        if len(buf) < pos + size + 2:
            raise Incomplete
        out.append(buf[pos:pos + size])
        if buf[pos + size:pos + size + 2] != b"\r\n":
            raise Malformed("chunk data not followed by CRLF")
        pos += size + 2


def parse_responses(raw: bytes, methods: list[str] | None = None, *, eof: bool = True) -> tuple[list[Response], bytes]:
    """Parse as many complete final responses as `raw` holds.

    `methods[i]` is the method of the i-th request (HEAD responses have no body).
    With `eof`, the stream is known to be complete, so a close-delimited body ends
    at the end of `raw`. Returns (responses, unparsed remainder).
    """
    pos = 0
    out: list[Response] = []
    interim: list[Response] = []
    while pos < len(raw):
        head = _head(raw, pos)
        if head is None:
            break
        version, reason, status, headers, body_at = head
        lnames = [n.lower() for n, _ in headers]
        method = methods[len(out)] if methods and len(out) < len(methods) else "GET"
        if 100 <= status < 200:
            if status == 101:
                out.append(Response(version, status, reason, headers, b"", "none", interim))
                return out, raw[body_at:]
            interim.append(Response(version, status, reason, headers, b"", "none"))
            pos = body_at
            continue
        te = [v for n, v in headers if n.lower() == b"transfer-encoding"]
        cls = [v for n, v in headers if n.lower() == b"content-length"]
        if te and cls:
            raise Malformed("response with both Content-Length and Transfer-Encoding")
        if len(set(cls)) > 1 or any(not c.isdigit() for c in cls):
            raise Malformed(f"bad Content-Length {cls!r}")
        try:
            if method == "HEAD" or status in (204, 304):
                body, framing, pos = b"", "none", body_at
            elif te:
                if b",".join(te).lower().replace(b" ", b"") != b"chunked":
                    raise Malformed(f"unexpected Transfer-Encoding {te!r}")
                body, pos = _chunked(raw, body_at)
                framing = "chunked"
            elif cls:
                n = int(cls[0])
                if len(raw) < body_at + n:
                    raise Incomplete
                body, framing, pos = raw[body_at:body_at + n], "length", body_at + n
            else:
                if not eof:
                    raise Incomplete
                body, framing, pos = raw[body_at:], "close", len(raw)
        except Incomplete:
            break
        assert lnames is not None
        out.append(Response(version, status, reason, headers, body, framing, interim))
        interim = []
        if framing == "close":
            break
    return out, raw[pos:]


async def exchange(port: int, data: bytes | list[bytes], *, expect: int = 1,
                   methods: list[str] | None = None, timeout: float = 3.0, settle: float = 0.05,
                   host: str = "127.0.0.1", local_addr: tuple[str, int] | None = None,
                   gap: float = 0.0, ssl_ctx: ssl.SSLContext | None = None,
                   server_hostname: str | None = None) -> tuple[list[Response], bytes, bool]:
    """Send raw bytes, read until `expect` complete responses have arrived (then
    `settle` seconds more, to catch extra ones), the server closes, or `timeout`.

    Returns (responses, raw bytes received, closed-by-server)."""
    reader, writer = await asyncio.open_connection(host, port, local_addr=local_addr, ssl=ssl_ctx,
                                                   server_hostname=server_hostname)
    pieces = [data] if isinstance(data, bytes) else data
    raw = b""
    closed = False
    loop = asyncio.get_running_loop()
    try:
        for p in pieces:
            writer.write(p)
            await writer.drain()
            if gap:
                await asyncio.sleep(gap)
        deadline = loop.time() + timeout
        settle_until: float | None = None
        n_done = parsed_to = 0
        while True:
            now = loop.time()
            until = deadline if settle_until is None else min(deadline, settle_until)
            if now >= until:
                break
            try:
                chunk = await asyncio.wait_for(reader.read(65536), until - now)
            except asyncio.TimeoutError:
                break
            if not chunk:
                closed = True
                break
            raw += chunk
            if settle_until is None:
                # incremental: re-parsing everything per read is quadratic
                done, rest = parse_responses(raw[parsed_to:], methods[n_done:] if methods else None, eof=False)
                n_done += len(done)
                parsed_to = len(raw) - len(rest)
                if n_done >= expect:
                    settle_until = loop.time() + settle
    except (ConnectionResetError, BrokenPipeError):
        closed = True
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    responses, _rest = parse_responses(raw, methods, eof=closed)
    return responses, raw, closed


def request(method: str = "GET", target: str = "/", *, host: str | None = "a.test",
            headers: list[tuple[str, str]] | None = None, body: bytes = b"",
            version: str = "HTTP/1.1", length: bool = True) -> bytes:
    """A well-formed request (Content-Length added for a body unless `length` is False)."""
    lines = [f"{method} {target} {version}"]
    if host is not None:
        lines.append(f"Host: {host}")
    for n, v in headers or []:
        lines.append(f"{n}: {v}")
    if body and length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chunked(*pieces: bytes, trailer: bytes = b"") -> bytes:
    return b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in pieces if p) + b"0\r\n" + trailer + b"\r\n"


class RawClient:
    """One client connection driven step by step (keep-alive, pipelining, Expect)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.buf = b""
        self.eof = False

    @classmethod
    async def connect(cls, port: int, host: str = "127.0.0.1",
                      local_addr: tuple[str, int] | None = None) -> "RawClient":
        r, w = await asyncio.open_connection(host, port, local_addr=local_addr)
        return cls(r, w)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def _more(self, timeout: float) -> bool:
        try:
            chunk = await asyncio.wait_for(self.reader.read(1 << 20), timeout)
        except (ConnectionResetError, BrokenPipeError):
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    async def responses(self, n: int, methods: list[str] | None = None,
                        timeout: float = 3.0) -> list[Response]:
        """Read exactly `n` complete final responses (consumed from the buffer)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while True:
            done, rest = parse_responses(self.buf, methods, eof=self.eof)
            if len(done) >= n:
                if len(done) > n:
                    raise AssertionError(f"{len(done)} responses, expected {n}")
                self.buf = rest
                return done
            if self.eof:
                raise AssertionError(f"closed after {len(done)} of {n} responses: {self.buf[:300]!r}")
            left = end - loop.time()
            if left <= 0:
                raise AssertionError(f"timeout after {len(done)} of {n} responses: {self.buf[:300]!r}")
            try:
                await self._more(left)
            except asyncio.TimeoutError:
                pass

    async def read_until(self, marker: bytes, timeout: float = 3.0) -> bytes:
        """Bytes up to and including `marker` (consumed)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while marker not in self.buf:
            left = end - loop.time()
            if left <= 0 or self.eof:
                raise AssertionError(f"{marker!r} not received; have {self.buf[:300]!r}")
            try:
                await self._more(left)
            except asyncio.TimeoutError:
                pass
        i = self.buf.index(marker) + len(marker)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    async def nothing_for(self, seconds: float) -> bool:
        """True if nothing arrives (and the server does not close) for `seconds`."""
        if self.buf or self.eof:
            return False
        try:
            got = await self._more(seconds)
        except asyncio.TimeoutError:
            return True
        return False if got else False

    async def closed_within(self, seconds: float) -> bool:
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while not self.eof:
            left = end - loop.time()
            if left <= 0:
                return False
            try:
                await self._more(left)
            except asyncio.TimeoutError:
                return False
        return True

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()
