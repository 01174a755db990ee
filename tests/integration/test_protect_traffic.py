"""Real traffic on 127.0.0.x: 50 steady clients and one attacker ramping to 50x.

The server is a real node (`novaedge run`) in front of a backend that
answers after a simulated 10 ms upstream; refused requests are answered by
the node at once. Its mitigations and decision counters are read from its
admin API.

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
import multiprocessing
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest


NORMAL = [f"127.0.0.{i}" for i in range(2, 52)]
ATTACKER = "127.0.1.1"
RATE = 5.0                  # req/s of every normal client, and of the attacker at first
PEAK = 50 * RATE
WARM, RAMP, HOLD = 10.0, 1.0, 5.0
UPSTREAM_S = 0.010

CONFIG = {
    # Shadow only (the detector does the blocking), tight enough that the attacker
    # passes it during the ramp, before any mitigation: normal clients run at 5/s.
    "rate_limits": [{"name": "per-ip", "key": "ip", "rate": 10, "burst": 10, "shadow": True}],
    "detector": {
        "enabled": True, "keys": ["ip", "prefix"], "warmup_s": 5, "min_rate": 20,
        "mitigation": {"action": "limit", "ttl_s": 10, "escalate_after_s": 2},
        "global": {"min_rate": 200, "strict_per_ip_rate": 30, "strict_per_ip_burst": 30}},
    "table_size": 1 << 16,
}


@contextlib.contextmanager
def serving(config: dict[str, Any], workers: int = 1) -> Iterator[int]:
    """A real node (`novaedge run`, `workers` processes) with this protection
    config, in front of a backend (in its own process) that answers after a
    simulated 10 ms upstream; yields the node's port. `/_protect` on the
    test side reads the node's mitigations and decision counters through the
    admin API (see protect_state)."""
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    import yaml

    from tests.support.proc import REPO, free_port
    mp = multiprocessing.get_context("fork")
    backend_port, port, admin = free_port(), free_port(), free_port()
    ready = mp.Event()
    backend = mp.Process(target=_backend, args=(backend_port, ready), daemon=True)
    backend.start()
    assert ready.wait(10), "backend did not start"
    tmp = Path(tempfile.mkdtemp(prefix="novaedge-protect-"))
    cfg = {"workers": workers, "listeners": [{"bind": f"127.0.0.1:{port}"}],
           "pools": {"web": {"regions": {"us-east-1": [f"127.0.0.1:{backend_port}"]}}},
           "routes": [{"name": "web", "pool": "web"}],
           "protection": config, "access_log": {"enabled": False},
           "admin": {"listen": f"127.0.0.1:{admin}"}}
    (tmp / "node.yaml").write_text(yaml.safe_dump(cfg))
    log = open(tmp / "node.log", "wb")
    node = subprocess.Popen([sys.executable, "-m", "proxy", "run", str(tmp / "node.yaml")],
                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        import socket
        for _ in range(200):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        # The port opens with the first worker; a test that needs them all must
        # not connect before the others listen (SO_REUSEPORT spreads only over
        # the listeners that exist). Fresh connections until each has answered.
        seen: set[bytes] = set()
        deadline = time.monotonic() + 15
        while len(seen) < workers and time.monotonic() < deadline:
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: warm\r\nConnection: close\r\n\r\n")
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    head += chunk
            if b"X-Request-Id: " in head:
                seen.add(head.split(b"X-Request-Id: ")[1].split(b"-")[0])
        assert len(seen) == workers, f"only {len(seen)} of {workers} workers answered"
        _ADMIN[port] = admin
        yield port
    finally:
        node.terminate()
        node.wait(15)
        log.close()
        backend.terminate()
        backend.join(5)


_ADMIN: dict[int, int] = {}


def _backend(port: int, ready: Any) -> None:
    import uvloop

    from tests.support.backend import TestBackend

    async def main() -> None:
        b = await TestBackend.start("web", port=port)
        b.delay_s = UPSTREAM_S
        ready.set()
        await asyncio.Event().wait()
    uvloop.run(main())


async def protect_state(port: int) -> dict[str, Any]:
    """Mitigations and decision counters of the node, via its admin API
    (workers report once a second: wait for one report)."""
    import aiohttp
    await asyncio.sleep(1.3)
    admin = _ADMIN[port]
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://127.0.0.1:{admin}/api/mitigations") as r:
            mitigations = await r.json()
        async with s.get(f"http://127.0.0.1:{admin}/metrics") as r:
            metrics = await r.text()
    counters: dict[str, float] = {}
    for line in metrics.splitlines():
        if line.startswith("novaedge_protect_decisions_total{"):
            labels = dict(kv.split("=") for kv in line[line.index("{") + 1:line.index("}")].split(","))
            key = f"{labels['rule'].strip(chr(34))}|{labels['action'].strip(chr(34))}"
            counters[key] = counters.get(key, 0) + float(line.rsplit(" ", 1)[1])
    wall_minus_mono = time.time() - time.monotonic()
    for m in mitigations:
        m["since"] = m["since"] - wall_minus_mono     # back to CLOCK_MONOTONIC, like t0
    return {"mitigations": mitigations, "counters": counters}


@pytest.fixture
def protected_server() -> Iterator[int]:
    """Port of a real node that runs the protect phase per request."""
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
    state = await protect_state(port)

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
    workers = {h.split(b"X-Request-Id: ")[1].split(b"-")[0] for h in heads}
    print(f"\n2 workers: admitted {admitted} of {len(statuses)} in {secs:.0f} s, expected {expected:.0f}")
    assert len(workers) == 2                                  # both workers served
    assert len(statuses) > 5 * expected                       # offered well above the limit
    assert set(statuses) == {200, 429}
    assert abs(admitted - expected) <= 0.10 * expected, admitted
