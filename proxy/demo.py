"""`novaedge demo`: a node on the built-in default config, in front of demo
backends standing for three regions on loopback, with a generated GeoIP
database that maps loopback ranges to countries in several jurisdictions.

Each demo region's backends run in their own process (printed with its PID)
so an operator can stop a region for real: `kill -STOP <pid>` (hangs) or
`kill <pid>` (refuses), and watch traffic fail over.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

DEMO_REGIONS = {
    # region: (first backend port, service delay in ms: stands for distance)
    "us-east-1": (9101, 2),
    "eu-west-1": (9111, 25),
    "ap-northeast-1": (9121, 60),
}
BACKENDS_PER_REGION = 2
# Round trips the WAN emulator injects between the demo regions' gossip nodes.
DEMO_RTT_MS = {"us-east-1": {"eu-west-1": 70.0, "ap-northeast-1": 150.0},
               "eu-west-1": {"ap-northeast-1": 220.0}}
GOSSIP_PORT = 7946
DEMO_GOSSIP_KEY = {"demo": "hex:" + "6e6f766165646765" * 4}   # demo only: set your own

# 127.x.0.0/16 -> country: `curl --interface 127.x.0.1` is a client from there.
DEMO_GEO = [
    {"network": "127.0.0.0/8", "country": "US", "lat": 38.9, "lon": -77.0, "asn": 64500, "as_org": "Demo ISP"},
    {"network": "127.1.0.0/16", "country": "US", "lat": 40.7, "lon": -74.0, "city": "New York"},
    {"network": "127.2.0.0/16", "country": "DE", "lat": 50.1, "lon": 8.7, "city": "Frankfurt"},
    {"network": "127.3.0.0/16", "country": "FR", "lat": 48.9, "lon": 2.35, "city": "Paris"},
    {"network": "127.4.0.0/16", "country": "JP", "lat": 35.7, "lon": 139.7, "city": "Tokyo"},
    {"network": "127.5.0.0/16", "country": "BR", "lat": -23.5, "lon": -46.6, "city": "Sao Paulo"},
    {"network": "127.6.0.0/16", "country": "KP"},
]


class DemoBackend(asyncio.Protocol):
    """A tiny HTTP/1.1 server answering JSON about what it saw, after a delay."""

    def __init__(self, region: str, name: str, delay: float) -> None:
        self.region, self.name, self.delay = region, name, delay
        self.buf = b""
        self.t: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            head, _, rest = self.buf.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
            n = int(headers.get("content-length", "0") or 0)
            if len(rest) < n:
                return
            self.buf = rest[n:]
            asyncio.get_running_loop().call_later(self.delay, self._answer, lines[0], headers)

    def _answer(self, request_line: str, headers: dict[str, str]) -> None:
        if self.t is None or self.t.is_closing():
            return
        path = request_line.split(" ")[1] if " " in request_line else "/"
        if path.startswith("/healthz"):
            body = b"ok"
        else:
            body = json.dumps({
                "served_by": self.name, "region": self.region, "request": request_line,
                "client_country": headers.get("x-client-country"),
                "edge_region": headers.get("x-edge-region"),
                "x_forwarded_for": headers.get("x-forwarded-for"),
            }, indent=1).encode() + b"\n"
        self.t.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%b" % (len(body), body))


def _die_with_parent() -> None:
    """A demo child must not outlive the demo (it holds fixed ports): ask the
    kernel for SIGTERM when the parent dies (Linux prctl PR_SET_PDEATHSIG)."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def gossip_plan() -> tuple[dict[str, Any], dict[str, tuple[str, str]]]:
    from .gossip.wanemu import loopback_plan
    return loopback_plan(DEMO_RTT_MS, GOSSIP_PORT, public_net="127.0.9", real_net="127.0.10")


def _serve_region(region: str, first_port: int, delay_ms: int,
                  gossip: tuple[str, str, str] | None) -> None:
    """A demo region: its backends and, for a remote region, its gossip node
    (freeze the process and the region's node goes silent too)."""
    async def main() -> None:
        loop = asyncio.get_running_loop()
        for i in range(BACKENDS_PER_REGION):
            name = f"{region}-b{i + 1}"
            await loop.create_server(lambda name=name: DemoBackend(region, name, delay_ms / 1000),
                                     "127.0.0.1", first_port + i)
        gnode = None
        if gossip is not None:
            from .gossip import GossipConfig, start_gossip, stop_gossip
            bind, advertise, seed = gossip
            gnode = await start_gossip(GossipConfig(
                enabled=True, node_name=f"demo-{region}", region=region, bind=bind,
                advertise=advertise, seeds=(seed,), keys=DEMO_GOSSIP_KEY,  # type: ignore[arg-type]
                regions=tuple(DEMO_REGIONS)))
            gnode.set_local_health(BACKENDS_PER_REGION, BACKENDS_PER_REGION)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        await stop.wait()
        if gnode is not None:
            await stop_gossip(gnode, leave=True)

    import uvloop
    uvloop.run(main())


def _serve_wan(plan: dict[str, Any]) -> None:
    from .gossip.wanemu import WanEmulator

    async def main() -> None:
        emu = WanEmulator.from_config(plan)
        await emu.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        await stop.wait()
        await emu.close()

    asyncio.run(main())


def demo_config(listen: str, admin: str, geodb_path: str,
                gossip_addrs: dict[str, tuple[str, str]] | None = None) -> dict[str, Any]:
    gossip: dict[str, Any] = {"enabled": False}
    if gossip_addrs:
        bind, advertise = gossip_addrs["us-east-1"]
        gossip = {"enabled": True, "bind": bind, "advertise": advertise,
                  "keys": DEMO_GOSSIP_KEY, "regions": list(DEMO_REGIONS)}
    return {
        "node": {"name": "demo-edge", "region": "us-east-1"},
        "workers": 1,
        "listeners": [{"bind": listen}],
        "trusted_proxies": ["127.0.0.0/8"],
        "pools": {"app": {"regions": {
            region: [f"127.0.0.1:{port + i}" for i in range(BACKENDS_PER_REGION)]
            for region, (port, _d) in DEMO_REGIONS.items()},
            "health_check": {"path": "/healthz", "interval_s": 1.0, "timeout_s": 0.5,
                             "rise": 2, "fall": 2}}},
        "routes": [{"name": "app", "pool": "app", "match": {"path_prefix": "/"}}],
        "geoip": {"city": geodb_path, "deny_countries": ["KP"]},
        "jurisdictions": {
            "gdpr": {"countries": ["DE", "FR", "IT", "ES", "NL", "IE", "AT", "BE", "SE", "PL"],
                     "regions": ["eu-west-1", "eu-central-1", "eu-west-2"]},
        },
        "admin": {"listen": admin},
        "access_log": {"enabled": False},
        "gossip": gossip,
        "protection": {
            # 50 req/s per client address (burst 100), and the 3-sigma detector
            # watching addresses and /24s for anything far above its own baseline.
            "rate_limits": [{"name": "per-ip", "key": "ip", "rate": 50, "burst": 100}],
            "detector": {"enabled": True, "keys": ["ip", "prefix"], "warmup_s": 10,
                         "min_rate": 20},
        },
    }


def run_demo(listen: str, admin: str) -> int:
    from geodb import build_city_db

    from .config import load_config
    from .runner import run

    workdir = Path(tempfile.mkdtemp(prefix="novaedge-demo-"))
    geodb_path = str(build_city_db(DEMO_GEO, workdir / "demo-city.mmdb"))
    cfg_path = workdir / "novaedge-demo.yaml"
    plan, addrs = gossip_plan()
    cfg_path.write_text("# NovaEdge demo config (generated). Edit and save: the node reloads it.\n"
                        + yaml.safe_dump(demo_config(listen, admin, geodb_path, addrs), sort_keys=False))
    config = load_config(cfg_path)
    pids: dict[str, int] = {}
    seed = addrs["us-east-1"][1]
    for region, (port, delay) in DEMO_REGIONS.items():
        gossip = None if region == "us-east-1" else (*addrs[region], seed)
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            try:
                _die_with_parent()
                if os.getppid() != parent:
                    os._exit(0)
                _serve_region(region, port, delay, gossip)
            finally:
                os._exit(0)
        pids[region] = pid
    parent = os.getpid()
    wan_pid = os.fork()
    if wan_pid == 0:
        try:
            _die_with_parent()
            if os.getppid() != parent:
                os._exit(0)
            _serve_wan(plan)
        finally:
            os._exit(0)
    host, _, port_s = listen.rpartition(":")
    print(f"""
NovaEdge demo
  proxy:        http://{listen}/          (node region us-east-1)
  config:       {cfg_path}   (edit + save, or kill -HUP {os.getpid()}, to reload)
  GeoIP:        {geodb_path}
  backends:     {', '.join(f'{r} pid {p}' for r, p in pids.items())}
  status page:  http://{admin}/     (regions, latency matrix from gossip, backends)
  gossip:       one node per demo region; the WAN emulator (pid {wan_pid}) adds
                {', '.join(f'{a}-{b} {ms:.0f} ms' for a, row in DEMO_RTT_MS.items() for b, ms in row.items())}

Try:
  curl http://{listen}/hello                               # served in us-east-1
  curl --interface 127.2.0.1 http://{listen}/hello         # a client in DE: GDPR keeps it in eu-west-1
  curl --interface 127.4.0.1 http://{listen}/hello         # a client in JP
  curl --interface 127.6.0.1 http://{listen}/hello         # KP: 451
  kill -STOP {pids['us-east-1']}    # take us-east-1 down; kill -CONT {pids['us-east-1']} to bring it back
""", flush=True)
    try:
        return run(config, str(cfg_path))
    finally:
        for pid in [*pids.values(), wan_pid]:
            try:
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGTERM)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        sys.stdout.flush()
