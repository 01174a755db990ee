"""The client side of a connection: bytes in, parsed requests out.

Following uvicorn's httptools protocol: `data_received` feeds llhttp, parser
callbacks only buffer and signal, and one `Exchange` per request does the
work. llhttp (strict mode) already refuses most of what request smuggling
needs (CL+TE, duplicate or signed Content-Length, bad chunk sizes, obs-fold,
bare CR/LF, NUL and CTLs, invalid header names, unknown transfer codings);
this module adds what it does not check: Host rules, HTTP/1.0 with
Transfer-Encoding, versions other than 1.x, fragments, size limits.
"""
from __future__ import annotations

import asyncio
import socket
import types
from collections import deque
from typing import TYPE_CHECKING, Any

import httptools

from ._accel import attach
from .exchange import DONE, PARSING, RESPONDING, SENT, TUNNEL, UPSTREAM_HEAD_LIMIT, WAITING, Exchange
from .http11 import TCHAR, connection_tokens, error_response
from .proxyproto import ProxyHeaderError, parse_proxy_header
from .upstream import BackendPool, UpstreamConnection

if TYPE_CHECKING:
    from .node import Listener, Node


class Reject(Exception):
    """Raised inside parser callbacks: answer `status` and close the connection."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class Downstream(asyncio.Protocol):
    __slots__ = (
        # per-connection state
        "node", "listener", "transport", "parser", "peer_ip", "peer_port", "client_ip",
        "client_port", "geo", "trusted_peer", "pp_buf", "pp_pending", "paused", "closing", "preset",
        "current", "parsing", "queue", "last_active", "head_started_at", "body_last",
        "tunnel", "held", "upgraded", "requests", "protect_memo", "closed",
        "dead", "deferred", "write_paused", "client_eof", "linger_until", "parsed",
        "advancing", "eof_sent", "write_paused_since", "host_seen", "host_name", "fwd_memo",
        "parser_ready",
    )

    def __init__(self, node: "Node", listener: "Listener",
                 client: tuple[str, int] | None = None) -> None:
        self.node = node
        self.listener = listener
        self.preset = client   # the client address, when a PROXY header was read before TLS
        self.transport: asyncio.Transport | None = None
        self.parser: httptools.HttpRequestParser | None = None
        self.peer_ip = ""
        self.peer_port = 0
        self.client_ip = ""
        self.client_port = 0
        self.geo: object | None = None
        self.trusted_peer = False
        self.pp_buf = b""
        self.pp_pending = False
        self.paused: set[str] = set()
        self.closing = False
        self.closed = False
        self.current: Exchange | None = None    # the request being answered
        self.parsing: Exchange | None = None    # the request being parsed (may be a later one)
        self.queue: deque[Exchange] = deque()   # pipelined requests waiting their turn
        self.last_active = 0.0
        self.head_started_at = 0.0               # 0: not inside a request head
        self.body_last = 0.0                     # 0: not inside a request body
        self.tunnel: Exchange | None = None
        self.held: list[bytes] = []              # bytes after an Upgrade request head
        self.upgraded = False
        self.requests = 0
        self.protect_memo: Any = None            # the protect phase's per-connection ClientState
        self.dead = False                        # parser unusable: input is read and dropped
        self.deferred: tuple[int, str, Exchange | None] | None = None  # error owed after earlier responses
        self.write_paused = False                # our send buffer to the client is over high water
        self.write_paused_since = 0.0
        self.client_eof = False                  # the client half-closed after its last request
        self.linger_until = 0.0                  # closing: drain the client's input until then
        self.parsed = 0                          # request messages completely parsed
        self.advancing = False                   # inside _advance (no recursion)
        self.eof_sent = False                    # write_eof done: nothing more may be written
        self.host_seen: bytes | None = None      # the last Host value validated on this connection
        self.host_name = ""                      # ... and its host part, lower-cased
        self.fwd_memo: list[object] = [None, b""]   # build_upstream_head's forwarding fields
        # llhttp is known to be between messages and to take a new one (a new
        # parser is): what lets _request.c's data_received parse a head itself.
        self.parser_ready = True

    # ------------------------------------------------------------------
    # connection
    # ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        node = self.node
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer_ip, self.peer_port = peer[0], peer[1]
            if self.peer_ip.startswith("::ffff:"):
                self.peer_ip = self.peer_ip[7:]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family != socket.AF_UNIX:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self.last_active = node.now()
        # The first head (or PROXY header) must arrive within header_timeout_s of
        # the accept, not of its first byte: an idle fresh connection is slowloris too.
        self.head_started_at = self.last_active
        if not node.connection_opened(self):
            self.transport.abort()  # type: ignore[union-attr]
            self.closed = True
            return
        if self.preset is not None:
            self._identified(*self.preset)
            return
        if self.listener.proxy_protocol:
            if not self.listener.proxy_from(self.peer_ip):
                # PROXY headers are believed only from the configured L4 tier.
                self.transport.abort()  # type: ignore[union-attr]
                self.closed = True
                node.connection_closed(self)
                return
            self.pp_pending = True
            self.head_started_at = self.last_active
            return
        self._identified(self.peer_ip, self.peer_port)

    def _identified(self, ip: str, port: int) -> None:
        self.client_ip, self.client_port = ip, port
        node = self.node
        self.trusted_peer = node.snapshot.is_trusted_proxy(ip)
        if not node.connection_admitted(self):
            assert self.transport is not None
            self.transport.abort()
            return
        self.geo = node.geo_lookup(ip)
        self.parser = httptools.HttpRequestParser(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        for ex in (self.current, *self.queue):
            if ex is not None and ex.state != DONE:
                if ex.ctx is not None and ex.ctx.status == 0:
                    ex.ctx.error = "client-closed"
                    ex.ctx.status = 499
                ex.cancel()
                if ex.ctx is not None:
                    self.node.finish(ex.ctx)
        if self.tunnel is not None:
            self.tunnel.close_tunnel()
            self.tunnel = None
        if self.deferred is not None:
            # An error still owed to the client, who left first: log it anyway.
            status, reason, failed = self.deferred
            self.deferred = None
            if failed is not None:
                if failed.ctx is None:
                    failed.ctx = self.node.bare_context(self, failed)
                failed.ctx.status, failed.ctx.error = status, reason
                failed.state = DONE
                self.node.finish(failed.ctx)
        self.current = None
        self.parsing = None
        self.queue.clear()
        self.parser = None   # it holds our bound callbacks: free the connection without the GC
        self.node.connection_closed(self)

    def pause_writing(self) -> None:
        # Our send buffer to the client is full: stop reading the backend. The flag
        # covers an upstream attached later while the buffer is still full.
        self.write_paused = True
        self.write_paused_since = self.node.now()
        ex = self.tunnel or self.current
        if ex is not None and ex.up is not None:
            ex.up.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        ex = self.tunnel or self.current
        if ex is not None and ex.up is not None:
            ex.up.resume_reading()

    def pause_reading(self, why: str) -> None:
        if not self.paused and self.transport is not None and not self.closed:
            self.transport.pause_reading()
        self.paused.add(why)

    def resume_reading(self, why: str) -> None:
        if why in self.paused:
            self.paused.discard(why)
            if not self.paused and self.transport is not None and not self.closed:
                self.transport.resume_reading()

    def write(self, data: bytes) -> None:
        t = self.transport
        if t is not None and not self.closed and not self.eof_sent:
            t.write(data)

    # ------------------------------------------------------------------
    # bytes in
    # ------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        self.last_active = self.node.now()
        if self.tunnel is not None:
            self.tunnel.tunnel_client_data(data)
            return
        if self.dead:
            return   # after a protocol error or Connection: close: read and drop
        if self.upgraded:
            self.held.append(data)
            if sum(map(len, self.held)) > 256 * 1024:
                self.pause_reading("upgrade-held")
            return
        if self.pp_pending:
            self.pp_buf += data
            try:
                result = parse_proxy_header(self.pp_buf)
            except ProxyHeaderError as e:
                self._reject_connection(400, f"bad PROXY header: {e}")
                return
            if result is None:
                if len(self.pp_buf) > 536:
                    self._reject_connection(400, "bad PROXY header: too long")
                return
            addr, consumed = result
            self.pp_pending = False
            rest = self.pp_buf[consumed:]
            self.pp_buf = b""
            ip, port = addr if addr is not None else (self.peer_ip, self.peer_port)
            self._identified(ip, port)
            if not rest or self.parser is None:
                return
            data = rest
        if self.parser is None:
            return
        n = len(data)
        if n <= FEED_SLICE:
            self._feed(data)
            return
        ex = self.parsing
        if ex is not None and ex.ctx is not None and not ex.chunked:
            self._feed(data)   # a Content-Length body: nothing to police inside it
            return
        # Heads and chunked bodies go to llhttp in slices so that chunk-extension
        # bytes (which llhttp skips without a callback) can be bounded between them.
        mv = memoryview(data)
        for i in range(0, n, FEED_SLICE):
            if self.dead or self.upgraded or self.tunnel is not None or self.parser is None:
                rest = bytes(mv[i:])
                if self.upgraded and self.tunnel is None:
                    self.held.append(rest)
                elif self.tunnel is not None:
                    self.tunnel.tunnel_client_data(rest)
                return
            self._feed(bytes(mv[i:i + FEED_SLICE]))

    def _feed(self, data: bytes) -> None:
        parser = self.parser
        assert parser is not None
        before = self.parsing
        body_before = before.body_seen if before is not None else 0
        parsed_before = self.parsed
        self.parser_ready = False
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            offset = int(e.args[0]) if e.args else len(data)
            self.upgraded = True
            rest = data[offset:]
            if rest:
                self.held.append(rest)
            return
        except httptools.HttpParserCallbackError as e:
            self._callback_failed(e.__context__ or e)
            return
        except httptools.HttpParserInvalidURLError:
            self._reject_connection(400, "invalid request target")
            return
        except httptools.HttpParserInvalidMethodError:
            # 9110 9.1: a well-formed but unknown method is 501; garbage is 400. The
            # method is known only when the message started at this chunk's start.
            at_start = before is None and self.parsed == parsed_before
            method = data.lstrip(b"\r\n").split(b" ", 1)[0] if at_start else b""
            if method and not method.translate(None, TCHAR):
                self._reject_connection(501, "unknown method")
            else:
                self._reject_connection(400, "malformed request: invalid method")
            return
        except httptools.HttpParserError as e:
            msg = str(e)
            if msg.startswith("Data after `Connection: close`"):
                # 9112 9.6: nothing after a request that asked to close is processed.
                self.dead = True
                self.parsing = None
                return
            status = 505 if msg == "Invalid HTTP version" else 400
            self._reject_connection(status, "malformed request: " + msg.split(":")[0][:80])
            return
        ex = self.parsing
        if ex is None or ex is not before or self.dead:
            return
        limits = self.node.snapshot.config.limits
        if ex.ctx is None:
            # All of `data` went into this still-incomplete head. httptools joins a
            # field split across reads, so bound the raw bytes too (1 GB header).
            ex.head_bytes += len(data)
            if ex.head_bytes > limits.max_header_bytes + limits.max_request_line:
                self._reject_connection(431, "request header block too large")
        elif ex.chunked:
            # Inside a chunked body: what is not body is chunk framing, extensions
            # and trailers. 9112 7.1.1: a server ought to limit extensions (4xx).
            ex.framing_bytes += len(data) - (ex.body_seen - body_before)
            if ex.framing_bytes > CHUNK_EXT_SLACK + 32 * ex.chunks + ex.trailer_bytes:
                self._reject_connection(400, "chunk extensions too long")

    def _callback_failed(self, cause: BaseException) -> None:
        """A parser callback raised `cause`: llhttp stopped at it."""
        if isinstance(cause, _StopParsing):
            return
        if isinstance(cause, Reject):
            self._reject_connection(cause.status, cause.reason)
        else:
            self.node.log_internal_error(cause)
            self._reject_connection(500, "internal error")

    # ------------------------------------------------------------------
    # httptools callbacks: buffer and signal
    # ------------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.dead:
            raise _StopParsing()   # closing: what follows in this read is not parsed
        ex = _new_exchange(self)   # Exchange(self), made in C when it was built
        self.parsing = ex
        if not self.head_started_at:
            self.head_started_at = self.last_active   # set by data_received, our caller
        if self.current is not None:
            # Pipelined: hold further bytes until this one's turn.
            self.pause_reading("pipelined")

    def on_url(self, url: bytes) -> None:
        ex = self.parsing
        assert ex is not None
        n = len(url)
        ex.url.append(url)
        ex.header_bytes += n
        ex.url_len += n
        if ex.url_len > ex.limits.max_request_line:
            raise Reject(414, "request target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        # The reference version: _hotpath.c replaces it (see the end of this
        # file) for the common field and hands it everything else.
        ex = self.parsing
        assert ex is not None
        limits = ex.limits
        if ex.ctx is not None or ex.state != PARSING:
            # A trailer field: never merged into the head, but bounded like one.
            ex.trailer_bytes += len(name) + len(value) + 4
            ex.trailer_count += 1
            if ex.trailer_bytes > limits.max_header_bytes or ex.trailer_count > limits.max_headers:
                raise Reject(431, "trailer section too large")
            return
        ln = name.lower()
        headers = ex.headers
        headers.append((ln, value))
        ex.names.append(name)
        if len(headers) > limits.max_headers:
            raise Reject(431, f"more than {limits.max_headers} header fields")
        ex.header_bytes += len(name) + len(value) + 4
        if ex.header_bytes > limits.max_header_bytes + ex.url_len:
            raise Reject(431, "request header block too large")
        if ln in _SPECIAL:
            if ln == b"host":
                ex.host_count += 1
                ex.host_value = value
            elif ln == b"content-length":
                ex.has_cl = True
            elif ln == b"transfer-encoding":
                # Every field line counts: "gzip" then "chunked" is "gzip, chunked".
                ex.te_value = value if ex.te_value is None else ex.te_value + b", " + value
            elif ln == b"connection":
                ex.conn_tokens |= connection_tokens(value)
            elif ln == b"expect":
                ex.expect = value.lower()
            elif ln == b"upgrade":
                ex.upgrade = value
        elif b"_" in ln and ln.replace(b"_", b"-") in _FRAMING:
            # A backend that maps "_" to "-" (CGI style) would frame or route by a
            # field the node ignored: the smuggling variant strict proxies refuse.
            raise Reject(400, f"invalid header field name {name[:40].decode('latin-1')!r}")

    def on_headers_complete(self) -> None:
        ex = self.parsing
        assert ex is not None
        parser = self.parser
        assert parser is not None
        self.head_started_at = 0.0
        self.body_last = self.last_active   # set by data_received, our caller
        ex.version = parser.get_http_version()
        ex.method = parser.get_method().decode("ascii", "replace")
        ex.keep_alive = parser.should_keep_alive()
        self.node.head_complete(self, ex)   # validates; raises Reject on a bad head
        if ex.declared_len <= 0 and not ex.chunked:
            # No body: the message is complete now (on_message_complete comes after
            # this returns), so an answer given during dispatch can keep the connection.
            ex.body_complete = True
        if self.current is None:
            self._activate(ex, parsing=True)
        else:
            ex.state = WAITING
            self.queue.append(ex)

    def on_chunk_header(self) -> None:
        ex = self.parsing
        if ex is not None:
            ex.chunks += 1

    def on_body(self, body: bytes) -> None:
        ex = self.parsing
        assert ex is not None
        self.body_last = self.node.now()
        ex.body_seen += len(body)
        if ex is self.current:
            ex.request_body(body)
        elif ex.state != DONE:
            ex.pending_body.append(body)   # a queued request: held until its turn

    def on_message_complete(self) -> None:
        ex = self.parsing
        assert ex is not None
        # llhttp takes another message after this one unless this one closed it
        # (Connection: close, HTTP/1.0, a Connection field in the trailer): asked
        # now, while it knows (its flags are reset after this callback).
        parser = self.parser
        self.parser_ready = parser is not None and parser.should_keep_alive()
        self.body_last = 0.0
        self.parsing = None
        self.parsed += 1
        if ex is self.current:
            ex.request_done()
        else:
            ex.body_complete = True

    # ------------------------------------------------------------------
    # request lifecycle
    # ------------------------------------------------------------------
    def _activate(self, ex: Exchange, parsing: bool = False) -> None:
        """Start answering `ex`. `parsing`: called from its own headers-complete
        callback, so llhttp reports the end of its message (on_message_complete
        -> request_done) right after this returns."""
        self.current = ex
        self.requests += 1
        held = ex.pending_body or None   # what arrived for it while it waited in the pipeline queue
        if held is not None:
            ex.pending_body = []
        ex.state = WAITING
        self.node.dispatch(self, ex)
        if held is not None:   # replayed now
            for chunk in held:
                if ex.state == DONE:
                    break
                ex.request_body(chunk)
        if ex.body_complete and ex.state != DONE and not parsing:
            ex.request_done()

    def keep_alive_after(self, ex: Exchange) -> bool:
        return ex.keep_alive and not self.closing and not self.node.draining

    def response_finished(self, ex: Exchange, close: bool, aborted: bool = False,
                          now: float = 0.0) -> None:
        # The response parser holds the exchange's bound callbacks: a cycle that
        # only the GC could free, ~25% of the node's CPU under load (measured by
        # loadtests/bench_nginx.py). Break it here, where every exchange ends.
        ex.resp_parser = None
        ctx = ex.ctx
        if not now:
            now = self.node.now()
        if ctx is not None:
            self.node.finish(ctx, now)
        self._response_over(ex, close, aborted, now)

    def _response_over(self, ex: Exchange, close: bool, aborted: bool, now: float) -> None:
        """What follows a finished response on this connection: response_finished's
        second half, after the node's finish (Exchange._done_plain calls it too)."""
        if self.current is not ex:
            return
        self.current = None
        if self.paused:
            # Pauses that belonged to this exchange's upstream end with it.
            self.resume_reading("upstream-full")
            self.resume_reading("connecting")
        t = self.transport
        if t is None or self.closed:
            return
        if aborted:
            self.closing = True
            t.abort()
            return
        if close or not ex.keep_alive or self.closing or self.node.draining:
            self._close()
            return
        self.last_active = now
        if self.advancing:
            return   # called from inside _advance (a synchronous answer): it goes on
        if self.queue or self.paused or self.upgraded or self.deferred is not None or self.client_eof:
            self._advance()   # else nothing waits: the next request starts when it arrives

    def _advance(self) -> None:
        """Start what comes next on a kept-alive connection. Iterative, not
        recursive: thousands of pipelined requests answered synchronously (404s)
        would otherwise nest response_finished -> dispatch -> response_finished."""
        self.advancing = True
        try:
            self._advance_once()
        finally:
            self.advancing = False

    def _advance_once(self) -> None:
        while True:
            while self.current is None and self.queue and not self.closing:
                self._activate(self.queue.popleft())
            if self.current is None and not self.queue and self.upgraded \
                    and not (self.closed or self.closing or self.dead):
                # The Upgrade request (always the last one parsed: llhttp stops
                # after it) was answered without a 101: what follows is HTTP again.
                self.upgraded = False
                self.parser = httptools.HttpRequestParser(self)
                held, self.held = self.held, []
                self.resume_reading("upgrade-held")
                for chunk in held:
                    if self.closed or self.closing or self.dead:
                        break
                    self.data_received(chunk)
                continue
            break
        if self.current is None and not self.closing and not self.closed:
            if self.deferred is not None:
                status, reason, failed = self.deferred
                self.deferred = None
                self._send_error_and_close(status, reason, failed)
                return
            if self.client_eof and self.parsing is None:
                self._close()
                return
        if not self.queue:
            self.resume_reading("pipelined")

    def fail_request(self, ex: Exchange, status: int, reason: str) -> None:
        """Answer an error for `ex` ourselves, before any response byte went out."""
        ctx = ex.ctx
        if ex.state == DONE:
            return
        ex.cancel()
        # After an error mid-body we cannot find the next request's start: close.
        close = (not ex.body_complete) or status in (400, 408, 413, 414, 431) or not ex.keep_alive
        if ctx is not None:
            ctx.status = status
            ctx.error = reason
        if ex is self.current or self.current is None:
            self.write(ex.error_bytes(status, reason, close=close))
        ex.state = DONE
        self.response_finished(ex, close=close)

    def _reject_connection(self, status: int, reason: str) -> None:
        """A protocol error: answer it (after the responses owed to earlier
        pipelined requests, in order) and close."""
        failed = self.parsing
        self.parsing = None
        self.dead = True   # llhttp cannot resume after an error: drop further input
        self.head_started_at = 0.0
        self.body_last = 0.0
        cur = self.current
        if failed is not None and failed is not cur and failed in self.queue:
            self.queue.remove(failed)
        if cur is not None and cur is not failed:
            # Earlier requests are still being answered: this error is owed after them.
            if self.deferred is None:
                self.deferred = (status, reason, failed)
            self.pause_reading("dead")
            return
        if cur is not None and cur.resp_head_sent:
            # Its response is under way (the body was malformed after the backend
            # answered): nothing can be said any more but to close.
            cur.cancel()
            if cur.ctx is not None:
                cur.ctx.error = reason
            self.response_finished(cur, close=True, aborted=True)
            return
        if cur is not None:
            cur.cancel()
            self.current = None
        self.queue.clear()
        self._send_error_and_close(status, reason, failed)

    def _send_error_and_close(self, status: int, reason: str, ex: Exchange | None) -> None:
        if ex is not None and ex.ctx is None:
            ex.ctx = self.node.bare_context(self, ex)
        rid = ex.ctx.request_id if ex is not None and ex.ctx is not None else self.node.next_request_id()
        if ex is not None and ex.ctx is not None:
            ex.ctx.status = status
            ex.ctx.error = reason
            if ex.state != DONE:
                ex.cancel()
                self.node.finish(ex.ctx)
        head_only = ex is not None and ex.method == "HEAD"
        self.write(error_response(status, reason, rid, close=True, head_only=head_only))
        self.dead = True
        self._close()

    def _close(self) -> None:
        """Close after the last response: send it, then read and drop what the
        client still sends (up to LINGER_S) before closing. Closing with unread
        input makes the kernel send a RST, which can destroy the response (a 413
        to a client still uploading) before the client reads it."""
        t = self.transport
        self.closing = True
        self.dead = True
        if t is None or self.closed or self.eof_sent:
            return
        if self.client_eof or not t.can_write_eof():
            t.close()   # the client sent everything already (or TLS: no half-close)
            return
        self.paused.clear()
        try:
            t.resume_reading()
        except RuntimeError:
            pass
        t.write_eof()
        self.eof_sent = True
        self.linger_until = self.node.now() + LINGER_S

    # ------------------------------------------------------------------
    # tunnels (WebSocket and other upgrades)
    # ------------------------------------------------------------------
    def enter_tunnel(self, ex: Exchange) -> None:
        self.tunnel = ex
        self.upgraded = False
        held, self.held = self.held, []
        self.resume_reading("upgrade-held")
        self.resume_reading("pipelined")
        if self.write_paused and ex.up is not None:
            ex.up.pause_reading()
        for chunk in held:
            ex.tunnel_client_data(chunk)

    def upstream_tunnel_eof(self) -> None:
        ex = self.tunnel
        self.tunnel = None
        if ex is not None:
            ex.resp_parser = None
        if ex is not None and ex.ctx is not None and ex.state != DONE:
            ex.state = DONE
            self.node.finish(ex.ctx)
        self.current = None
        if self.transport is not None:
            self.closing = True
            self.transport.close()

    def eof_received(self) -> bool | None:
        if self.tunnel is not None:
            up = self.tunnel.up
            if up is not None and up.transport is not None and up.transport.can_write_eof():
                up.transport.write_eof()
                return True   # half-close: keep reading the backend's side
            return False
        if self.linger_until or self.dead:
            return False
        if self.current is not None and self.parsing is None and self.current.body_complete:
            # The client half-closed after a complete request (printf | nc): answer
            # it (and any pipelined ones) before closing.
            self.client_eof = True
            return True
        return False

    # ------------------------------------------------------------------
    # timers, run by the node's sweeper (one timer for all connections)
    # ------------------------------------------------------------------
    def sweep(self, now: float, limits: object) -> None:
        from .config import Limits
        assert isinstance(limits, Limits)
        t = self.transport
        if self.closed or t is None:
            return
        if self.linger_until:
            if now > self.linger_until:
                t.abort()
            return
        if self.tunnel is not None:
            return
        if self.head_started_at and self.paused:
            self.head_started_at = now   # a pipelined head we stopped reading: not slow
        elif self.head_started_at and now - self.head_started_at > limits.header_timeout_s:
            # Slowloris: the whole head must arrive in time, however it trickles.
            if self.parsing is not None or self.pp_pending:
                self._reject_connection(408, "request header timeout")
            elif self.current is None and not self.queue:
                self.closing = True
                t.abort()   # nothing sent at all: no answer owed
            return
        ex = self.parsing
        if self.body_last and ex is not None and ex.ctx is not None:
            idle = now - self.body_last
            if "upstream-full" in self.paused:
                # We stopped reading the client because the backend stopped reading
                # us: not the client's fault (no 408); nginx's proxy_send_timeout.
                if ex is self.current and idle > self.node.snapshot.config.upstream.response_timeout_s:
                    if ex.resp_head_sent:
                        ex.cancel()
                        self.response_finished(ex, close=True, aborted=True)
                    else:
                        ex.upstream_send_timeout()
                    return
            elif self.paused:
                # We are not reading (a pipelined request waits its turn, or a
                # connect is in progress): the client is not idle.
                self.body_last = now
            elif idle > limits.body_idle_timeout_s:
                if ex is self.current and ex.resp_head_sent:
                    ex.cancel()
                    ex.ctx.error = "request body timeout"
                    self.response_finished(ex, close=True, aborted=True)
                else:
                    self._reject_connection(408, "request body timeout")
                return
        if self.current is None and self.parsing is None and not self.queue \
                and now - self.last_active > limits.keepalive_timeout_s:
            self.closing = True
            t.close()

    def close_if_idle(self) -> None:
        if self.current is None and self.parsing is None and self.transport is not None \
                and not self.closing:
            self.closing = True
            self.transport.close()


class _StopParsing(Exception):
    """Raised from a parser callback to stop llhttp: the connection is closing."""


_SPECIAL = frozenset({b"host", b"content-length", b"transfer-encoding", b"connection",
                      b"expect", b"upgrade"})
_FRAMING = frozenset({b"host", b"content-length", b"transfer-encoding"})
FEED_SLICE = 16 * 1024       # llhttp is fed heads and chunked bodies this much at a time
CHUNK_EXT_SLACK = 16 * 1024  # chunk framing allowed beyond 32 bytes per chunk (extensions)
LINGER_S = 2.0               # after our last response, drain client input this long


# The header callbacks in C (proxy/_hotpath.c) when it was built, for the
# request (here) and the response (Exchange.on_header, set here too: the C
# module needs both classes): same results, several times cheaper a field;
# each hands its Python method (kept as _on_header_py, the reference) every
# field it does not handle itself.
Downstream._on_header_py = Downstream.on_header   # type: ignore[attr-defined]
Exchange._on_header_py = Exchange.on_header       # type: ignore[attr-defined]


def _setup_c(hotpath: Any) -> tuple[Any, Any, Any]:
    from .config import Limits   # frozen: the C reads its two limits once per config
    on_header = hotpath.setup(Downstream, Exchange, PARSING, Downstream._on_header_py, Limits)  # type: ignore[attr-defined]
    on_response_header = hotpath.setup_response(Exchange, UPSTREAM_HEAD_LIMIT,
                                                Exchange._on_header_py)  # type: ignore[attr-defined]
    # Exchange(down) in C copies the slots of one Exchange made by __init__,
    # from a stand-in connection whose node and limits it can tell apart.
    down = Downstream.__new__(Downstream)
    limits = object()
    down.node = types.SimpleNamespace(  # type: ignore[assignment]
        snapshot=types.SimpleNamespace(config=types.SimpleNamespace(limits=limits)))
    from .snapshot import Snapshot   # frozen, as its config: the C reads a snapshot's limits once
    new_exchange = hotpath.setup_exchange(Exchange(down), down, down.node, limits, Snapshot)
    return on_header, on_response_header, new_exchange


_new_exchange: Any = Exchange
_c = attach("proxy._hotpath", _setup_c)
if _c is not None:
    Downstream.on_header, Exchange.on_header, _new_exchange = _c  # type: ignore[method-assign]


# --- C: Exchange's response callbacks (proxy/_response.c), set up in exchange.py ---
# Here the C learns Downstream, to inline keep_alive_after (while it is this
# method) instead of calling it.
from .exchange import _c_response as _response_c, _feed_fast  # noqa: E402

if _response_c is not None:
    attach("proxy._response", lambda c: c.setup_down(Downstream, Downstream.keep_alive_after))

# --- C: a read from a backend (proxy/_response.c) ---
# UpstreamConnection.data_received with Exchange.upstream_data's steps, and a
# plain response's end (_read_over, _done_plain, Downstream.write and
# _response_over) in C; every other case calls these Python methods, kept
# as the reference (the original data_received as _data_received_py).
UpstreamConnection._data_received_py = vars(UpstreamConnection).get(   # type: ignore[attr-defined]
    "_data_received_py", UpstreamConnection.data_received)   # (a second import of this module: kept)
if _response_c is not None and _feed_fast is not None:
    _up_read = attach("proxy._response", lambda c: c.setup_read(
        UpstreamConnection, BackendPool, Downstream, deque, httptools.HttpParserError, _feed_fast,
        (SENT, RESPONDING, TUNNEL, DONE), UpstreamConnection._data_received_py,  # type: ignore[attr-defined]
        (Exchange.upstream_data, Exchange._read_over, Exchange._done_plain),
        (Downstream.write, Downstream._response_over)))
    if _up_read is not None:
        UpstreamConnection.data_received = _up_read  # type: ignore[method-assign]


# --- C: the request head's callbacks (proxy/_request.c) ---
# on_url, on_message_begin, on_headers_complete and on_message_complete in C
# when it was built: the same steps on the same attributes; each hands its
# Python method (kept as _<name>_py, the reference) what it does not handle
# (a URL over the limit, a dead connection, no exchange, odd types).
Downstream._on_url_py = Downstream.on_url                              # type: ignore[attr-defined]
Downstream._on_message_begin_py = Downstream.on_message_begin          # type: ignore[attr-defined]
Downstream._on_headers_complete_py = Downstream.on_headers_complete    # type: ignore[attr-defined]
Downstream._on_message_complete_py = Downstream.on_message_complete    # type: ignore[attr-defined]
_request_c = attach("proxy._request", lambda c: c.setup_down(
    Downstream, Exchange, globals(), WAITING, Downstream._on_url_py,  # type: ignore[attr-defined]
    Downstream._on_message_begin_py, Downstream._on_headers_complete_py,  # type: ignore[attr-defined]
    Downstream._on_message_complete_py))  # type: ignore[attr-defined]
if _request_c is not None:
    (Downstream.on_url, Downstream.on_message_begin,  # type: ignore[method-assign]
     Downstream.on_headers_complete, Downstream.on_message_complete) = _request_c  # type: ignore[method-assign]


# --- C: data_received's common case (proxy/_request.c) ---
# A read that is exactly one plain GET/HEAD head on a connection at rest is
# recognised in C, which makes llhttp's callbacks itself (see _request.c for
# the subset); every other read goes to this Python method and llhttp.
Downstream._data_received_py = Downstream.data_received   # type: ignore[attr-defined]
if _request_c is not None:
    from .config import Limits   # frozen: the C reads its limits once per config
    attach("proxy._request", lambda c: c.setup_fast(
        Downstream, PARSING, _SPECIAL, FEED_SLICE, Downstream._data_received_py, Limits))  # type: ignore[attr-defined]
