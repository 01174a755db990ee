"""The gossip transport interface and its real implementation (memberlist's
transport.go and net_transport.go; the in-memory one is memnet.py).

Two channels, like memberlist's: unreliable packets (UDP) for probes and
piggybacked gossip, and a reliable request/response stream for the periodic
full-state push-pull, here an HTTP POST over TCP served by aiohttp (the control
plane's library) at ``/gossip/pushpull``. Both carry the same authenticated
frames (wire.py), so the transport itself trusts nothing.

Addresses are "host:port" strings; packet addresses must be IP literals
(``sendto`` would resolve a name synchronously), push-pull addresses may be
names (aiohttp resolves them asynchronously).
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable

import aiohttp
from aiohttp import web

from .messages import join_addr, split_addr

log = logging.getLogger(__name__)

PacketHandler = Callable[[bytes, str], None]  # (frame, source "host:port")
StreamHandler = Callable[[bytes, str], "bytes | None"]  # request frame -> reply frame (None: refuse)
ReplyCallback = Callable[["bytes | None"], None]  # reply frame, or None on any failure

PUSHPULL_PATH = "/gossip/pushpull"
MAX_STREAM_BYTES = 16 * 1024 * 1024  # full state of ~20k nodes; refuse anything larger


class Transport(ABC):
    @abstractmethod
    def set_handlers(self, on_packet: PacketHandler, on_stream: StreamHandler) -> None:
        """Install the receive callbacks; called once, before traffic flows."""

    @abstractmethod
    def send_packet(self, addr: str, data: bytes) -> None:
        """Fire and forget one datagram (may be lost, reordered, duplicated)."""

    @abstractmethod
    def send_stream(self, addr: str, data: bytes, on_reply: ReplyCallback, timeout_s: float) -> None:
        """Send one request over the reliable channel; ``on_reply`` is called
        exactly once (never after ``close``)."""

    @abstractmethod
    async def close(self) -> None: ...


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, owner: UdpTransport) -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.owner._on_datagram(data, join_addr(str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a dead peer lands here: expected, the probe times out
        log.debug("gossip udp error: %s", exc)


class UdpTransport(Transport):
    """UDP for packets, aiohttp over TCP for push-pull."""

    def __init__(self) -> None:
        self._udp: asyncio.DatagramTransport | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._on_packet: PacketHandler | None = None
        self._on_stream: StreamHandler | None = None
        self._resolved: dict[str, tuple[str, int]] = {}
        self.bound_port = 0
        self.pushpull_bound_port = 0

    @classmethod
    async def create(cls, bind: str, pushpull_port: int | None = None) -> UdpTransport:
        """Bind UDP at ``bind`` and the push-pull server at the same host, TCP
        ``pushpull_port`` (default: the UDP port; 0 picks free ports)."""
        self = cls()
        loop = asyncio.get_running_loop()
        host, port = split_addr(bind)
        udp, _ = await loop.create_datagram_endpoint(lambda: _Datagrams(self), local_addr=(host, port))
        self._udp = udp
        self.bound_port = int(udp.get_extra_info("sockname")[1])
        app = web.Application(client_max_size=MAX_STREAM_BYTES)
        app.router.add_post(PUSHPULL_PATH, self._handle_pushpull)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        pp_port = self.bound_port if pushpull_port is None else pushpull_port
        site = web.TCPSite(self._runner, host, pp_port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await self.close()
            raise
        addrs = self._runner.addresses
        self.pushpull_bound_port = int(addrs[0][1]) if addrs else pp_port
        return self

    def set_handlers(self, on_packet: PacketHandler, on_stream: StreamHandler) -> None:
        self._on_packet, self._on_stream = on_packet, on_stream

    def _on_datagram(self, data: bytes, src: str) -> None:
        if self._on_packet is not None:
            self._on_packet(data, src)

    def send_packet(self, addr: str, data: bytes) -> None:
        if self._udp is None or self._udp.is_closing():
            return
        dest = self._resolved.get(addr)
        if dest is None:
            dest = self._resolved[addr] = split_addr(addr)
            if len(self._resolved) > 100_000:  # addresses churn over months: stay bounded
                self._resolved.clear()
        self._udp.sendto(data, dest)

    def send_stream(self, addr: str, data: bytes, on_reply: ReplyCallback, timeout_s: float) -> None:
        task = asyncio.get_running_loop().create_task(self._post(addr, data, on_reply, timeout_s))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post(self, addr: str, data: bytes, on_reply: ReplyCallback, timeout_s: float) -> None:
        reply: bytes | None = None
        try:
            if self._session is None:
                self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s))
            async with self._session.post(
                f"http://{addr}{PUSHPULL_PATH}", data=data,
                headers={"Content-Type": "application/octet-stream"},
                timeout=aiohttp.ClientTimeout(total=timeout_s),
            ) as resp:
                if resp.status == 200:
                    reply = await resp.read()
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            log.debug("push-pull with %s failed: %r", addr, exc)
        on_reply(reply)

    async def _handle_pushpull(self, request: web.Request) -> web.StreamResponse:
        data = await request.read()
        peer = request.transport.get_extra_info("peername") if request.transport else None
        src = join_addr(str(peer[0]), int(peer[1])) if peer else "?:0"
        reply = self._on_stream(data, src) if self._on_stream is not None else None
        if reply is None:
            return web.Response(status=403)
        return web.Response(body=reply, content_type="application/octet-stream")

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._udp is not None:
            self._udp.close()
            self._udp = None
