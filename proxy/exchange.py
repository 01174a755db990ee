"""One request and its response, carried between a client and a backend.

Phases, in order, and their contracts (tests/integration/test_phases.py checks
the order through the access log's verdicts):

1. ``Downstream.head_complete`` (parse + identify): validates framing and the
   head; returns an error status or builds the RequestContext. No I/O.
2. ``Node.protect`` (ACL, rate limits, detector): may answer 403/429; nothing
   has been sent upstream yet, so an early answer costs nothing.
3. ``Node.route`` (route match, region and backend choice): may answer 404
   (no route), 413 (declared body too large) or 503 (no backend / region).
4. ``Exchange.start`` (forward): takes a warm pooled connection synchronously
   or connects. Called again on retry, with the failed backend excluded; a
   retry happens only if no byte of the request can have reached a backend,
   or the request is idempotent and its body is still held in full.
5. ``Exchange.finish`` (log): always runs exactly once, on success, on error
   and on client abort; it hands the context to the access log and metrics.
"""
from __future__ import annotations

import asyncio
from types import MappingProxyType, ModuleType
from typing import TYPE_CHECKING, Callable

import httptools

from ._accel import attach
from .http11 import CONTINUE_100, HOP_BY_HOP, REASONS, connection_tokens, error_response
from .balance.cluster import on_start
from .upstream import BackendPool, PoolLimitReached, UpstreamConnection

if TYPE_CHECKING:
    from .context import RequestContext
    from .downstream import Downstream
    from .balance.backend import BackendState as Backend
    from .node import Node

REPLAY_LIMIT = 64 * 1024      # request body kept for a safe retry
UPSTREAM_HEAD_LIMIT = 64 * 1024   # a backend's response head (or trailers): 502 beyond
BODY_HIGH_WATER = 256 * 1024  # buffered body while connecting: pause the client past this

# Exchange.state
PARSING, WAITING, CONNECTING, SENT, RESPONDING, TUNNEL, DONE = range(7)


class Exchange:
    __slots__ = (
        # per-request parse state (filled by Downstream's parser callbacks)
        "down", "url", "headers", "host_value", "host_count", "has_cl", "chunked",
        "conn_tokens", "expect", "upgrade", "te_value", "head_bytes", "body_complete",
        "method", "version", "keep_alive", "pending_body", "body_seen", "header_bytes",
        "limits", "url_len", "names",
        "trailer_bytes", "trailer_count", "chunks", "framing_bytes", "host_missing",
        # per-request proxy state
        "node", "ctx", "state", "req_head", "body_chunked_out", "replay", "replayable",
        "body_forwarded", "up", "backend", "pool", "tried", "timer",
        "resp_parser", "resp_status", "resp_reason", "resp_headers", "resp_head_sent",
        "resp_out_chunked", "resp_close_after", "resp_complete", "resp_no_body",
        "resp_upgrade_at", "resp_raw_left", "want_upgrade", "max_body",
        "declared_len", "attempt_start", "reused", "last_failure", "resp_close_delimited",
        "last_read", "resp_keep_alive", "out", "head_unflushed", "pending_len",
        "resp_head_bytes", "resp_raw_head", "accounted",
    )

    def __init__(self, down: "Downstream") -> None:
        self.down = down
        self.node: Node = down.node
        self.url: list[bytes] = []
        # (lower-case name, value) as received; shared with the RequestContext, no copy.
        self.headers: list[tuple[bytes, bytes]] = []
        self.names: list[bytes] = []         # the same fields' names as the client wrote them
        self.host_value: bytes | None = None
        self.host_count = 0
        self.has_cl = False
        self.chunked = False
        self.conn_tokens: set[bytes] = set()
        self.expect: bytes | None = None
        self.upgrade: bytes | None = None
        self.te_value: bytes | None = None
        self.head_bytes = 0
        self.body_complete = False
        self.method = ""
        self.version = "1.1"
        self.keep_alive = True
        self.pending_body: list[bytes] = []  # body chunks not yet sent upstream
        self.body_seen = 0                   # request body bytes parsed so far
        self.header_bytes = 0                # request target + header fields, as parsed
        self.url_len = 0                     # request target bytes, as parsed
        # Limits of the snapshot the request started under: read once, not per header.
        self.limits = down.node.snapshot.config.limits
        self.trailer_bytes = 0
        self.trailer_count = 0
        self.chunks = 0                      # chunk headers parsed (chunked bodies)
        self.framing_bytes = 0               # chunked body bytes that were not data
        self.host_missing = False            # no Host to forward (HTTP/1.0): use the backend's
        self.ctx: RequestContext | None = None
        self.state = PARSING
        self.req_head = b""
        self.body_chunked_out = False
        self.replay: list[bytes] | None = []
        self.replayable = True
        self.body_forwarded = False
        self.up: UpstreamConnection | None = None
        self.backend: Backend | None = None
        self.pool: BackendPool | None = None
        self.tried: set[str] = set()
        # Response deadline (monotonic; 0.0: none), enforced by the node's
        # deadline ticker: a loop.call_later per request cost ~2 us of the hot
        # path (create + cancel); a float and a set add/discard cost ~0.2 us.
        self.timer = 0.0
        self.resp_parser: httptools.HttpResponseParser | _Unfed | None = None
        self.resp_status = 0
        self.resp_reason = b""
        self.resp_headers: list[tuple[bytes, bytes]] = []
        self.resp_head_sent = False
        self.resp_out_chunked = False
        self.resp_close_after = False
        self.resp_complete = False
        self.resp_no_body = False
        self.resp_upgrade_at = -1
        self.resp_raw_left = b""
        self.want_upgrade = False
        self.max_body = 0
        self.declared_len = -1
        self.attempt_start = 0.0
        self.reused = False                  # the current attempt runs on a pooled connection
        self.last_failure: tuple[int, str] | None = None
        self.resp_close_delimited = False    # the backend's body ends when it closes
        self.last_read = 0.0                 # last response bytes from the backend
        self.resp_keep_alive = False         # read at headers-complete: llhttp resets it after
        self.out: list[bytes] = []           # response bytes parsed from one read, not yet written
        self.head_unflushed = False          # the response head is in `out`, not on the wire
        self.pending_len = 0                 # bytes in pending_body (while connecting)
        self.resp_head_bytes = 0             # response head (and trailer) bytes from the backend
        self.resp_raw_head = 0               # raw bytes of reads that ended inside a head
        self.accounted = True                # the balancer told the current attempt ended

    # ------------------------------------------------------------------
    # request body, from the client
    # ------------------------------------------------------------------
    def request_body(self, data: bytes) -> None:
        ctx = self.ctx
        if ctx is None or self.state == DONE:
            return
        ctx.bytes_in += len(data)
        if ctx.bytes_in > self.max_body:
            if self.resp_head_sent:
                self._abort_both("request body too large")   # too late for a 413
            else:
                self.down.fail_request(self, 413, f"request body over {self.max_body} bytes")
            return
        if self.replay is not None:
            if ctx.bytes_in <= REPLAY_LIMIT:
                self.replay.append(data)
            else:
                self.replay = None
        chunk = b"%x\r\n%b\r\n" % (len(data), data) if self.body_chunked_out else data
        up = self.up
        if up is not None and self.state >= SENT and up.transport is not None:
            up.transport.write(chunk)
            self.body_forwarded = True
        else:
            self.pending_body.append(chunk)
            self.pending_len += len(chunk)
            if self.pending_len > BODY_HIGH_WATER:
                self.down.pause_reading("connecting")

    def request_done(self) -> None:
        """The client's request message is complete (body included)."""
        self.body_complete = True
        if self.body_chunked_out:
            tail = b"0\r\n\r\n"
            up = self.up
            if up is not None and self.state >= SENT and up.transport is not None:
                up.transport.write(tail)
            else:
                self.pending_body.append(tail)
        if self.state >= SENT and not self.timer and not self.resp_head_sent:
            self._arm_response_timer()

    # ------------------------------------------------------------------
    # forward: pick a backend, take or open a connection, send the head
    # ------------------------------------------------------------------
    def start(self, now: float = 0.0) -> None:
        """`now`: the caller's clock reading in this same callback, if it has one
        (a monotonic() call is ~0.1 us; the hot path used to make 15)."""
        node = self.node
        ctx = self.ctx
        assert ctx is not None
        if not now:
            now = node.now()
        choice = node.selector.pick(ctx, self.tried, now)
        if isinstance(choice, tuple):
            # On a retry with nothing left to try, the failure that caused it says more.
            status, reason = self.last_failure or choice
            self.down.fail_request(self, status, reason)
            return
        backend = choice
        self.backend = backend
        self.tried.add(backend.id)
        ctx.backend = backend.id
        ctx.region = backend.region
        pool = node.pools.get(backend.id) or node.pool_for(backend)
        self.pool = pool
        self.attempt_start = now
        if ctx.upstream_start == 0.0:
            ctx.upstream_start = now
        on_start(backend)
        self.accounted = False
        # A retry after a pooled connection failed uses a fresh one: the others
        # in the pool are as old, and may be as dead.
        fresh_only = ctx.retries > 0 and self.reused
        conn = None if fresh_only else pool.take_idle(now)
        self.reused = conn is not None
        if conn is not None:
            self._attach(conn, now)
            return
        self.state = CONNECTING
        node.loop.create_task(self._connect(pool))

    async def _connect(self, pool: BackendPool) -> None:
        node = self.node
        try:
            conn = await pool.connect(node.loop, node.snapshot.config.upstream.connect_timeout_s)
        except PoolLimitReached:
            self._upstream_failed("upstream-connection-limit", 503, retry_ok=True, sent=False)
            return
        except asyncio.TimeoutError:
            pool.connect_failures += 1
            self._upstream_failed("upstream-connect-timeout", 504, retry_ok=True, sent=False)
            return
        except OSError as e:
            pool.connect_failures += 1
            name = "upstream-connect-refused" if isinstance(e, ConnectionRefusedError) else "upstream-connect-failed"
            self._upstream_failed(name, 502, retry_ok=True, sent=False)
            return
        if self.state == DONE:   # the client went away meanwhile
            pool.release(conn, node.now())
            return
        self._attach(conn)

    def _attach(self, conn: UpstreamConnection, now: float = 0.0) -> None:
        self.up = conn
        conn.exchange = self
        self.state = SENT
        # llhttp's parser is made when the first read needs it: a whole plain
        # response is parsed by _response.c without one (_feed_fast)
        self.resp_parser = UNFED
        t = conn.transport
        assert t is not None
        if self.host_missing and self.backend is not None:
            b = self.backend
            host = (f"[{b.host}]" if ":" in b.host else b.host) + f":{b.port}"
            self.req_head = self.req_head.replace(b"\r\n", b"\r\nHost: " + host.encode() + b"\r\n", 1)
            self.host_missing = False
        if self.down.write_paused:
            conn.pause_reading()   # the client is not keeping up: do not read its response yet
        if self.pending_body:
            t.write(self.req_head + b"".join(self.pending_body))
            self.pending_body = []
            self.pending_len = 0
            self.body_forwarded = True
            self.down.resume_reading("connecting")
        else:
            t.write(self.req_head)
        if self.body_complete or self.want_upgrade:
            self._arm_response_timer(now)

    def _arm_response_timer(self, now: float = 0.0) -> None:
        node = self.node
        self.timer = (now or node.now()) + node.snapshot.response_timeout_s
        node.deadlines.add(self)

    def _clear_timer(self) -> None:
        self.timer = 0.0
        self.node.deadlines.discard(self)

    def _response_timeout(self) -> None:
        self._clear_timer()
        if self.state in (SENT, RESPONDING) and not self.resp_head_sent:
            self._upstream_failed("upstream-response-timeout", 504, retry_ok=False, sent=True)
        elif self.state == RESPONDING:
            # Mid-body the same timeout bounds the gap between two reads (nginx's
            # proxy_read_timeout); one lazily re-armed timer, not one per read.
            limit = self.node.snapshot.config.upstream.response_timeout_s
            now = self.node.now()
            idle = now - self.last_read
            up = self.up
            down = self.down
            if down.write_paused and \
                    now - down.write_paused_since > self.node.snapshot.config.limits.body_idle_timeout_s:
                # The client stopped reading (nginx's send_timeout): let both go.
                self._abort_both("client-send-timeout")
                return
            if (up is not None and up.paused_by_client) or idle < limit:
                self.timer = now + (max(limit - idle, 0.05) if idle < limit else limit)
                self.node.deadlines.add(self)
            else:
                self._abort_both("upstream-read-timeout")

    def upstream_send_timeout(self) -> None:
        """The backend stopped reading the request body (we held the client back)."""
        self._upstream_failed("upstream-send-timeout", 504, retry_ok=False, sent=True)

    def _can_retry(self, sent: bool, counted: bool = True) -> bool:
        ctx = self.ctx
        assert ctx is not None
        if self.resp_head_sent or (counted and ctx.retries >= self.node.snapshot.config.upstream.retries):
            return False
        if not sent and not self.body_forwarded:
            return True   # nothing reached any backend
        # It may have reached the backend: only idempotent requests whose body we still hold.
        return (ctx.method in IDEMPOTENT_RETRY and not ctx.is_write
                and self.replay is not None and (self.body_complete or ctx.bytes_in == 0))

    def _upstream_failed(self, reason: str, status: int, *, retry_ok: bool, sent: bool) -> None:
        if self.state == DONE:
            return
        ctx = self.ctx
        assert ctx is not None
        self._drop_upstream()
        stale = self.reused and sent and reason == "upstream-reset-before-response"
        if self.backend is not None:
            # A stale pooled connection or our own connection cap says nothing
            # about the backend's health.
            if status == 504:
                outcome = "timeout"
            elif stale or reason == "upstream-connection-limit":
                outcome = "cancelled"
            else:
                outcome = "connect_error"
            self._finish_attempt(outcome)
            if stale:
                # Most likely a keep-alive connection the backend had just timed
                # out, not a broken backend: the retry may go to it again.
                self.tried.discard(self.backend.id)
        self.last_failure = (status, reason)
        if retry_ok and self._can_retry(sent, counted=not stale):
            # A stale pooled connection does not use up a retry: it tells nothing
            # about the backends, and the pool holds only so many of them.
            if not stale:
                ctx.retries += 1
            ctx.verdicts.append("retry:" + reason)
            self._reset_for_retry()
            self.start()
            return
        if self.resp_head_sent:
            self._abort_both(reason)
        else:
            self.down.fail_request(self, status, reason)

    def _reset_for_retry(self) -> None:
        self.state = WAITING
        self.resp_parser = None
        self.resp_status = 0
        self.resp_reason = b""
        self.resp_headers = []
        self.resp_complete = False
        self.resp_keep_alive = False
        self.resp_close_delimited = False
        self.out = []
        self.head_unflushed = False
        if self.replay is not None:
            body = b"".join(self.replay)
            pieces: list[bytes] = []
            if body:
                pieces.append(b"%x\r\n%b\r\n" % (len(body), body) if self.body_chunked_out else body)
            if self.body_complete and self.body_chunked_out:
                pieces.append(b"0\r\n\r\n")
            self.pending_body = pieces
            self.pending_len = sum(map(len, pieces))
        self.body_forwarded = False

    # ------------------------------------------------------------------
    # response, from the backend (httptools callbacks buffer; logic below)
    # ------------------------------------------------------------------
    def upstream_data(self, data: bytes) -> None:
        if self.state == TUNNEL:
            self.down.write(data)
            return
        parser = self.resp_parser
        if parser is None or self.resp_complete:
            if self.up is not None:
                self.up.close()   # bytes after a complete response: unusable
            return
        if self.state == SENT:
            self.state = RESPONDING
        self.last_read = now = self.node.now()
        # What one read produces is written once, after llhttp accepted all of it:
        # one write instead of head + each chunk, and a response malformed within
        # its first read (the usual case) can still be answered with a clean 502.
        if _feed_fast is not None and parser is UNFED:
            # one whole plain response: its callbacks made in C (_response.c)
            try:
                fed = _feed_fast(self, data)
            except httptools.HttpParserError as e:
                self._parse_failed(e, data)
                return
            if fed:
                self._read_over(data, now)
                return
        self._feed_llhttp(data, now)

    # upstream_data's three seams, where _response.c's UpstreamConnection.data_received
    # hands over what it does not do itself
    def _feed_llhttp(self, data: bytes, now: float) -> None:
        """The read, through llhttp (feed_fast did not take it)."""
        parser = self.resp_parser
        try:
            if parser is UNFED:
                parser = self.resp_parser = httptools.HttpResponseParser(self)
            parser.feed_data(data)  # type: ignore[union-attr]
        except (httptools.HttpParserUpgrade, httptools.HttpParserError) as e:
            self._parse_failed(e, data)
            return
        self._read_over(data, now)

    def _parse_failed(self, e: Exception, data: bytes) -> None:
        """The parse of `data` stopped with `e` (called while handling it)."""
        if isinstance(e, httptools.HttpParserUpgrade):
            self._flush()
            self.resp_upgrade_at = int(e.args[0]) if e.args else len(data)
            self.resp_raw_left = data[self.resp_upgrade_at:]
            self._start_tunnel()
        elif isinstance(e, httptools.HttpParserCallbackError):
            if self.resp_complete and isinstance(e.__context__, _ExtraResponse):
                # Bytes after the complete response: ours is fine, the
                # connection is not (never parse a second response into the client).
                self._flush()
                if self.up is not None:
                    self.up.close()
                if self.state != DONE:
                    self._response_done()
                return
            self._bad_response(str(e.__context__ or e))
        else:
            self._bad_response(str(e))

    def _read_over(self, data: bytes, now: float) -> None:
        """What follows a read that parsed cleanly."""
        if self.resp_complete and self._done_plain(now):
            return
        self._read_on(data, now)

    def _read_on(self, data: bytes, now: float) -> None:
        """_read_over after _done_plain said no (_response.c's seam once it asked is_closing())."""
        self._flush()
        if self.resp_complete:
            if self.state != DONE:
                self._response_done(now)
        elif not self.resp_head_sent:
            # Still in a head: all of `data` was head bytes. httptools joins a field
            # split across reads, so bound what it may be holding.
            self.resp_raw_head += len(data)
            if self.resp_raw_head > 2 * UPSTREAM_HEAD_LIMIT:
                self._bad_response("response head too large")
        elif not self.timer:
            # The body goes on past this read: bound the gaps between reads with
            # the same timeout (not armed for responses that end in one read).
            self._arm_response_timer(now)

    def _done_plain(self, now: float) -> bool:
        """The common end of a response, in one call: what _flush, then
        _response_done with pool.release, _finish_attempt, down.response_finished
        and node.finish do, in their order, when the connection goes back to
        the pool and the client's is not closed for this response (eight
        calls cost ~0.6 us a request). False, having done nothing, otherwise:
        the general path runs. tests/unit/test_done_plain.py compares the two.
        It stands for those methods as this package defines them: a subclass
        or a patch that replaces one of them is not called here (nothing in
        NovaEdge does; hooks plug in through NodeHooks, and node.finish's hook,
        node._finished, is called here as there)."""
        if self.state == DONE or self.resp_out_chunked or self.resp_close_after or not self.body_complete \
                or not self.resp_keep_alive or self.resp_close_delimited:
            return False
        up, pool, ctx = self.up, self.pool, self.ctx
        if up is None or pool is None or ctx is None:
            return False
        ut = up.transport
        if up.closed or up.eof or ut is None or len(pool.idle) >= pool.max_idle or ut.is_closing():
            return False
        down, node = self.down, self.node
        # _flush
        out = self.out
        if out:
            down.write(out[0] if len(out) == 1 else b"".join(out))
            self.out = []
        self.head_unflushed = False
        # _response_done
        self.state = DONE
        if self.timer:
            self.timer = 0.0
            node.deadlines.discard(self)
        self.up = None
        pool.busy.discard(up)   # pool.release(up, now, usable=True)
        up.exchange = None
        up.idle_since = now
        if up.paused_by_client:
            up.resume_reading()
        pool.idle.append(up)
        backend = self.backend   # _finish_attempt
        if backend is not None and not self.accounted:
            self.accounted = True
            node.selector.on_done(backend, now - self.attempt_start, "5xx" if self.resp_status >= 500 else "ok", now)
        # down.response_finished(self, close=False, now=now): its first half here
        self.resp_parser = None
        ctx.end = now   # node.finish(ctx, now)
        stats = node.stats
        stats["requests"] += 1
        if ctx.status >= 500 or ctx.status == 0:
            stats["errors"] += 1
        f = node._finished
        if f is not None:
            f(ctx)
        down._response_over(self, False, False, now)
        return True

    def _flush(self) -> None:
        out = self.out
        if out:
            self.down.write(out[0] if len(out) == 1 else b"".join(out))
            self.out = []
        self.head_unflushed = False

    def _bad_response(self, detail: str) -> None:
        ctx = self.ctx
        assert ctx is not None
        ctx.verdicts.append("bad-response:" + detail[:60])
        self._finish_attempt("5xx")
        if self.head_unflushed:
            # Nothing of this response reached the client yet: it can get a 502.
            self.out = []
            self.head_unflushed = False
            self.resp_head_sent = False
            self.resp_out_chunked = False
            self.resp_close_after = False
        else:
            self._flush()   # interim responses already accepted
        if self.resp_head_sent:
            self._abort_both("upstream-bad-response")
        else:
            up = self.up
            self.up = None
            if up is not None:
                up.exchange = None
                up.close()
            self.down.fail_request(self, 502, "upstream-bad-response")

    # httptools callbacks
    def on_message_begin(self) -> None:
        if self.resp_complete:
            raise _ExtraResponse()

    def on_status(self, reason: bytes) -> None:
        self.resp_reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.resp_head_bytes += len(name) + len(value) + 4
        if self.resp_head_bytes > UPSTREAM_HEAD_LIMIT:
            raise ValueError("response head or trailers too large")
        if self.resp_head_sent:
            return   # a trailer field: not forwarded (9110 6.5.1 lets a proxy drop them)
        self.resp_headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self.resp_parser
        assert parser is not None
        status = parser.get_status_code()
        self.resp_status = status
        if self.resp_complete:
            raise _ExtraResponse()
        self.resp_head_bytes = 0   # the final head's fields are counted afresh (after 1xx)
        if status < 200:
            if status == 101:
                if not self.want_upgrade:
                    raise ValueError("101 the client did not ask for")
                return   # the HttpParserUpgrade path takes over
            # 100 was answered by us already; 103 and others are relayed to 1.1 clients.
            if status != 100 and self.version == "1.1":
                self.out.append(self._render_head(interim=True))
            self.resp_headers = []
            self.resp_reason = b""
            return
        if self.timer:
            self._clear_timer()
        ctx = self.ctx
        assert ctx is not None
        ctx.status = status
        ctx.upstream_headers_at = self.last_read   # read in this same callback
        # Must be read now: llhttp_should_keep_alive() is false once the message
        # is complete, which made every upstream connection single-use.
        self.resp_keep_alive = parser.should_keep_alive()
        self.resp_no_body = ctx.method == "HEAD" or status in (204, 304)
        self.out.append(self._render_head(interim=False))
        self.resp_head_sent = True
        self.head_unflushed = True
        if self.resp_no_body:
            self.resp_complete = True

    def on_body(self, body: bytes) -> None:
        if not body:
            return
        if self.resp_no_body:
            # A body on HEAD/204/304 is a protocol error: keep it off the wire, drop the conn.
            if self.up is not None:
                self.up.close()
            return
        ctx = self.ctx
        assert ctx is not None
        ctx.bytes_out += len(body)
        if self.resp_out_chunked:
            self.out.append(b"%x\r\n%b\r\n" % (len(body), body))
        else:
            self.out.append(body)

    def on_message_complete(self) -> None:
        if self.resp_status >= 200 or self.resp_status == 0:
            self.resp_complete = True

    def _render_head(self, interim: bool) -> bytes:
        status = self.resp_status
        reason = self.resp_reason or REASONS.get(status, "Unknown").encode()
        out = [b"HTTP/1.1 %d %b\r\n" % (status, reason)]
        has_cl = False
        chunked = False
        named: set[bytes] | None = None
        # The loop below in C when it was built (None: a Connection field names an
        # end-to-end field, or anything else the C leaves to this loop).
        fields = _response_fields(self.resp_headers) if _response_fields is not None else None
        if fields is not None:
            block, has_cl, chunked = fields
            out.append(block)
        get = _RESPONSE_ACTIONS.get
        for name, value in (self.resp_headers if fields is None else ()):
            act = get(name.lower())
            if act is None:
                out += (name, b": ", value, b"\r\n")
            elif act == _CL:
                has_cl = True
                out += (name, b": ", value, b"\r\n")
            elif act == _TE:
                chunked = True
            elif act == _CONN:
                tokens = connection_tokens(value) - HOP_BY_HOP
                if tokens:
                    named = tokens if named is None else named | tokens
        if named is not None:
            # Rare: Connection names end-to-end fields; they are hop-by-hop now.
            # One more pass, over our own output, drops them.
            out = out[:1] + [b"".join(out[i:i + 4]) for i in range(1, len(out), 4)
                             if out[i].lower() not in named]
            has_cl = has_cl and b"content-length" not in named
        if interim:
            out.append(b"\r\n")
            return b"".join(out)
        ctx = self.ctx
        assert ctx is not None
        node = self.node
        out += (node.via_header, b"X-Request-Id: ", ctx.request_id.encode(), b"\r\n")
        if (self.down.trusted_peer or node.snapshot.config.debug_headers) and node.explain_wanted(self):
            out.append(b"X-NovaEdge-Decision: " + node.explain(ctx).encode() + b"\r\n")
        client_11 = self.version == "1.1"
        if self.resp_no_body:
            pass
        elif chunked or (not has_cl):
            self.resp_close_delimited = not chunked
            # Chunked or close-delimited upstream: chunk it for 1.1 clients,
            # close-delimit for 1.0 ones.
            if client_11:
                self.resp_out_chunked = True
                out.append(b"Transfer-Encoding: chunked\r\n")
            else:
                self.resp_close_after = True
        # A response that starts before the request body has all arrived (an early
        # 403/413 from the backend) ends the connection: say so.
        if self.resp_close_after or not self.body_complete or not self.down.keep_alive_after(self):
            self.resp_close_after = True
            out.append(b"Connection: close\r\n")
        elif not client_11:
            out.append(b"Connection: keep-alive\r\n")
        out.append(b"\r\n")
        return b"".join(out)

    def upstream_eof(self) -> None:
        if self.state == TUNNEL:
            self.down.upstream_tunnel_eof()
            return
        if self.resp_head_sent and not self.resp_complete and self.resp_close_delimited:
            # 9112 6.3 (8): a response without framing ends when the backend closes
            # (httptools has no llhttp_finish; the FIN is the end of the message).
            self.resp_complete = True
            up = self.up
            if up is not None:
                up.close()
            self._response_done()

    def upstream_lost(self, exc: Exception | None) -> None:
        if self.state == DONE:
            return
        if self.state == TUNNEL:
            self.down.upstream_tunnel_eof()
            return
        self.up = None
        if self.resp_complete:
            self._response_done()
            return
        if self.resp_head_sent:
            if self.resp_close_delimited and exc is None:
                self.resp_complete = True
                self._response_done()
                return
            self._abort_both("upstream-closed-mid-response")
            return
        # Lost before the response head: the request may or may not have been read.
        self._upstream_failed("upstream-reset-before-response", 502, retry_ok=True,
                              sent=self.state >= SENT)

    def _response_done(self, now: float = 0.0) -> None:
        if self.state == DONE:
            return
        self.state = DONE
        if self.timer:
            self._clear_timer()
        node = self.node
        if not now:
            now = node.now()
        up = self.up
        self.up = None
        reusable = (up is not None and self.body_complete and self.resp_keep_alive
                    and not self.resp_close_delimited and up.usable())
        if up is not None and self.pool is not None:
            if reusable:
                self.pool.release(up, now, usable=True)
            else:
                up.exchange = None
                up.close()
        self._finish_attempt("5xx" if self.resp_status >= 500 else "ok", now)
        if self.resp_out_chunked:
            self.down.write(b"0\r\n\r\n")
        self.down.response_finished(self, close=self.resp_close_after or not self.body_complete, now=now)

    # ------------------------------------------------------------------
    # Upgrade: a 101 from the backend turns both connections into a byte tunnel
    # ------------------------------------------------------------------
    def _start_tunnel(self) -> None:
        if self.resp_status != 101 or not self.want_upgrade:
            self._bad_response("unexpected 101")
            return
        ctx = self.ctx
        assert ctx is not None
        if self.timer:
            self._clear_timer()
        ctx.status = 101
        self._finish_attempt("ok")   # the request is answered; a tunnel is not in flight
        head = [b"HTTP/1.1 101 " + (self.resp_reason or b"Switching Protocols") + b"\r\n"]
        for name, value in self.resp_headers:
            head.append(name + b": " + value + b"\r\n")
        head.append(b"X-Request-Id: " + ctx.request_id.encode() + b"\r\n\r\n")
        self.down.write(b"".join(head))
        self.resp_head_sent = True
        self.state = TUNNEL
        if self.resp_raw_left:
            self.down.write(self.resp_raw_left)
        self.down.enter_tunnel(self)

    def tunnel_client_data(self, data: bytes) -> None:
        up = self.up
        if up is not None and up.transport is not None:
            ctx = self.ctx
            if ctx is not None:
                ctx.bytes_in += len(data)
            up.transport.write(data)

    def close_tunnel(self) -> None:
        if self.up is not None:
            self.up.close()
            self.up = None

    # ------------------------------------------------------------------
    def _finish_attempt(self, outcome: str, now: float = 0.0) -> None:
        """Tell the balancer the attempt ended, exactly once per on_start
        (its in-flight count would otherwise drift up forever)."""
        if self.backend is not None and not self.accounted:
            self.accounted = True
            node = self.node
            if not now:
                now = node.now()
            node.selector.on_done(self.backend, now - self.attempt_start, outcome, now)

    def _abort_both(self, reason: str) -> None:
        """A failure after the response head went out: nothing to say but close."""
        if self.state == DONE:
            return
        if reason.startswith(("client", "request")):
            self._finish_attempt("cancelled")     # the client's doing, not the backend's
        else:
            self._finish_attempt("timeout" if reason.endswith("timeout") else "5xx")
        ctx = self.ctx
        if ctx is not None:
            ctx.error = reason
        up = self.up
        self.up = None
        if up is not None:
            up.exchange = None
            up.close()
        self.state = DONE
        self.down.response_finished(self, close=True, aborted=True)

    def _drop_upstream(self) -> None:
        """Stop waiting on the backend and close the connection (never reused)."""
        if self.timer:
            self._clear_timer()
        up = self.up
        self.up = None
        if up is not None:
            up.exchange = None
            up.close()

    def cancel(self) -> None:
        """The client went away: drop the upstream side (never reuse a half-used conn)."""
        self.resp_parser = None   # breaks the parser <-> exchange cycle
        self._drop_upstream()
        self._finish_attempt("cancelled")
        self.state = DONE

    def error_bytes(self, status: int, reason: str, close: bool) -> bytes:
        ctx = self.ctx
        rid = ctx.request_id if ctx is not None else self.node.next_request_id()
        return error_response(status, reason, rid, close=close, head_only=self.method == "HEAD")

    def continue_100(self) -> None:
        # 9110 15.2: never a 1xx to an HTTP/1.0 client; 10.1.1: may be skipped when
        # the body is already here (and must be, if its response could precede it).
        if self.version == "1.1" and not self.body_complete and not self.resp_head_sent:
            self.down.write(CONTINUE_100)


# What _render_head does with a response field, by lower-case name (None: forward).
_HOP, _CL, _TE, _CONN = 1, 2, 3, 4
# read-only: the C (response_fields) copies it once, as it is
_RESPONSE_ACTIONS = MappingProxyType({
    **dict.fromkeys(HOP_BY_HOP, _HOP), b"content-length": _CL, b"transfer-encoding": _TE, b"connection": _CONN})
# _render_head's field loop in C (proxy/_hotpath.c), or None: the loop runs in Python
_response_fields = attach("proxy._hotpath", lambda c: c.setup_fields(
    _RESPONSE_ACTIONS, HOP_BY_HOP, (_HOP, _CL, _TE, _CONN)))

IDEMPOTENT_RETRY = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


class _Unfed:
    """Exchange.resp_parser before the response's first read (no parser yet)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNFED"


UNFED = _Unfed()


class _ExtraResponse(Exception):
    """Raised from a response parser callback: the backend sent more than one response."""


# --- C: the response parser callbacks (proxy/_response.c) ---
# httptools calls these on every response from a backend. In C they do the
# common case themselves (a final head, rendered as _render_head renders it,
# and the body) and hand everything else to the Python methods, kept here as
# Exchange._<name>_py (the reference), before changing anything. The C uses
# _hotpath's response_fields, so it is set up only where that was built.
_RESPONSE_CALLBACKS = ("on_message_begin", "on_status", "on_headers_complete", "on_body",
                       "on_message_complete")
for _name in _RESPONSE_CALLBACKS:
    setattr(Exchange, f"_{_name}_py", getattr(Exchange, _name))


def _setup_response_c(c: ModuleType) -> tuple[object, ...]:
    from .context import RequestContext
    return c.setup(Exchange, RequestContext, httptools.HttpResponseParser, globals(), _response_fields,
                   Exchange._render_head, Exchange._clear_timer,
                   tuple(getattr(Exchange, f"_{n}_py") for n in _RESPONSE_CALLBACKS))


_c_response = attach("proxy._response", _setup_response_c) if _response_fields is not None else None
if _c_response is not None:
    for _name, _method in zip(_RESPONSE_CALLBACKS, _c_response):
        setattr(Exchange, _name, _method)

# A read that is one whole plain response (status line, fields, a Content-Length
# body) is recognised in C, which makes llhttp's callbacks on the exchange
# itself (see _response.c for the subset); upstream_data feeds llhttp the rest.
_feed_fast: Callable[[Exchange, bytes], bool] | None = None
if _c_response is not None:
    _feed_fast = attach("proxy._response", lambda c: (
        c.setup_fast(httptools.HttpParserCallbackError, UNFED), c.feed_fast)[1])
