"""Gossip end to end: one network namespace per region, real sockets, delays
made by the WAN emulator (proxy/gossip/wanemu.py) in a hub namespace.

Topology (all inside namespaces this test creates; nothing touches the host's
own interfaces)::

    ns "region i"                             ns "hub"
    lo: 10.99.1.i/32 (node's real addr)       lo: 10.99.0.1 .. 10.99.0.n /32 (public addrs)
    eth0 10.98.i.2/30  <---- veth ---->       h<i> 10.98.i.1/30
    route 10.99.0.0/24 via 10.98.i.1          route 10.99.1.i/32 via 10.98.i.2
          src 10.99.1.i                       wanemu: public 10.99.0.i -> real 10.99.1.i
                                              after RTT(src region, region i) / 2

Each node binds 0.0.0.0:7946 in its namespace and advertises 10.99.0.i:7946,
so every packet and push-pull between regions crosses the emulator twice per
round trip. The test reads each node's /gossip/state over a unix socket (not
separated by network namespaces) and sets one region's backends unhealthy
through POST /gossip/local-health. About 10 s.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
REGIONS = ("us-east-1", "ca-central-1", "eu-west-1")
RTT_MS = {("us-east-1", "ca-central-1"): 20.0, ("us-east-1", "eu-west-1"): 70.0, ("ca-central-1", "eu-west-1"): 150.0}
KEY = "k1=hex:" + "c3" * 32


def rtt(a: str, b: str) -> float:
    return RTT_MS.get((a, b)) or RTT_MS[(b, a)]


def _namespaces_usable() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2's `ip` is needed to run processes inside namespaces"
    try:
        from pyroute2 import netns

        probe = f"nge-probe-{os.getpid()}"
        netns.create(probe)
        netns.remove(probe)
    except Exception as exc:  # noqa: BLE001 - any failure here means: not permitted on this host
        return f"cannot create network namespaces here: {exc!r}"
    return None


class Topology:
    def __init__(self, tmp: Path) -> None:
        tag = os.getpid() % 100000
        self.hub = f"nge-hub-{tag}"
        self.ns = [f"nge-r{i}-{tag}" for i in range(len(REGIONS))]
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []
        self.created: list[str] = []

    def public(self, i: int) -> str:
        return f"10.99.0.{i + 1}"

    def real(self, i: int) -> str:
        return f"10.99.1.{i + 1}"

    def build(self) -> None:
        from pyroute2 import NetNS, netns

        for name in [self.hub, *self.ns]:
            netns.create(name)
            self.created.append(name)
        with NetNS(self.hub) as hub:
            hub.link("set", index=hub.link_lookup(ifname="lo")[0], state="up")
            for i, ns_name in enumerate(self.ns):
                hub.addr("add", index=hub.link_lookup(ifname="lo")[0], address=self.public(i), prefixlen=32)
                hub.link("add", ifname=f"h{i}", kind="veth", peer=f"p{i}")
                hub.link("set", index=hub.link_lookup(ifname=f"p{i}")[0], net_ns_fd=ns_name)
                hidx = hub.link_lookup(ifname=f"h{i}")[0]
                hub.addr("add", index=hidx, address=f"10.98.{i}.1", prefixlen=30)
                hub.link("set", index=hidx, state="up")
                hub.route("add", dst=f"{self.real(i)}/32", gateway=f"10.98.{i}.2")
        for i, ns_name in enumerate(self.ns):
            with NetNS(ns_name) as ns:
                lo = ns.link_lookup(ifname="lo")[0]
                ns.link("set", index=lo, state="up")
                ns.addr("add", index=lo, address=self.real(i), prefixlen=32)
                pidx = ns.link_lookup(ifname=f"p{i}")[0]
                ns.addr("add", index=pidx, address=f"10.98.{i}.2", prefixlen=30)
                ns.link("set", index=pidx, state="up")
                ns.route("add", dst="10.99.0.0/24", gateway=f"10.98.{i}.1", prefsrc=self.real(i))

    def spawn(self, ns_name: str, args: list[str], log: str) -> subprocess.Popen[bytes]:
        env = dict(os.environ, PYTHONPATH=str(ROOT), GOSSIP_KEYS=KEY)
        out = open(self.tmp / log, "wb")  # noqa: SIM115 - closed with the process below
        proc = subprocess.Popen(["ip", "netns", "exec", ns_name, sys.executable, *args],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        out.close()
        self.procs.append(proc)
        return proc

    def start(self) -> None:
        cfg = {
            "endpoints": [{"public": f"{self.public(i)}:7946", "real": f"{self.real(i)}:7946", "region": r}
                          for i, r in enumerate(REGIONS)],
            "sources": {self.real(i): r for i, r in enumerate(REGIONS)},
            "rtt_ms": {a: {b: rtt(a, b) for b in REGIONS if b != a} for a in REGIONS},
        }
        (self.tmp / "wan.json").write_text(json.dumps(cfg))
        self.spawn(self.hub, ["-m", "proxy.gossip.wanemu", "--config", str(self.tmp / "wan.json")], "wanemu.log")
        for i, region in enumerate(REGIONS):
            self.spawn(self.ns[i], [
                "-m", "proxy.gossip", "--name", f"{region}-a", "--region", region,
                "--bind", "0.0.0.0:7946", "--advertise", f"{self.public(i)}:7946",
                "--seed", f"{self.public(0)}:7946", "--regions", ",".join(REGIONS),
                "--health", "3/3", "--api-unix", str(self.sock(i)), "--pushpull-interval-s", "5",
            ], f"node{i}.log")

    def sock(self, i: int) -> Path:
        return self.tmp / f"node{i}.sock"

    def teardown(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        from pyroute2 import netns

        for name in self.created:
            try:
                netns.remove(name)
            except OSError:
                pass

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in self.tmp.glob("*.log"))


@pytest.fixture
def topology(tmp_path: Path) -> Iterator[Topology]:
    reason = _namespaces_usable()
    if reason:
        pytest.skip(f"gossip e2e skipped: {reason}")
    short = Path(f"/tmp/nge-{os.getpid()}")  # unix socket paths must stay under 108 bytes
    short.mkdir(exist_ok=True)
    topo = Topology(short)
    try:
        topo.build()
        topo.start()
        yield topo
    finally:
        topo.teardown()
        (tmp_path / "logs.txt").write_text(topo.logs())
        shutil.rmtree(short, ignore_errors=True)


async def fetch_states(topo: Topology, session_by_node: list[aiohttp.ClientSession]) -> list[dict[str, Any] | None]:
    out: list[dict[str, Any] | None] = []
    for session in session_by_node:
        try:
            async with session.get("http://node/gossip/state") as resp:
                out.append(await resp.json())
        except (aiohttp.ClientError, OSError):
            out.append(None)
    return out


def matrix_ok(state: dict[str, Any] | None) -> bool:
    if state is None:
        return False
    m = state["latency_matrix_ms"]
    for a in REGIONS:
        for b in REGIONS:
            if a != b and abs(m.get(a, {}).get(b, -1e9) - rtt(a, b)) > 0.15 * rtt(a, b):
                return False
    return True


@pytest.mark.timeout(90)
async def test_latency_matrix_and_region_failure_across_namespaces(topology: Topology) -> None:
    sessions = [aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(topology.sock(i))),
                                      timeout=aiohttp.ClientTimeout(total=2)) for i in range(len(REGIONS))]
    try:
        loop = asyncio.get_running_loop()
        start = loop.time()
        states: list[dict[str, Any] | None] = []
        while loop.time() - start < 30:
            states = await fetch_states(topology, sessions)
            if all(matrix_ok(s) for s in states):
                break
            await asyncio.sleep(0.5)
        assert all(matrix_ok(s) for s in states), (
            [s and s["latency_matrix_ms"] for s in states], topology.logs())
        for s in states:
            assert s is not None
            assert {m["name"]: m["state"] for m in s["members"]} == {f"{r}-a": "alive" for r in REGIONS}
            assert all(h["healthy"] for h in s["region_health"].values())

        # every backend of eu-west-1 fails: the other regions must know within 5 s
        async with sessions[2].post("http://node/gossip/local-health",
                                    json={"healthy_backends": 0, "total_backends": 3}) as resp:
            assert resp.status == 200
        failed_at = loop.time()
        took = None
        while loop.time() - failed_at < 10:
            states = await fetch_states(topology, sessions)
            if all(s is not None and not s["region_health"]["eu-west-1"]["healthy"] for s in states[:2]):
                took = loop.time() - failed_at
                break
            await asyncio.sleep(0.1)
        assert took is not None and took < 5.0, (took, topology.logs())
        print(f"\nmatrix (us-east-1 view): {states[0] and states[0]['latency_matrix_ms']}; "
              f"eu-west-1 failure seen by the others after {took:.2f} s")
    finally:
        for session in sessions:
            await session.close()
