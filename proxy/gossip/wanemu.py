"""A userspace WAN emulator: a UDP and TCP relay that delays traffic per region pair.

The kernels these tests and demos run on have no netem qdisc, so the delays
between regions are made here. Each node is reached through a *public*
address owned by the relay; the relay forwards what arrives there to the
node's *real* address after half the configured round trip for the pair
(source region, destination region), so a ping and its ack cross it twice and
see the whole round trip. The source region is recognised by the sender's IP
(nodes send from their real address); traffic from an unknown IP is forwarded
without delay.

    {"endpoints": [{"public": "10.99.0.1:7946", "real": "10.99.1.1:7946", "region": "us-east-1"}, ...],
     "sources":   {"10.99.1.1": "us-east-1", ...},
     "rtt_ms":    {"us-east-1": {"eu-west-1": 70, ...}, ...}}      (symmetric if one side is given)

    python -m proxy.gossip.wanemu --config relay.json     # serves until SIGTERM

Delays count from the arrival time, so they do not add up along a stream and
order is kept. Datagrams leave from a sender thread (see ``_Emitter`` for why);
TCP chunks are timed by the event loop, ~1 ms coarser.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import signal
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from .messages import split_addr


class _Emitter(threading.Thread):
    """Sends delayed datagrams from a thread of its own.

    asyncio rounds its epoll timeout up to whole milliseconds, so a packet held
    by ``call_at`` leaves 0.4-1.4 ms late (measured through this relay on the
    2-core test host): 2-7 % of a 20 ms round trip, twice per round trip. A
    condition variable's timed wait sleeps on a futex with a nanosecond
    timeout instead: ~0.1 ms late.
    """

    def __init__(self) -> None:
        super().__init__(name="wanemu-emitter", daemon=True)
        self._heap: list[tuple[float, int, bytes, tuple[str, int]]] = []
        self._cond = threading.Condition()
        self._seq = 0
        self._stopped = False
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sent = 0

    def put(self, due: float, data: bytes, dest: tuple[str, int]) -> None:
        with self._cond:
            self._seq += 1
            heapq.heappush(self._heap, (due, self._seq, data, dest))
            self._cond.notify()

    def run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and (not self._heap or self._heap[0][0] > time.monotonic()):
                    self._cond.wait(None if not self._heap else self._heap[0][0] - time.monotonic())
                if self._stopped:
                    return
                _, _, data, dest = heapq.heappop(self._heap)
            try:
                self.sock.sendto(data, dest)
                self.sent += 1
            except OSError:
                pass

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self.join(timeout=2)
        self.sock.close()


@dataclass(frozen=True)
class Endpoint:
    public: tuple[str, int]
    real: tuple[str, int]
    region: str


class WanEmulator:
    def __init__(self, endpoints: list[Endpoint], sources: dict[str, str],
                 rtt_ms: dict[str, dict[str, float]]) -> None:
        self.endpoints = endpoints
        self.sources = sources
        self.rtt_ms: dict[str, dict[str, float]] = {}
        for a, row in rtt_ms.items():
            for b, ms in row.items():
                self.rtt_ms.setdefault(a, {})[b] = float(ms)
                self.rtt_ms.setdefault(b, {}).setdefault(a, float(ms))
        self._udp: list[asyncio.DatagramTransport] = []
        self._emitter = _Emitter()
        self._servers: list[asyncio.base_events.Server] = []
        self._conns: set[asyncio.Task[None]] = set()

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> WanEmulator:
        eps = [Endpoint(split_addr(e["public"]), split_addr(e["real"]), e["region"]) for e in cfg["endpoints"]]
        return cls(eps, dict(cfg.get("sources", {})), cfg.get("rtt_ms", {}))

    def one_way_s(self, src_ip: str, dst_region: str) -> float:
        src_region = self.sources.get(src_ip)
        if src_region is None or src_region == dst_region:
            return 0.0
        return self.rtt_ms.get(src_region, {}).get(dst_region, 0.0) / 2000.0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._emitter.start()
        for ep in self.endpoints:
            udp, _ = await loop.create_datagram_endpoint(lambda ep=ep: _UdpIngress(self, ep), local_addr=ep.public)
            self._udp.append(udp)
            server = await asyncio.start_server(
                lambda r, w, ep=ep: self._tcp_accept(r, w, ep), ep.public[0], ep.public[1], reuse_address=True)
            self._servers.append(server)

    def _forward_datagram(self, data: bytes, src_ip: str, ep: Endpoint) -> None:
        self._emitter.put(time.monotonic() + self.one_way_s(src_ip, ep.region), data, ep.real)

    @property
    def forwarded_packets(self) -> int:
        return self._emitter.sent

    def _tcp_accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ep: Endpoint) -> None:
        task = asyncio.get_running_loop().create_task(self._tcp_relay(reader, writer, ep))
        self._conns.add(task)
        task.add_done_callback(self._conns.discard)

    async def _tcp_relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ep: Endpoint) -> None:
        peer = writer.get_extra_info("peername")
        src_ip = str(peer[0]) if peer else ""
        delay = self.one_way_s(src_ip, ep.region)
        # the reverse direction: from the destination's region back to the source's
        back = 0.0
        src_region = self.sources.get(src_ip)
        if src_region is not None and src_region != ep.region:
            back = self.rtt_ms.get(ep.region, {}).get(src_region, 0.0) / 2000.0
        try:
            up_reader, up_writer = await asyncio.open_connection(*ep.real)
        except OSError:
            writer.close()
            return
        try:
            await asyncio.gather(_pipe(reader, up_writer, delay), _pipe(up_reader, writer, back))
        finally:
            for w in (writer, up_writer):
                w.close()

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for task in list(self._conns):
            task.cancel()
        await asyncio.gather(*self._conns, return_exceptions=True)
        for server in self._servers:
            await server.wait_closed()
        for udp in self._udp:
            udp.close()
        self._emitter.stop()


class _UdpIngress(asyncio.DatagramProtocol):
    def __init__(self, emu: WanEmulator, ep: Endpoint) -> None:
        self.emu = emu
        self.ep = ep

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.emu._forward_datagram(data, str(addr[0]), self.ep)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    """Copy reader -> writer, each chunk written ``delay`` after it arrived, in order."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def drain() -> None:
        while True:
            due, chunk = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not chunk:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(chunk)
            await writer.drain()

    sender = loop.create_task(drain())
    try:
        while True:
            chunk = await reader.read(65536)
            queue.put_nowait((loop.time() + delay, chunk))
            if not chunk:
                break
        await sender
    except (ConnectionError, OSError):
        pass
    finally:
        sender.cancel()


def loopback_plan(rtt_ms: dict[str, dict[str, float]], port: int = 7946, public_net: str = "127.0.9",
                  real_net: str = "127.0.10") -> tuple[dict[str, Any], dict[str, tuple[str, str]]]:
    """Emulator config and per-region (bind, advertise) addresses for one node
    per region on this machine's loopback (the demo): node i binds
    ``real_net.i:port`` and advertises ``public_net.i:port``, which the
    emulator owns. (TCP push-pull leaves from 127.0.0.1 on loopback, so only
    UDP, which the latency matrix is measured on, is delayed there.)"""
    regions = sorted(set(rtt_ms) | {b for row in rtt_ms.values() for b in row})
    endpoints, sources, nodes = [], {}, {}
    for i, region in enumerate(regions, start=1):
        public, real = f"{public_net}.{i}:{port}", f"{real_net}.{i}:{port}"
        endpoints.append({"public": public, "real": real, "region": region})
        sources[f"{real_net}.{i}"] = region
        nodes[region] = (real, public)
    return {"endpoints": endpoints, "sources": sources, "rtt_ms": rtt_ms}, nodes


async def _serve(cfg: dict[str, Any]) -> None:
    emu = WanEmulator.from_config(cfg)
    await emu.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("wanemu ready", flush=True)
    try:
        await stop.wait()
    finally:
        await emu.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="JSON file: endpoints, sources, rtt_ms")
    args = ap.parse_args()
    with open(args.config) as f:
        cfg = json.load(f)
    asyncio.run(_serve(cfg))


if __name__ == "__main__":
    main()
