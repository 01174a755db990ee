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
from collections import deque
from typing import TYPE_CHECKING

import httptools

from .context import RequestContext
from .exchange import DONE, PARSING, TUNNEL, WAITING, Exchange
from .http11 import HOP_BY_HOP, connection_tokens, error_response, split_host, valid_host
from .proxyproto import ProxyHeaderError, parse_proxy_header

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
        "client_port", "geo", "trusted_peer", "pp_buf", "pp_pending", "paused", "closing",
        "current", "parsing", "queue", "last_active", "head_started_at", "body_last",
        "tunnel", "held", "upgraded", "requests", "route_acl_memo", "closed",
    )

    def __init__(self, node: "Node", listener: "Listener") -> None:
        self.node = node
        self.listener = listener
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
        self.route_acl_memo: dict[str, bool] = {}

    # ------------------------------------------------------------------
    # connection
    # ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  (uvloop's is not a subclass)
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
        if not node.connection_opened(self):
            transport.abort()
            self.closed = True
            return
        if self.listener.proxy_protocol:
            if not self.listener.proxy_from(self.peer_ip):
                # PROXY headers are believed only from the configured L4 tier.
                transport.abort()
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
        self.current = None
        self.queue.clear()
        self.node.connection_closed(self)

    def pause_writing(self) -> None:
        # Our send buffer to the client is full: stop reading the backend.
        ex = self.tunnel or self.current
        if ex is not None and ex.up is not None:
            ex.up.pause_reading()

    def resume_writing(self) -> None:
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
        if t is not None and not self.closed:
            t.write(data)

    # ------------------------------------------------------------------
    # bytes in
    # ------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        self.last_active = self.node.now()
        if self.tunnel is not None:
            self.tunnel.tunnel_client_data(data)
            return
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
            self.head_started_at = 0.0
            rest = self.pp_buf[consumed:]
            self.pp_buf = b""
            ip, port = addr if addr is not None else (self.peer_ip, self.peer_port)
            self._identified(ip, port)
            if not rest or self.parser is None:
                return
            data = rest
        if self.parser is None:
            return
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        parser = self.parser
        assert parser is not None
        ex = self.parsing
        if ex is not None and ex.ctx is None:
            # Inside a request head: bound its total size (llhttp buffers nothing,
            # but httptools joins split header pieces; this stops a 1 GB header).
            ex.head_bytes += len(data)
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
            cause = e.__context__
            if isinstance(cause, Reject):
                self._reject_connection(cause.status, cause.reason)
            else:
                self.node.log_internal_error(cause or e)
                self._reject_connection(500, "internal error")
            return
        except httptools.HttpParserInvalidURLError:
            self._reject_connection(400, "invalid request target")
            return
        except httptools.HttpParserError as e:
            msg = str(e)
            if "HTTP version" in msg:
                status = 505
            elif msg.startswith("Request has invalid `Transfer-Encoding`"):
                status = 501   # RFC 9112 6.1: a transfer coding we do not understand
            else:
                status = 400
            self._reject_connection(status, "malformed request: " + msg.split(":")[0][:80])
            return
        ex = self.parsing
        limits = self.node.snapshot.config.limits
        if ex is not None and ex.ctx is None and ex.state == PARSING and \
                ex.head_bytes > limits.max_header_bytes + limits.max_request_line:
            self._reject_connection(431, "request header block too large")

    # ------------------------------------------------------------------
    # httptools callbacks: buffer and signal
    # ------------------------------------------------------------------
    def on_message_begin(self) -> None:
        ex = Exchange(self)
        self.parsing = ex
        self.head_started_at = self.node.now()
        if self.current is not None:
            # Pipelined: hold further bytes until this one's turn.
            self.pause_reading("pipelined")

    def on_url(self, url: bytes) -> None:
        ex = self.parsing
        assert ex is not None
        ex.url.append(url)
        if sum(map(len, ex.url)) > self.node.snapshot.config.limits.max_request_line:
            raise Reject(414, "request target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        ex = self.parsing
        assert ex is not None
        if ex.ctx is not None or ex.state != PARSING:
            return   # a trailer field: dropped (never merged into the head)
        ln = name.lower()
        ex.headers.append((ln, name, value))
        limits = self.node.snapshot.config.limits
        if len(ex.headers) > limits.max_headers:
            raise Reject(431, f"more than {limits.max_headers} header fields")
        if ln in _SPECIAL:
            if ln == b"host":
                ex.host_count += 1
                ex.host_value = value
            elif ln == b"content-length":
                ex.has_cl = True
            elif ln == b"transfer-encoding":
                ex.te_value = value
            elif ln == b"connection":
                ex.conn_tokens |= connection_tokens(value)
            elif ln == b"expect":
                ex.expect = value.lower()
            elif ln == b"upgrade":
                ex.upgrade = value

    def on_headers_complete(self) -> None:
        ex = self.parsing
        assert ex is not None
        parser = self.parser
        assert parser is not None
        self.head_started_at = 0.0
        self.body_last = self.node.now()
        ex.version = parser.get_http_version()
        ex.method = parser.get_method().decode("ascii", "replace")
        ex.keep_alive = parser.should_keep_alive()
        self.node.head_complete(self, ex)   # validates; raises Reject on a bad head
        if self.current is None:
            self._activate(ex)
        else:
            ex.state = WAITING
            self.queue.append(ex)

    def on_body(self, body: bytes) -> None:
        ex = self.parsing
        assert ex is not None
        self.body_last = self.node.now()
        if ex is self.current:
            ex.request_body(body)
        elif ex.state != DONE:
            ex.pending_body.append(body)   # a queued request: held until its turn

    def on_message_complete(self) -> None:
        ex = self.parsing
        assert ex is not None
        self.body_last = 0.0
        if ex is self.current:
            ex.request_done()
        else:
            ex.body_complete = True
        self.parsing = None

    # ------------------------------------------------------------------
    # request lifecycle
    # ------------------------------------------------------------------
    def _activate(self, ex: Exchange) -> None:
        self.current = ex
        self.requests += 1
        held = ex.pending_body
        done = ex.body_complete
        if held or (ex.state == WAITING and done):
            ex.pending_body = []
            ex.body_complete = False
        ex.state = WAITING
        self.node.dispatch(self, ex)
        # Replay what arrived for it while it waited in the pipeline queue.
        if held:
            for chunk in held:
                if ex.state == DONE:
                    break
                ex.request_body(chunk)
        if done and ex.state != DONE:
            ex.request_done()

    def keep_alive_after(self, ex: Exchange) -> bool:
        return ex.keep_alive and not self.closing and not self.node.draining

    def response_finished(self, ex: Exchange, close: bool, aborted: bool = False) -> None:
        ctx = ex.ctx
        if ctx is not None:
            self.node.finish(ctx)
        if self.current is not ex:
            return
        self.current = None
        t = self.transport
        if t is None or self.closed:
            return
        if aborted or close or not self.keep_alive_after(ex):
            self.closing = True
            if aborted:
                t.abort()
            else:
                t.close()
            return
        self.last_active = self.node.now()
        if self.upgraded:
            # The Upgrade was refused (no 101): bytes after its head are the next request.
            self.upgraded = False
            self.parser = httptools.HttpRequestParser(self)
            held, self.held = self.held, []
            self.resume_reading("upgrade-held")
            for chunk in held:
                if self.closed or self.closing:
                    return
                self._feed(chunk)
        if self.queue:
            nxt = self.queue.popleft()
            self._activate(nxt)
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
        """A protocol error: answer (if no response is under way) and close."""
        ex = self.parsing or self.current
        if self.current is not None and self.current.resp_head_sent:
            if self.transport is not None:
                self.transport.close()
            self.closing = True
            return
        if ex is not None and ex.ctx is None:
            ex.ctx = self.node.bare_context(self, ex)
        if ex is not None and ex.ctx is not None:
            ex.ctx.status = status
            ex.ctx.error = reason
            if ex.state != DONE:
                ex.cancel()
                self.node.finish(ex.ctx)
        rid = ex.ctx.request_id if ex is not None and ex.ctx is not None else self.node.next_request_id()
        if self.transport is not None and not self.closed:
            self.transport.write(error_response(status, reason, rid, close=True))
            self.transport.close()
        self.closing = True
        self.current = None
        self.parsing = None
        self.queue.clear()

    # ------------------------------------------------------------------
    # tunnels (WebSocket and other upgrades)
    # ------------------------------------------------------------------
    def enter_tunnel(self, ex: Exchange) -> None:
        self.tunnel = ex
        self.upgraded = False
        held, self.held = self.held, []
        self.resume_reading("upgrade-held")
        for chunk in held:
            ex.tunnel_client_data(chunk)

    def upstream_tunnel_eof(self) -> None:
        ex = self.tunnel
        self.tunnel = None
        if ex is not None and ex.ctx is not None:
            ex.state = DONE
            self.node.finish(ex.ctx)
        self.current = None
        if self.transport is not None:
            self.transport.close()

    def eof_received(self) -> bool | None:
        if self.tunnel is not None:
            up = self.tunnel.up
            if up is not None and up.transport is not None and up.transport.can_write_eof():
                up.transport.write_eof()
                return True   # half-close: keep reading the backend's side
        return False

    # ------------------------------------------------------------------
    # timers, run by the node's sweeper (one timer for all connections)
    # ------------------------------------------------------------------
    def sweep(self, now: float, limits: object) -> None:
        from .config import Limits
        assert isinstance(limits, Limits)
        if self.closed or self.transport is None:
            return
        if self.tunnel is not None:
            return
        if self.head_started_at and now - self.head_started_at > limits.header_timeout_s:
            # Slowloris: the whole head must arrive in time, however it trickles.
            ex = self.parsing
            if ex is not None or self.pp_pending:
                self._reject_connection(408, "request header timeout")
            else:
                self.transport.abort()
            return
        if self.body_last and self.parsing is not None and self.parsing.ctx is not None \
                and now - self.body_last > limits.body_idle_timeout_s:
            ex = self.parsing
            if ex is self.current and not ex.resp_head_sent:
                ex.cancel()
                ex.ctx.status = 408  # type: ignore[union-attr]
                self.write(error_response(408, "request body timeout", ex.ctx.request_id, close=True))  # type: ignore[union-attr]
                ex.state = DONE
                self.response_finished(ex, close=True)
            else:
                self.transport.abort()
            return
        if self.current is None and self.parsing is None and not self.queue \
                and now - self.last_active > limits.keepalive_timeout_s:
            self.closing = True
            self.transport.close()

    def close_if_idle(self) -> None:
        if self.current is None and self.parsing is None and self.transport is not None:
            self.closing = True
            self.transport.close()


_SPECIAL = frozenset({b"host", b"content-length", b"transfer-encoding", b"connection",
                      b"expect", b"upgrade"})
HOP = HOP_BY_HOP
__all__ = ["Downstream", "Reject", "RequestContext", "split_host", "valid_host", "TUNNEL"]
