"""Real traffic on 127.0.0.x: 50 steady clients and one attacker ramping to 50x.

The server is a small raw-asyncio HTTP/1.1 server (httptools) in a forked
process that calls Protection.check per request, ticks it every 0.25 s, and
answers 200 after a simulated 10 ms upstream (refused requests are answered at
once, as the node does). GET /_protect returns its mitigations and counters.
`protected_server` is the one thing to swap to point this test at the real
node later.

Timeline (seconds after T0, CLOCK_MONOTONIC, shared by the processes):
  0 .. 10  everyone at 5 req/s (the detector warms up on 5 s);
           normal-client latency over 2 .. 10 is the baseline
  10 .. 11 the attacker (127.0.1.1, its own /24) ramps 5 -> 250 req/s
  11 .. 16 the attacker holds 250 req/s (50x)
Checks: the attacker gets its first 429 within 2 s of the ramp start and is
held near its baseline afterwards; the 50 normal clients (127.0.0.2-51) get
no 429 and their p99 latency during the attack is within 20% of baseline
(p99 per 0.5 s window, median over the phase: see the test for why).
Takes ~19 s.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import time
from collections.abc import Iterator
from typing import Any

import httptools
import pytest

from proxy.context import RequestContext
from proxy.protect import Protection, ProtectionConfig, SharedState

NORMAL = [f"127.0.0.{i}" for i in range(2, 52)]
ATTACKER = "127.0.1.1"
RATE = 5.0                  # req/s of every normal client, and of the attacker at first
PEAK = 50 * RATE
WARM, RAMP, HOLD = 10.0, 1.0, 5.0
UPSTREAM_S = 0.010

CONFIG = {
    "rate_limits": [{"name": "per-ip", "key": "ip", "rate": 30, "burst": 30, "shadow": True}],
    "detector": {
        "enabled": True, "keys": ["ip", "prefix"], "warmup_s": 5, "min_rate": 20,
        "mitigation": {"action": "limit", "ttl_s": 10, "escalate_after_s": 2},
        "global": {"min_rate": 200, "strict_per_ip_rate": 30, "strict_per_ip_burst": 30}},
    "table_size": 1 << 16,
}


class Route:
    name = "web"


class _Conn(asyncio.Protocol):
    def __init__(self, prot: Protection) -> None:
        self.prot = prot
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.tr: Any = None

    def connection_made(self, transport: Any) -> None:
        self.tr = transport
        self.ip = transport.get_extra_info("peername")[0]
        if not self.prot.permits_connection("test", self.ip):
            transport.close()
            return
        self.client = self.prot.client(self.ip)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.tr.close()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_message_complete(self) -> None:
        url, headers = self.url, self.headers
        self.url, self.headers = b"", []
        now = time.monotonic()
        if url == b"/_protect":
            body = json.dumps({
                "mitigations": [dict(m, since=now - m["age_s"])
                                for m in self.prot.mitigations(now)],
                "counters": {f"{r}|{a}": n for (r, a), n in self.prot.counters().items()},
            }).encode()
            self._send(200, [], body)
            return
        ctx = RequestContext("r", now, "GET", "test", url.decode(), "", "1.1", self.ip, 0,
                             None, headers, "test")
        ctx.route = Route()
        rej = self.prot.check(ctx, now, self.client)
        if rej is not None:
            self._send(rej.status, rej.headers, rej.reason.encode())
        else:
            asyncio.get_running_loop().call_later(UPSTREAM_S, self._send, 200, [], b"ok")

    def _send(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        if self.tr.is_closing():
            return
        head = [b"HTTP/1.1 %d X\r\ncontent-length: %d\r\nx-worker: %d\r\n"
                % (status, len(body), os.getpid())]
        head += [n + b": " + v + b"\r\n" for n, v in headers]
        self.tr.write(b"".join(head) + b"\r\n" + body)


def _serve(pipe: Any, shared: SharedState, port: int, config: dict[str, Any]) -> None:
    """One worker: its own loop and Protection, the node's SharedState
    (allocated before fork), a SO_REUSEPORT listener on the node's port."""
    import socket

    import uvloop
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    prot = Protection(shared)
    prot.apply_config(ProtectionConfig.model_validate(config))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(512)
    loop.run_until_complete(loop.create_server(lambda: _Conn(prot), sock=sock))

    def tick() -> None:                    # as often as the node's sweep
        prot.tick(time.monotonic())
        loop.call_later(0.25, tick)
    loop.call_later(0.25, tick)
    pipe.send("ready")
    loop.run_forever()


@contextlib.contextmanager
def serving(config: dict[str, Any], workers: int = 1) -> Iterator[int]:
    """A node of `workers` forked processes running the protect phase per
    request; yields its port."""
    import socket
    ctx = multiprocessing.get_context("fork")
    shared = SharedState(config["table_size"], workers=workers)     # before fork
    reserve = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    reserve.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    reserve.bind(("127.0.0.1", 0))                 # holds the port, never listens
    port = reserve.getsockname()[1]
    procs = []
    try:
        for _ in range(workers):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_serve, args=(child, shared, port, config), daemon=True)
            proc.start()
            procs.append(proc)
            assert parent.poll(10), "server worker did not start"
            parent.recv()
        yield port
    finally:
        reserve.close()
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join()


@pytest.fixture
def protected_server() -> Iterator[int]:
    """Port of a server that runs the protect phase per request."""
    with serving(CONFIG) as port:
        yield port


# ---- clients ---------------------------------------------------------------

async def _get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
               path: bytes = b"/", head_out: list[bytes] | None = None) -> tuple[int, bytes]:
    writer.write(b"GET " + path + b" HTTP/1.1\r\nhost: test\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    if head_out is not None:
        head_out.append(head)
    return status, await reader.readexactly(length)


async def _normal_client(ip: str, port: int, t0: float, end: float, offset: float,
                         out: list[tuple[float, int, float]]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(ip, 0))
    try:
        k = 0
        while True:
            t = t0 + offset + k / RATE
            if t >= end:
                return
            await asyncio.sleep(max(0.0, t - time.monotonic()))
            sent = time.monotonic()
            status, _ = await _get(reader, writer)
            out.append((sent - t0, status, time.monotonic() - sent))
            k += 1
    finally:
        writer.close()


def _attack_schedule(t0: float) -> Iterator[float]:
    """Send times: RATE until WARM, linear ramp to PEAK over RAMP, then PEAK."""
    t = t0
    end = t0 + WARM + RAMP + HOLD
    while t < end:
        yield t
        x = t - t0 - WARM
        rate = RATE if x < 0 else PEAK if x >= RAMP else RATE + (PEAK - RATE) * x / RAMP
        t += 1.0 / rate


def _attack(port: int, t0: float, pipe: Any) -> None:
    import uvloop
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    out: list[tuple[float, int]] = []

    async def conn(times: Iterator[float]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port,
                                                       local_addr=(ATTACKER, 0))
        try:
            for t in times:
                await asyncio.sleep(max(0.0, t - time.monotonic()))
                status, _ = await _get(reader, writer)
                out.append((t - t0, status))
        finally:
            writer.close()

    async def main() -> None:
        times = _attack_schedule(t0)             # one generator shared by 16 connections
        await asyncio.gather(*(conn(times) for _ in range(16)))
    loop.run_until_complete(main())
    pipe.send(out)


def p99(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[int(0.99 * (len(xs) - 1))]


async def test_attacker_limited_normal_clients_unaffected(protected_server: int) -> None:
    port = protected_server
    t0 = time.monotonic() + 1.0
    end = t0 + WARM + RAMP + HOLD
    mp = multiprocessing.get_context("fork")
    parent, child = mp.Pipe()
    attacker = mp.Process(target=_attack, args=(port, t0, child), daemon=True)
    attacker.start()
    try:
        normal: list[tuple[float, int, float]] = []
        await asyncio.gather(*(_normal_client(ip, port, t0, end, i / len(NORMAL) / RATE, normal)
                               for i, ip in enumerate(NORMAL)))
        assert parent.poll(15), "attacker did not finish"
        attack: list[tuple[float, int]] = parent.recv()
    finally:
        attacker.join(5)
        if attacker.is_alive():
            attacker.kill()
            attacker.join()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    _, body = await _get(reader, writer, b"/_protect")
    writer.close()
    state = json.loads(body)

    # Normal clients: every request answered 200, latency unchanged.
    assert len(normal) > 0.95 * len(NORMAL) * RATE * (WARM + RAMP + HOLD)
    assert {s for _, s, _ in normal} == {200}
    # p99 latency, made robust to this shared machine: other jobs stall a
    # process for 20-50 ms every few seconds, which alone moves a p99 of a
    # few thousand samples by 2x either way (seen before any attack). So:
    # p99 of each 0.5 s window, and the median of those per phase.
    def windowed_p99(t_from: float, t_to: float) -> tuple[float, float]:
        per_window = []
        w = t_from
        while w < t_to:
            per_window.append(p99([lat for t, _, lat in normal if w <= t < w + 0.5]))
            w += 0.5
        whole = p99([lat for t, _, lat in normal if t_from <= t < t_to])
        return sorted(per_window)[len(per_window) // 2], whole
    base, base_all = windowed_p99(2.0, WARM)
    during, during_all = windowed_p99(WARM, WARM + RAMP + HOLD)
    assert during <= 1.2 * base, (f"p99 {during * 1e3:.2f} ms under attack vs "
                                  f"{base * 1e3:.2f} ms before (load {os.getloadavg()})")

    # Attacker: refused within 2 s of the ramp start, then held down.
    refused = sorted(t for t, s in attack if s == 429)
    assert refused and refused[0] < WARM + 2.0, refused[:3]
    assert all(s == 200 for t, s in attack if t < WARM)          # was fine before
    late = [s for t, s in attack if t >= WARM + 2.0]
    admitted_rate = sum(s == 200 for s in late) / (RAMP + HOLD - 2.0)
    assert len(late) > 500 and admitted_rate < 40, admitted_rate
    print(f"\nnormal p99 (median of 0.5 s windows) {base * 1e3:.2f} ms before, {during * 1e3:.2f}"
          f" ms during the attack (whole-phase p99 {base_all * 1e3:.1f} / {during_all * 1e3:.1f} ms);"
          f" attacker first 429 at +{refused[0] - WARM:.2f} s after the ramp start,"
          f" admitted {admitted_rate:.1f} req/s afterwards of {len(late) / (RAMP + HOLD - 2):.0f}")
    # The detector did it (the static per-ip rule is in shadow mode).
    ip_mitigations = [m for m in state["mitigations"] if m["key"] == ATTACKER]
    assert ip_mitigations and ip_mitigations[0]["since"] - t0 < WARM + 2.0
    assert not any(m["key"] in NORMAL for m in state["mitigations"])
    assert state["counters"]["per-ip|shadow"] > 0


# ---- two workers, one node-wide limit ----------------------------------------

LIMIT = {"rate_limits": [{"name": "per-ip", "key": "ip", "rate": 100, "burst": 20}],
         "table_size": 1 << 16}


async def test_two_workers_hold_a_100_per_second_limit_node_wide() -> None:
    """One client, 32 connections spread by SO_REUSEPORT over 2 workers,
    as fast as it can for 3 s: the node admits 100 req/s + burst, not 200."""
    secs = 3.0
    with serving(LIMIT, workers=2) as port:
        statuses: list[int] = []
        heads: list[bytes] = []
        start = time.monotonic() + 0.3
        end = start + secs

        async def conn() -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port,
                                                           local_addr=("127.0.0.9", 0))
            try:
                await asyncio.sleep(start - time.monotonic())
                while time.monotonic() < end:
                    status, _ = await _get(reader, writer, head_out=heads)
                    statuses.append(status)
            finally:
                writer.close()
        await asyncio.gather(*(conn() for _ in range(32)))
    admitted = statuses.count(200)
    expected = 100 * secs + 20
    workers = {h.split(b"x-worker: ")[1].split(b"\r\n")[0] for h in heads}
    print(f"\n2 workers: admitted {admitted} of {len(statuses)} in {secs:.0f} s, expected {expected:.0f}")
    assert len(workers) == 2                                  # both workers served
    assert len(statuses) > 5 * expected                       # offered well above the limit
    assert set(statuses) == {200, 429}
    assert abs(admitted - expected) <= 0.10 * expected, admitted
