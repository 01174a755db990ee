"""Two real nodes gossiping on loopback: a region whose backends all fail is
seen as unhealthy by the other node, which then routes around it before any
request of its own has failed there."""
from __future__ import annotations

import asyncio
import time

from proxy.runner import Stack
from tests.support.backend import TestBackend
from tests.support.node import node_config
from tests.support.proc import free_port

KEY = {"k1": "hex:" + "5a" * 32}


async def test_remote_region_failure_reaches_routing_through_gossip() -> None:
    eu = [await TestBackend.start(f"eu-{i}") for i in range(2)]
    us = await TestBackend.start("us")
    ga, gb = free_port(), free_port()
    pools = {"default": {"regions": {"eu-west-1": [b.address for b in eu], "us-east-1": [us.address]}}}
    route = [{"name": "default", "pool": "default", "policy": {"policy": "failover",
                                                             "order": ["eu-west-1", "us-east-1"]}}]
    # Node A (us-east-1) does not check the EU backends itself: only gossip can tell it.
    cfg_a = node_config([], node={"name": "a", "region": "us-east-1"}, pools=pools, routes=route,
                        admin={"enabled": False}, access_log={"enabled": False},
                        gossip={"enabled": True, "bind": f"127.0.0.1:{ga}", "keys": KEY,
                                "probe_interval_ms": 100})
    pools_b = {"default": {**pools["default"], "health_check": {
        "path": "/healthz", "interval_s": 0.2, "timeout_s": 0.2, "rise": 2, "fall": 2}}}
    cfg_b = node_config([], node={"name": "b", "region": "eu-west-1"}, pools=pools_b, routes=route,
                        admin={"enabled": False}, access_log={"enabled": False},
                        gossip={"enabled": True, "bind": f"127.0.0.1:{gb}", "keys": KEY,
                                "probe_interval_ms": 100, "seeds": [f"127.0.0.1:{ga}"]})
    a, b = Stack(cfg_a), Stack(cfg_b)
    node_a = await a.start()
    await b.start()
    try:
        sel = node_a.selector
        for _ in range(100):   # B joins and reports eu-west-1 healthy
            if ("*", "eu-west-1") in sel.view._remote and sel.view.remote_ok("eu-west-1"):
                break
            await asyncio.sleep(0.1)
        assert sel.view.remote_ok("eu-west-1")
        killed = time.monotonic()
        for be in eu:
            await be.stop()
        while sel.view.remote_ok("eu-west-1") and time.monotonic() - killed < 5.0:
            await asyncio.sleep(0.05)
        seen_after = time.monotonic() - killed
        print(f"node A saw eu-west-1 unhealthy {seen_after:.2f}s after its backends died")
        assert not sel.view.remote_ok("eu-west-1") and seen_after < 5.0
        # A's requests now go straight to us-east-1: no attempt at the dead region.
        reader, writer = await asyncio.open_connection("127.0.0.1", node_a.listeners[0].port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        raw = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert raw.startswith(b"HTTP/1.1 200") and b'"backend": "us"' in raw
        assert node_a.pools.get(f"eu-west-1/{eu[0].address}") is None   # never even connected
    finally:
        await b.stop(0.3)
        await a.stop(0.3)
        for be in (*eu, us):
            await be.stop()
