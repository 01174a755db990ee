"""Gossip over real sockets on 127.0.x.y: UDP probes, aiohttp push-pull, the
WAN emulator's delays showing up in the latency matrix, and forged datagrams
dropped. ~10 s."""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import AsyncIterator, Callable

import pytest

from proxy.gossip.api import make_app
from proxy.gossip.config import GossipConfig
from proxy.gossip.keyring import KeyRing
from proxy.gossip.node import GossipNode, start_gossip, stop_gossip
from proxy.gossip.wanemu import WanEmulator, loopback_plan
from proxy.gossip.wire import MessageType, encode_frame, encode_message

KEY = "hex:" + "5a" * 32
REGIONS = ("us-east-1", "ca-central-1", "eu-west-1")
# 40 ms, not the e2e's 20: here the nodes and the emulator share one process and
# its GIL, whose 5 ms switch interval can hold a delayed datagram back
RTT_MS = {"us-east-1": {"ca-central-1": 40, "eu-west-1": 70}, "ca-central-1": {"eu-west-1": 150}}


def free_port(hosts: list[str]) -> int:
    """A port number free for both UDP and TCP on every host in ``hosts``."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((hosts[0], 0))
            port = int(s.getsockname()[1])
        try:
            for host in hosts:
                for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                    with socket.socket(socket.AF_INET, kind) as t:
                        t.bind((host, port))
            return port
        except OSError:
            continue
    raise RuntimeError("no common free port")


async def wait_for(pred: Callable[[], bool], timeout: float, describe: Callable[[], object] = str) -> float:
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not pred():
        if loop.time() - start > timeout:
            raise AssertionError(f"condition not met in {timeout} s: {describe()}")
        await asyncio.sleep(0.05)
    return loop.time() - start


def cfg(name: str, region: str, bind: str, advertise: str, seed: str, **kw: object) -> GossipConfig:
    return GossipConfig(enabled=True, node_name=name, region=region, bind=bind, advertise=advertise,
                        seeds=(seed,), keys={"k1": KEY}, regions=REGIONS, **kw)  # type: ignore[arg-type]


@pytest.fixture
async def direct_cluster() -> AsyncIterator[list[GossipNode]]:
    hosts = [f"127.0.2.{i}" for i in (1, 2, 3)]
    port = free_port(hosts)
    nodes: list[GossipNode] = []
    try:
        for i, host in enumerate(hosts):
            addr = f"{host}:{port}"
            nodes.append(await start_gossip(cfg(f"n{i}", REGIONS[i], addr, addr, f"{hosts[0]}:{port}"),
                                            rng=random.Random(i)))
        yield nodes
    finally:
        for node in nodes:
            await stop_gossip(node, leave=False)


async def test_real_sockets_join_share_health_and_leave(direct_cluster: list[GossipNode]) -> None:
    a, b, c = direct_cluster
    await wait_for(lambda: all(n.membership.num_live() == 3 for n in direct_cluster), 10)
    c.set_local_health(0, 2)
    took = await wait_for(lambda: not a.region_health()["eu-west-1"].healthy
                          and a.region_health()["eu-west-1"].total_backends == 2, 5)
    assert took < 5
    await wait_for(lambda: "ca-central-1" in a.latency_matrix().get("us-east-1", {}), 5)
    assert a.counters["pushpull_ok"] >= 1  # the join went over aiohttp
    await stop_gossip(c, leave=True, linger_s=0.5)
    direct_cluster.remove(c)
    await wait_for(lambda: a.membership.members["n2"].state.name == "LEFT", 5)


async def test_forged_datagrams_are_dropped_and_counted(direct_cluster: list[GossipNode]) -> None:
    a = direct_cluster[0]
    await wait_for(lambda: a.membership.num_live() == 3, 10)
    host, port = a.config.bind.split(":")
    alive = encode_message(MessageType.ALIVE, {"n": "ghost", "i": 9, "a": "127.0.2.9:1", "r": "x", "p": 1})
    now_ms = int(time.time() * 1000)
    bad_mac = encode_frame(KeyRing({"k1": b"\x00" * 32}, "k1"), b"evil", 1, now_ms, [alive])
    unknown = encode_frame(KeyRing({"k7": bytes.fromhex("5a" * 32)}, "k7"), b"evil", 1, now_ms, [alive])
    genuine = encode_frame(KeyRing({"k1": bytes.fromhex("5a" * 32)}, "k1"), b"insider", 5, now_ms, [alive])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for frame in (bad_mac, unknown, genuine, genuine):
            s.sendto(frame, (host, int(port)))
    await wait_for(lambda: a.counters["dropped_replay"] == 1, 5)
    assert a.counters["dropped_bad_mac"] == 1 and a.counters["dropped_unknown_key"] == 1
    assert "ghost" in a.membership.members  # only the genuine frame, once


async def test_latency_matrix_matches_the_emulated_wan() -> None:
    port = free_port([f"127.0.{net}.{i}" for net in (3, 4) for i in (1, 2, 3)])
    plan, addrs = loopback_plan(RTT_MS, port, public_net="127.0.3", real_net="127.0.4")
    emu = WanEmulator.from_config(plan)
    await emu.start()
    nodes: list[GossipNode] = []
    try:
        seed = addrs[REGIONS[0]][1]
        for i, region in enumerate(REGIONS):
            bind, advertise = addrs[region]
            nodes.append(await start_gossip(cfg(f"w{i}", region, bind, advertise, seed), rng=random.Random(i)))

        def expected(src: str, dst: str) -> float:
            return float(RTT_MS.get(src, {}).get(dst) or RTT_MS[dst][src])

        def matches() -> bool:
            for node in nodes:
                m = node.latency_matrix()
                for src in REGIONS:
                    for dst in REGIONS:
                        if src != dst and abs(m.get(src, {}).get(dst, -1e9) - expected(src, dst)) > 0.15 * expected(src, dst):
                            return False
            return True

        await wait_for(matches, 20, lambda: [n.latency_matrix() for n in nodes])
        assert emu.forwarded_packets > 50
    finally:
        for node in nodes:
            await stop_gossip(node, leave=False)
        await emu.close()


async def test_json_api_reads_state_and_sets_health(direct_cluster: list[GossipNode]) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    a, b, _ = direct_cluster
    await wait_for(lambda: all(n.membership.num_live() == 3 for n in direct_cluster), 10)
    async with TestClient(TestServer(make_app(b))) as client:
        resp = await client.post("/gossip/local-health", json={"healthy_backends": 0, "total_backends": 5})
        assert resp.status == 200
        bad = await client.post("/gossip/local-health", json={"healthy_backends": 6, "total_backends": 5})
        assert bad.status == 400
        state = await (await client.get("/gossip/state")).json()
        assert state["node"] == "n1" and {m["name"] for m in state["members"]} == {"n0", "n1", "n2"}
    await wait_for(lambda: not a.region_health()["ca-central-1"].healthy, 5)
