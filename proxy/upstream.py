"""Upstream connections and the keep-alive pool of each backend.

A `BackendPool` lives as long as the process and is keyed by the backend's
stable id ("region/host:port"), so a config reload that keeps a backend keeps
its warm connections. Taking an idle connection is synchronous: a request with
a warm pool reaches the upstream write with no await in between.
"""
from __future__ import annotations

import asyncio
import socket
from collections import deque
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .exchange import Exchange


class UpstreamConnection(asyncio.Protocol):
    __slots__ = ("pool", "transport", "exchange", "idle_since", "closed", "eof",
                 "paused_by_client", "sock")

    def __init__(self, pool: "BackendPool") -> None:
        # per-connection state
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.exchange: Exchange | None = None     # the request using it, None while idle
        self.idle_since = 0.0
        self.closed = False
        self.eof = False
        self.paused_by_client = False
        self.sock: Any = None

    # -- asyncio callbacks: bytes in, signals out --------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            self.sock = sock
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def data_received(self, data: bytes) -> None:
        ex = self.exchange
        if ex is None:
            # A backend must not speak while idle: the connection is unusable.
            self.close()
            return
        ex.upstream_data(data)

    def eof_received(self) -> bool | None:
        self.eof = True
        ex = self.exchange
        if ex is not None:
            ex.upstream_eof()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        ex = self.exchange
        self.exchange = None
        if ex is not None:
            ex.upstream_lost(exc)

    def pause_writing(self) -> None:
        # Upstream's send buffer is full: stop reading the client (request body).
        ex = self.exchange
        if ex is not None:
            ex.down.pause_reading("upstream-full")

    def resume_writing(self) -> None:
        ex = self.exchange
        if ex is not None:
            ex.down.resume_reading("upstream-full")

    # -- used by the exchange ----------------------------------------------
    def usable(self) -> bool:
        return not (self.closed or self.eof or self.transport is None
                    or self.transport.is_closing())

    def peer_closed(self) -> bool:
        """Ask the kernel whether the backend has closed this idle connection, in
        case its FIN arrived but the loop has not read it yet: reusing it then
        fails the request in a way that looks like "may have been processed",
        so a POST could not be retried. One getsockopt, about 1 us."""
        sock = self.sock
        if sock is None or _TCP_INFO is None:
            return False
        try:
            state = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 1)[0]
        except (OSError, IndexError, TypeError):
            return False
        return bool(state != _TCP_ESTABLISHED)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.pool.forget(self)
            if self.transport is not None:
                self.transport.abort()

    def pause_reading(self) -> None:
        if not self.paused_by_client and self.transport is not None and not self.closed:
            self.paused_by_client = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.paused_by_client and self.transport is not None and not self.closed:
            self.paused_by_client = False
            self.transport.resume_reading()


class PoolLimitReached(Exception):
    pass


class BackendPool:
    """Connections to one backend: idle ones (LIFO: the warmest first) and a cap."""

    __slots__ = ("key", "host", "port", "idle", "busy", "max_conns", "max_idle",
                 "idle_timeout", "connect_failures", "created", "reused")

    def __init__(self, key: str, host: str, port: int, max_conns: int, max_idle: int,
                 idle_timeout: float) -> None:
        self.key = key
        self.host = host
        self.port = port
        self.idle: deque[UpstreamConnection] = deque()
        self.busy: set[UpstreamConnection] = set()
        self.max_conns = max_conns
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self.connect_failures = 0
        self.created = 0
        self.reused = 0

    def configure(self, max_conns: int, max_idle: int, idle_timeout: float) -> None:
        self.max_conns, self.max_idle, self.idle_timeout = max_conns, max_idle, idle_timeout

    def take_idle(self, now: float = 0.0) -> UpstreamConnection | None:
        idle = self.idle
        while idle:
            conn = idle.pop()
            # The kernel check costs ~3.4 us through uvloop's socket wrapper: only
            # for connections idle long enough for a backend to have timed them out
            # (under load they are reused within milliseconds).
            if conn.usable() and (now - conn.idle_since < STALE_CHECK_AFTER_S or not conn.peer_closed()):
                self.busy.add(conn)
                self.reused += 1
                return conn
            conn.close()
        return None

    def release(self, conn: UpstreamConnection, now: float, usable: bool = False) -> None:
        """Back to the idle list (`usable`: the caller has just checked conn.usable())."""
        self.busy.discard(conn)
        conn.exchange = None
        if (usable or conn.usable()) and len(self.idle) < self.max_idle:
            conn.idle_since = now
            if conn.paused_by_client:
                conn.resume_reading()   # notice a close while idle
            self.idle.append(conn)
        else:
            conn.close()

    def forget(self, conn: UpstreamConnection) -> None:
        self.busy.discard(conn)
        try:
            self.idle.remove(conn)
        except ValueError:
            pass

    async def connect(self, loop: asyncio.AbstractEventLoop, timeout: float) -> UpstreamConnection:
        if len(self.busy) + len(self.idle) >= self.max_conns:
            # Make room by closing an idle one; otherwise the cap holds.
            if self.idle:
                self.idle.popleft().close()
            else:
                raise PoolLimitReached(f"{self.key}: {self.max_conns} connections in use")
        conn = UpstreamConnection(self)
        self.busy.add(conn)
        try:
            await asyncio.wait_for(
                loop.create_connection(lambda: conn, self.host, self.port), timeout)
        except BaseException:
            # Cancellation included: never leak the slot.
            self.busy.discard(conn)
            conn.closed = True
            raise
        self.created += 1
        return conn

    def sweep(self, now: float) -> None:
        """Close connections idle longer than the idle timeout (oldest are at the left)."""
        idle = self.idle
        while idle and (now - idle[0].idle_since > self.idle_timeout or not idle[0].usable()):
            idle.popleft().close()

    def close_all(self) -> None:
        for conn in list(self.idle) + list(self.busy):
            conn.close()

    def stats(self) -> dict[str, Any]:
        return {"idle": len(self.idle), "busy": len(self.busy), "created": self.created,
                "reused": self.reused, "connect_failures": self.connect_failures}


_TCP_INFO: int | None = getattr(socket, "TCP_INFO", None)   # Linux; elsewhere no check
_TCP_ESTABLISHED = 1                                        # tcpi_state, linux/tcp_states.h
STALE_CHECK_AFTER_S = 0.1

