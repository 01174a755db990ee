"""`novaedge demo`, the README's first command, answers as the README says."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp

from tests.support.node import raw_exchange
from tests.support.proc import free_port, node_process, wait_port


async def get(port: int, src: str) -> bytes:
    return await raw_exchange(port, b"GET /hello HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n",
                              local_addr=(src, 0))


def body(raw: bytes) -> dict:
    return json.loads(raw.partition(b"\r\n\r\n")[2])


async def test_demo_serves_regions_countries_and_status(tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    async with node_process(["demo", "--listen", f"127.0.0.1:{port}", "--admin", f"127.0.0.1:{admin}"],
                            tmp_path, port) as node:
        await wait_port(admin)   # the admin API comes up just after the data listener
        await asyncio.sleep(0.5)
        assert body(await get(port, "127.0.0.1"))["region"] == "us-east-1"
        de = body(await get(port, "127.2.0.1"))
        assert de["region"] == "eu-west-1" and de["client_country"] == "DE"
        assert body(await get(port, "127.4.0.1"))["client_country"] == "JP"
        assert b" 451 " in await get(port, "127.6.0.1")
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{admin}/") as r:
                assert r.status == 200 and "<svg" in await r.text()
            matrix: dict = {}
            for _ in range(60):   # gossip measures the emulated WAN
                async with s.get(f"http://127.0.0.1:{admin}/api/matrix") as r:
                    matrix = (await r.json())["rtt_ms"]
                if len(matrix) == 3 and all(len(row) == 2 for row in matrix.values()):
                    break
                await asyncio.sleep(0.25)
            assert abs(matrix["us-east-1"]["eu-west-1"] - 70) < 15, matrix
        assert "NovaEdge demo" in node.log()
