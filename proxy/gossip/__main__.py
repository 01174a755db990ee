"""Run one standalone gossip node (demo and end-to-end tests).

    python -m proxy.gossip --name use1-a --region us-east-1 --bind 127.0.0.1:7946 \\
        --seed 127.0.0.2:7946 --key k1=hex:<64 hex digits> --api 127.0.0.1:8946

Keys may also come from the environment (GOSSIP_KEYS="k1=hex:...,k2=base64:..."),
which keeps them out of `ps`. The optional JSON API (api.py) is served on
``--api HOST:PORT`` and/or ``--api-unix PATH``. SIGTERM or SIGINT leaves the
cluster gracefully. ``--health H/T`` sets the initial backend health summary.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys

from aiohttp import web

from .api import make_app
from .config import GossipConfig
from .messages import split_addr
from .node import start_gossip, stop_gossip

log = logging.getLogger("proxy.gossip")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m proxy.gossip", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", required=True)
    ap.add_argument("--region", required=True)
    ap.add_argument("--bind", required=True, help="UDP host:port; push-pull is TCP on the same host")
    ap.add_argument("--advertise", help="host:port peers send to (default: --bind)")
    ap.add_argument("--pushpull-port", type=int)
    ap.add_argument("--seed", action="append", default=[], help="push-pull address of a node to join (repeat)")
    ap.add_argument("--key", action="append", default=[], help="ID=SECRET (repeat); also $GOSSIP_KEYS")
    ap.add_argument("--primary-key")
    ap.add_argument("--regions", default="", help="comma-separated regions to list in region health")
    ap.add_argument("--probe-interval-ms", type=int, default=200)
    ap.add_argument("--probe-timeout-ms", type=int, default=500)
    ap.add_argument("--gossip-interval-ms", type=int, default=200)
    ap.add_argument("--pushpull-interval-s", type=float, default=10.0)
    ap.add_argument("--health", help="initial backend health as HEALTHY/TOTAL, e.g. 3/3")
    ap.add_argument("--api", help="host:port for the JSON API (loopback only!)")
    ap.add_argument("--api-unix", help="unix socket path for the JSON API")
    ap.add_argument("--log-level", default="INFO")
    return ap.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> GossipConfig:
    pairs = list(args.key) + [p for p in os.environ.get("GOSSIP_KEYS", "").split(",") if p.strip()]
    keys = {}
    for pair in pairs:
        key_id, sep, secret = pair.strip().partition("=")
        if not sep:
            raise SystemExit(f"--key {key_id!r}: expected ID=SECRET")
        keys[key_id] = secret
    return GossipConfig(
        enabled=True, node_name=args.name, region=args.region, bind=args.bind, advertise=args.advertise,
        pushpull_port=args.pushpull_port, seeds=tuple(args.seed), keys=keys, primary_key=args.primary_key,
        regions=tuple(r for r in args.regions.split(",") if r),
        probe_interval_ms=args.probe_interval_ms, probe_timeout_ms=args.probe_timeout_ms,
        gossip_interval_ms=args.gossip_interval_ms, pushpull_interval_s=args.pushpull_interval_s,
    )


async def serve(args: argparse.Namespace) -> None:
    config = config_from_args(args)
    node = await start_gossip(config)
    if args.health:
        healthy, _, total = args.health.partition("/")
        node.set_local_health(int(healthy), int(total))
    runner = web.AppRunner(make_app(node), access_log=None)
    await runner.setup()
    if args.api:
        host, port = split_addr(args.api)
        await web.TCPSite(runner, host, port).start()
    if args.api_unix:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(args.api_unix)
        await web.UnixSite(runner, args.api_unix).start()
    log.info("gossip node %s (%s) on %s", config.node_name, config.region, config.advertise_addr)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await stop_gossip(node)
        await runner.cleanup()
        if args.api_unix:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(args.api_unix)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency, but the node runs without it
        asyncio.run(serve(args))
    else:
        uvloop.run(serve(args))


if __name__ == "__main__":
    main()
