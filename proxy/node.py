"""The data plane of one worker process: listeners, the current snapshot,
upstream pools, and the per-request phases in order.

Process-lifetime state lives here, keyed by stable ids so it survives a
reload; everything config-derived is in `self.snapshot`, swapped whole.
"""
from __future__ import annotations

import asyncio
import functools
import ipaddress
import itertools
import logging
import os
import socket
import ssl
import time
from typing import Any, Callable

from ._accel import attach
from .config import Config, ListenerConfig, parse_hostport
from .context import RequestContext
from .downstream import Downstream, Reject
from .exchange import DONE, Exchange
from .http11 import IDEMPOTENT, split_host
from .request import HEADER_ACTIONS, build_upstream_head, check_head, client_from_xff
from .balance.backend import BackendState as Backend
from .selection import Selector
from .snapshot import Snapshot, compile_snapshot
from .upstream import BackendPool

log = logging.getLogger("novaedge.node")


class Listener:
    def __init__(self, cfg: ListenerConfig) -> None:
        self.cfg = cfg
        self.host, self.port = parse_hostport(cfg.bind)
        self.name = cfg.name or cfg.bind
        self.proxy_protocol = cfg.proxy_protocol
        self._pp_nets = tuple(ipaddress.ip_network(n, strict=False) for n in cfg.proxy_protocol_from)
        self.scheme = b"https" if cfg.tls else b"http"
        self.server: asyncio.AbstractServer | None = None
        self.accept_task: asyncio.Task[None] | None = None   # PROXY + TLS listeners
        self.sock: socket.socket | None = None

    def proxy_from(self, ip: str) -> bool:
        try:
            a = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(a in n for n in self._pp_nets if n.version == a.version)


def make_listen_socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


def tls_context(listener: ListenerConfig) -> ssl.SSLContext | None:
    """Several certificates, chosen by SNI; the first one is the default."""
    if not listener.tls:
        return None
    contexts: dict[str, ssl.SSLContext] = {}
    default: ssl.SSLContext | None = None
    for cert in listener.tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(cert.cert, cert.key)
        ctx.set_alpn_protocols(["http/1.1"])
        if default is None:
            default = ctx
        for name in cert.server_names:
            contexts[name.lower()] = ctx
    assert default is not None

    def pick(sslobj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        if name:
            chosen = contexts.get(name.lower())
            if chosen is None and "." in name:
                chosen = contexts.get("*." + name.split(".", 1)[1].lower())
            if chosen is not None:
                sslobj.context = chosen

    default.sni_callback = pick  # type: ignore[assignment]
    return default


class Node:
    # the attributes the hot path reads: slots (a descriptor hit, no dict look-up
    # from C); the rest, and what tests or hooks add, live in __dict__
    __slots__ = ("loop", "snapshot", "pools", "selector", "draining", "hooks", "_ids", "_id_prefix",
                 "via_header", "now", "deadlines", "stats", "started", "_finished", "geo", "__dict__")

    def __init__(self, config: Config, *, worker_id: int = 0, reuse_port: bool = False,
                 hooks: "NodeHooks | None" = None) -> None:
        self.loop = asyncio.get_event_loop()
        self.worker_id = worker_id
        self.reuse_port = reuse_port
        self.snapshot: Snapshot = compile_snapshot(config, 1)
        self.listeners: list[Listener] = []
        self.connections: set[Downstream] = set()
        self.pools: dict[str, BackendPool] = {}
        self.selector = Selector(self)
        self.draining = False
        self.hooks = hooks or NodeHooks()
        self._ids = itertools.count(1)
        self._id_prefix = f"{os.getpid():x}{worker_id:x}-"
        self.via_header = b"Via: 1.1 novaedge\r\n"
        self.now: Callable[[], float] = time.monotonic
        self._sweeper: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self.deadlines: set[Exchange] = set()   # exchanges waiting on a response deadline
        self.stats = {"requests": 0, "connections": 0, "errors": 0}
        self.started = 0   # requests begun (head complete or failed before it); stats["requests"] ends them
        # what finish() hands each context to (metrics, access log): one call,
        # resolved once, e.g. a partial of finish.observe_and_log (C) itself
        self._finished = self.hooks.finisher(self)
        self.geo: Any = None

    # ------------------------------------------------------------------
    # lifecycle
    # ------------------------------------------------------------------
    async def start(self) -> None:
        for lc in self.snapshot.config.listeners:
            li = Listener(lc)
            sock = make_listen_socket(li.host, li.port, self.reuse_port)
            if lc.proxy_protocol and lc.tls:
                # TLS must start exactly after the clear-text PROXY header.
                from .accept import serve_proxy_tls
                li.accept_task = self.loop.create_task(
                    serve_proxy_tls(self, li, sock, tls_context(lc)))  # type: ignore[arg-type]
                li.sock = sock
                if li.port == 0:
                    li.port = sock.getsockname()[1]
                self.listeners.append(li)
                continue
            li.server = await self.loop.create_server(
                lambda li=li: Downstream(self, li), sock=sock, ssl=tls_context(lc),
                ssl_handshake_timeout=self.snapshot.config.limits.header_timeout_s if lc.tls else None,
                backlog=4096)
            if li.port == 0:
                li.port = sock.getsockname()[1]
            self.listeners.append(li)
        self._sweeper = self.loop.create_task(self._sweep_forever())
        self._ticker = self.loop.create_task(self._deadlines_forever())
        self.hooks.started(self)

    def apply_config(self, config: Config) -> None:
        """Swap the snapshot whole. Listeners are fixed for the process's life."""
        snap = compile_snapshot(config, self.snapshot.version + 1)
        up = config.upstream
        for pool in self.pools.values():
            pool.configure(up.max_connections_per_backend, up.max_idle_per_backend, up.idle_timeout_s)
        self.snapshot = snap
        self.selector.reconfigured()
        live = self.selector.backend_ids()
        for bid in [b for b in self.pools if b not in live]:
            self.pools.pop(bid).close_all()
        self.hooks.reconfigured(self, snap)

    async def drain(self, deadline_s: float | None = None) -> None:
        """Stop accepting, let in-flight requests finish, close the rest."""
        self.draining = True
        for li in self.listeners:
            if li.server is not None:
                li.server.close()
            if li.accept_task is not None:
                li.accept_task.cancel()
                if li.sock is not None:
                    li.sock.close()
        for c in list(self.connections):
            c.close_if_idle()
        limit = self.snapshot.config.limits.drain_timeout_s if deadline_s is None else deadline_s
        end = time.monotonic() + limit
        while self.connections and time.monotonic() < end:
            await asyncio.sleep(0.05)
            for c in list(self.connections):
                c.close_if_idle()
        for c in list(self.connections):
            if c.transport is not None:
                c.transport.abort()
        for pool in self.pools.values():
            pool.close_all()
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._ticker is not None:
            self._ticker.cancel()
        self.hooks.stopped(self)

    async def _deadlines_forever(self) -> None:
        # Response timeouts, to 0.1 s: one task for every request in flight.
        while True:
            await asyncio.sleep(0.1)
            if self.deadlines:
                now = self.now()
                for ex in [e for e in self.deadlines if e.timer <= now]:
                    self.deadlines.discard(ex)
                    if ex.timer:
                        try:
                            ex._response_timeout()
                        except Exception as e:   # one bad exchange must not stop the ticker
                            self.log_internal_error(e)

    async def _sweep_forever(self) -> None:
        # One timer for every connection: cheaper than a TimerHandle per request.
        while True:
            await asyncio.sleep(0.25)
            now = self.now()
            limits = self.snapshot.config.limits
            for c in list(self.connections):
                c.sweep(now, limits)
            for pool in self.pools.values():
                pool.sweep(now)
            self.hooks.tick(self, now)

    # ------------------------------------------------------------------
    # admit (per connection)
    # ------------------------------------------------------------------
    def connection_opened(self, conn: Downstream) -> bool:
        if self.draining or len(self.connections) >= self.snapshot.config.limits.max_connections:
            return False
        self.connections.add(conn)
        self.stats["connections"] += 1
        return True

    def connection_admitted(self, conn: Downstream) -> bool:
        return self.hooks.admit_connection(self, conn)

    def connection_closed(self, conn: Downstream) -> None:
        self.connections.discard(conn)

    def geo_lookup(self, ip: str) -> Any:
        return self.hooks.geo_lookup(ip)

    # ------------------------------------------------------------------
    # parse + identify
    # ------------------------------------------------------------------
    def next_request_id(self) -> str:
        # (attributes only, no global name: the C in _request.c, which makes
        # the same string, has nothing else to check is still what it was)
        return self._id_prefix + "%x" % self._ids.__next__()

    def head_complete(self, down: Downstream, ex: Exchange) -> None:
        target, host = check_head(ex, down.host_seen)
        client_ip = down.client_ip
        geo = down.geo
        if down.trusted_peer:
            xff_client = client_from_xff(ex, client_ip, self.snapshot.is_trusted_proxy)
            if xff_client != client_ip:
                client_ip = xff_client
                geo = self.geo_lookup(client_ip)
        rid = self.next_request_id()
        path, _, query = target.partition(b"?")
        if host == down.host_seen:
            hosts = down.host_name
        else:
            hosts = split_host(host) if host else ""
            if host is ex.host_value:   # validated by check_head: remember it for the next request
                down.host_seen, down.host_name = host, hosts
        ctx = RequestContext(rid, down.last_active, ex.method, hosts, path.decode("latin-1"),
                             query.decode("latin-1"), ex.version, client_ip, down.client_port,
                             geo, ex.headers, down.listener.name)
        ex.ctx = ctx
        self.started += 1
        ex.req_head = build_upstream_head(
            ex, target, host, client_ip, down.trusted_peer, down.client_ip,
            down.listener.scheme, b"1.1 novaedge", rid.encode(),
            self.hooks.header_actions, self.hooks.forward_headers(self, ctx), down.fwd_memo)

    def bare_context(self, down: Downstream, ex: Exchange) -> RequestContext:
        """A context for a request that failed before its head was understood."""
        ctx = RequestContext(self.next_request_id(), self.now(), ex.method or "-", "",
                             b"".join(ex.url)[:200].decode("latin-1"), "", ex.version,
                             down.client_ip or down.peer_ip, down.client_port, down.geo, [],
                             down.listener.name)
        self.started += 1
        return ctx

    # ------------------------------------------------------------------
    # protect -> route -> forward
    # ------------------------------------------------------------------
    def dispatch(self, down: Downstream, ex: Exchange) -> None:
        ctx = ex.ctx
        assert ctx is not None
        hooks = self.hooks
        protecting = hooks.protect_active
        if protecting:
            verdict = hooks.protect(self, down, ctx)
            if verdict is not None:
                self._answer(down, ex, *verdict)   # (status, reason, headers)
                return
        router = self.snapshot.router
        route = router.every
        if route is None:
            geo = ctx.geo
            route = router.match(ctx.host, ctx.path, ctx.method,
                                 getattr(geo, "country", None), getattr(geo, "continent", None))
        if route is None:
            self._answer(down, ex, 404, "no route for this host and path")
            return
        ctx.route = route
        ctx.is_write = route.write if route.write is not None else ctx.method not in IDEMPOTENT
        if protecting:
            verdict = hooks.route_check(self, down, ctx)
            if verdict is not None:
                self._answer(down, ex, *verdict)   # (status, reason, headers)
                return
        ex.max_body = route.max_body
        if ex.declared_len > route.max_body:
            self._answer(down, ex, 413, f"request body over {route.max_body} bytes")
            return
        if ex.expect is not None and (ex.declared_len > 0 or ex.chunked):
            ex.continue_100()
        ex.start(down.last_active)   # every path here runs in a callback that just set it

    def _answer(self, down: Downstream, ex: Exchange, status: int, reason: str,
                headers: list[tuple[bytes, bytes]] | None = None) -> None:
        ctx = ex.ctx
        assert ctx is not None
        close = not ex.body_complete or not ex.keep_alive
        ctx.status = status
        ctx.error = reason
        body = ex.error_bytes(status, reason, close=close)
        if headers:
            head, sep, rest = body.partition(b"\r\n\r\n")
            body = head + b"\r\n" + b"\r\n".join(n + b": " + v for n, v in headers) + sep + rest
        down.write(body)
        ex.state = DONE
        down.response_finished(ex, close=close)

    def pool_for(self, backend: Backend) -> BackendPool:
        pool = self.pools.get(backend.id)
        if pool is None:
            up = self.snapshot.config.upstream
            pool = BackendPool(backend.id, backend.host, backend.port,
                               up.max_connections_per_backend, up.max_idle_per_backend,
                               up.idle_timeout_s)
            self.pools[backend.id] = pool
        return pool

    def explain_wanted(self, ex: Exchange) -> bool:
        if self.snapshot.config.debug_headers:
            return True
        ctx = ex.ctx
        return (ctx is not None and ex.down.trusted_peer
                and ctx.header(b"x-novaedge-debug") is not None)

    def explain(self, ctx: RequestContext) -> str:
        return self.selector.explain(ctx)

    # ------------------------------------------------------------------
    # log
    # ------------------------------------------------------------------
    @property
    def inflight(self) -> int:
        """Requests begun and not finished."""
        return self.started - self.stats["requests"]

    def finish(self, ctx: RequestContext, now: float = 0.0) -> None:
        ctx.end = now or self.now()
        self.stats["requests"] += 1
        if ctx.status >= 500 or ctx.status == 0:
            self.stats["errors"] += 1
        f = self._finished
        if f is not None:
            f(ctx)

    def log_internal_error(self, exc: BaseException) -> None:
        log.error("internal error in request handling", exc_info=exc)


class NodeHooks:
    """Where the optional phases plug in (GeoIP, protection, metrics, logs).

    The defaults do nothing; `proxy.features` installs the real ones. Each hook
    is synchronous: it runs on the hot path.
    """

    header_actions = HEADER_ACTIONS   # what build_upstream_head does with each client field
    # False: protect() and route_check() would answer None for every request,
    # so the node does not call them (hooks that configure nothing say so).
    protect_active = True
    # False: allowed_regions() would answer None for every request.
    residency_active = True

    def admit_connection(self, node: Node, conn: Downstream) -> bool:
        return True

    def geo_lookup(self, ip: str) -> Any:
        return None

    def protect(self, node: Node, conn: Downstream,
                ctx: RequestContext) -> tuple[int, str, list[tuple[bytes, bytes]]] | None:
        return None

    def route_check(self, node: Node, conn: Downstream,
                    ctx: RequestContext) -> tuple[int, str, list[tuple[bytes, bytes]]] | None:
        return None

    def forward_headers(self, node: Node, ctx: RequestContext) -> list[tuple[bytes, bytes]]:
        return []

    def finished(self, node: Node, ctx: RequestContext) -> None:
        """Exactly once per begun request, success or not."""

    def finisher(self, node: Node) -> Callable[[RequestContext], object] | None:
        """What node.finish calls with each finished request's context, looked
        up once: finished() bound to the node, or None when it does nothing."""
        if type(self).finished is NodeHooks.finished:
            return None
        return functools.partial(self.finished, node)

    def tick(self, node: Node, now: float) -> None:
        pass

    def reconfigured(self, node: Node, snapshot: Snapshot) -> None:
        pass

    def started(self, node: Node) -> None:
        pass

    def stopped(self, node: Node) -> None:
        pass

    def control_message(self, node: Node, msg: dict[str, Any]) -> None:
        """What the control plane publishes besides config and drain."""

    def drain_report(self, node: Node) -> dict[str, Any]:
        """Per-second report to the control plane (metric deltas and the like)."""
        return {}

    def allowed_regions(self, ctx: RequestContext) -> tuple[str, frozenset[str]] | None:
        """Data residency: (jurisdiction, regions) the client may be served in."""
        return None


# --- C: Node.head_complete's common case (proxy/_request.c) ---
# A connection that is not a trusted peer: the same steps in C, calling
# check_head, split_host, hooks.forward_headers and build_upstream_head as
# they are; the RequestContext made from a template of one __init__ made.
# The Python method stays the reference (_head_complete_py) and takes the rest.
Node._head_complete_py = Node.head_complete   # type: ignore[attr-defined]


def _setup_request_c(c: Any) -> Any:
    stand_ins = tuple(object() for _ in range(12))
    return c.setup_node(Node, globals(), Node._head_complete_py, Node.next_request_id,  # type: ignore[attr-defined]
                        type(itertools.count()), RequestContext, RequestContext(*stand_ins),  # type: ignore[arg-type]
                        stand_ins)


_head_complete_c = attach("proxy._request", _setup_request_c)
if _head_complete_c is not None:
    Node.head_complete = _head_complete_c  # type: ignore[method-assign]


# --- C: Downstream._activate and what it calls for a plain request (proxy/_request.c) ---
# From on_headers_complete (C): _activate -> dispatch -> Exchange.start ->
# on_start, take_idle -> usable, _attach -> _arm_response_timer, each done in
# C while it is the function given here (the reference, which the C calls for
# every case that is not its common one: see _request.c).
def _setup_activate_c(c: Any) -> None:
    from .balance import cluster
    from .balance.pool import RegionPool
    from .exchange import Exchange
    from .snapshot import Route
    from .upstream import UpstreamConnection
    c.setup_activate(Downstream, Exchange, RequestContext, Backend, BackendPool, UpstreamConnection,
                     Route, RegionPool, Snapshot, (Downstream._activate, Node.dispatch, Exchange.start, Exchange._attach,
                                       Exchange._arm_response_timer, BackendPool.take_idle,
                                       UpstreamConnection.usable, cluster.on_start))


if _head_complete_c is not None:
    attach("proxy._request", _setup_activate_c)

# The C parts read Node's slots by offset (see _heads.h: node_attr).
for _module in ("proxy._request", "proxy._response"):
    attach(_module, lambda c: c.setup_node_slots(Node))


__all__ = ["Node", "NodeHooks", "Listener", "Reject"]
