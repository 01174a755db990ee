"""An in-memory network on a fake clock (memberlist's mock_transport.go, plus
the faults memberlist leaves to real networks).

``EventScheduler`` is a discrete-event clock: ``run_until`` pops the next due
event, sets the time to it and runs it, so a minute of a 500-node cluster costs
only the CPU of its messages. ``MemoryNetwork`` delivers packets and push-pull
streams between ``MemoryTransport`` endpoints after a per-link latency, drops
packets at a loss rate, and cuts links by partition or by killing a node.
Every delivery is an event on the same scheduler, so runs are reproducible
from the seed of the ``random.Random`` passed in.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Iterable
from typing import Any

from .transport import PacketHandler, ReplyCallback, StreamHandler, Transport


class _Event:
    __slots__ = ("fn", "args", "cancelled")

    def __init__(self, fn: Callable[..., None], args: tuple[Any, ...]) -> None:
        self.fn = fn
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class EventScheduler:
    """Fake clock + timer queue; implements clock.Scheduler."""

    def __init__(self, start: float = 0.0, wall_offset: float = 1_700_000_000.0) -> None:
        self._now = start
        self.wall_offset = wall_offset
        self._queue: list[tuple[float, int, _Event]] = []
        self._seq = 0
        self.events_run = 0

    def time(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._now + self.wall_offset

    def call_at(self, when: float, callback: Callable[..., None], *args: Any) -> _Event:
        ev = _Event(callback, args)
        self._seq += 1
        heapq.heappush(self._queue, (max(when, self._now), self._seq, ev))
        return ev

    def call_later(self, delay: float, callback: Callable[..., None], *args: Any) -> _Event:
        return self.call_at(self._now + delay, callback, *args)

    def run_until(self, t: float, stop: Callable[[], bool] | None = None) -> bool:
        """Run events due up to ``t``; with ``stop``, return True as soon as it holds
        (checked after each event), leaving the clock at that event's time."""
        queue = self._queue
        while queue and queue[0][0] <= t:
            when, _, ev = heapq.heappop(queue)
            if ev.cancelled:
                continue
            self._now = when
            self.events_run += 1
            ev.fn(*ev.args)
            if stop is not None and stop():
                return True
        self._now = max(self._now, t)
        return False

    def run_for(self, dt: float) -> None:
        self.run_until(self._now + dt)


LatencyFn = Callable[[str, str], float]  # (src addr, dst addr) -> one-way seconds


class MemoryNetwork:
    def __init__(self, scheduler: EventScheduler, rng: random.Random,
                 latency: LatencyFn | float = 0.001, loss: float = 0.0) -> None:
        self.scheduler = scheduler
        self.rng = rng
        self.latency: LatencyFn = latency if callable(latency) else (lambda _s, _d, _l=float(latency): _l)
        self.loss = loss
        self.endpoints: dict[str, MemoryTransport] = {}
        self._down: set[str] = set()
        self._group: dict[str, int] | None = None
        self.packets_sent = 0
        self.packets_dropped = 0

    def transport(self, addr: str) -> MemoryTransport:
        ep = MemoryTransport(self, addr)
        self.endpoints[addr] = ep
        self._down.discard(addr)
        return ep

    # ---- faults ----

    def kill(self, addr: str) -> None:
        """The node at ``addr`` stops sending and receiving (a crash, not a leave)."""
        self._down.add(addr)

    def partition(self, groups: Iterable[Iterable[str]]) -> None:
        """Only nodes in the same group reach each other; unlisted nodes reach nobody."""
        self._group = {addr: i for i, group in enumerate(groups) for addr in group}

    def heal(self) -> None:
        self._group = None

    def reachable(self, src: str, dst: str) -> bool:
        if src in self._down or dst in self._down or dst not in self.endpoints:
            return False
        if self._group is not None:
            g = self._group.get(src)
            return g is not None and g == self._group.get(dst)
        return True

    # ---- delivery ----

    def _send_packet(self, src: str, dst: str, data: bytes) -> None:
        self.packets_sent += 1
        if not self.reachable(src, dst) or (self.loss and self.rng.random() < self.loss):
            self.packets_dropped += 1
            return
        self.scheduler.call_later(self.latency(src, dst), self._arrive, src, dst, data)

    def _arrive(self, src: str, dst: str, data: bytes) -> None:
        ep = self.endpoints.get(dst)
        if ep is None or dst in self._down or (self._group is not None and not self.reachable(src, dst)):
            self.packets_dropped += 1
            return
        ep.bytes_in += len(data)
        if ep.on_packet is not None:
            ep.on_packet(data, src)

    def _send_stream(self, src: str, dst: str, data: bytes, on_reply: ReplyCallback, timeout_s: float) -> None:
        # reliable channel: no loss, but a cut link or a dead peer fails after the timeout
        if not self.reachable(src, dst):
            self.scheduler.call_later(timeout_s, on_reply, None)
            return
        one_way = self.latency(src, dst)
        # TCP + HTTP: connect (1 RTT) then request and response (1 RTT)
        if 4 * one_way > timeout_s:
            self.scheduler.call_later(timeout_s, on_reply, None)
            return
        self.scheduler.call_later(3 * one_way, self._stream_arrive, src, dst, data, on_reply, one_way)

    def _stream_arrive(self, src: str, dst: str, data: bytes, on_reply: ReplyCallback, one_way: float) -> None:
        ep = self.endpoints.get(dst)
        if ep is None or not self.reachable(src, dst) or ep.on_stream is None:
            on_reply(None)
            return
        ep.bytes_in += len(data)
        reply = ep.on_stream(data, src)
        if reply is not None:
            ep.bytes_out += len(reply)
            src_ep = self.endpoints.get(src)
            if src_ep is not None:
                src_ep.bytes_in += len(reply)
        self.scheduler.call_later(one_way, on_reply, reply)


class MemoryTransport(Transport):
    def __init__(self, net: MemoryNetwork, addr: str) -> None:
        self.net = net
        self.addr = addr
        self.on_packet: PacketHandler | None = None
        self.on_stream: StreamHandler | None = None
        self.bytes_out = 0
        self.bytes_in = 0

    def set_handlers(self, on_packet: PacketHandler, on_stream: StreamHandler) -> None:
        self.on_packet, self.on_stream = on_packet, on_stream

    def send_packet(self, addr: str, data: bytes) -> None:
        if self.addr in self.net._down:
            return
        self.bytes_out += len(data)
        self.net._send_packet(self.addr, addr, data)

    def send_stream(self, addr: str, data: bytes, on_reply: ReplyCallback, timeout_s: float) -> None:
        if self.addr in self.net._down:
            return
        self.bytes_out += len(data)
        self.net._send_stream(self.addr, addr, data, on_reply, timeout_s)

    async def close(self) -> None:
        self.close_now()

    def close_now(self) -> None:
        self.on_packet = self.on_stream = None
        if self.net.endpoints.get(self.addr) is self:
            del self.net.endpoints[self.addr]
