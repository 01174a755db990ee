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

Delays are scheduled with ``loop.call_at`` from the arrival time, so they do
not add up along a stream and order is kept; asyncio timers fire up to ~1 ms
late, which is the emulator's error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
from dataclasses import dataclass
from typing import Any

from .messages import split_addr


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
        self._egress: asyncio.DatagramTransport | None = None
        self._servers: list[asyncio.base_events.Server] = []
        self._conns: set[asyncio.Task[None]] = set()
        self.forwarded_packets = 0

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
        self._egress, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, family=socket.AF_INET)
        for ep in self.endpoints:
            udp, _ = await loop.create_datagram_endpoint(lambda ep=ep: _UdpIngress(self, ep), local_addr=ep.public)
            self._udp.append(udp)
            server = await asyncio.start_server(
                lambda r, w, ep=ep: self._tcp_accept(r, w, ep), ep.public[0], ep.public[1], reuse_address=True)
            self._servers.append(server)

    def _forward_datagram(self, data: bytes, src_ip: str, ep: Endpoint) -> None:
        loop = asyncio.get_running_loop()
        delay = self.one_way_s(src_ip, ep.region)
        loop.call_at(loop.time() + delay, self._emit, data, ep.real)

    def _emit(self, data: bytes, dest: tuple[str, int]) -> None:
        if self._egress is not None and not self._egress.is_closing():
            self.forwarded_packets += 1
            self._egress.sendto(data, dest)

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
        if self._egress is not None:
            self._egress.close()


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
