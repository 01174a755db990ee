"""Workers, reload and drain, on a real `novaedge run` process."""
from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.support.backend import TestBackend
from tests.support.node import raw_exchange, statuses
from tests.support.proc import free_port, node_process, write_config


def config(port: int, routes: list[dict[str, Any]], pools: dict[str, Any], workers: int = 2,
           admin_port: int = 0) -> dict[str, Any]:
    return {"workers": workers, "listeners": [{"bind": f"127.0.0.1:{port}"}],
            "pools": pools, "routes": routes, "access_log": {"enabled": False},
            "admin": {"listen": f"127.0.0.1:{admin_port}"}}


async def get(port: int, path: str) -> tuple[int, bytes]:
    raw = await raw_exchange(port, f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
    st = statuses(raw)
    return (st[0] if st else 0), raw


async def wait_for_log(node: Any, needle: str, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if needle in node.log():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{needle!r} not in log:\n{node.log()}")


async def test_reload_swaps_config_and_keeps_last_good_on_error(tmp_path: Path) -> None:
    a, b = await TestBackend.start("a"), await TestBackend.start("b")
    port = free_port()
    pools = {"pa": {"regions": {"us-east-1": [a.address]}}, "pb": {"regions": {"us-east-1": [b.address]}}}
    cfg = write_config(tmp_path / "n.yaml", config(port, [{"name": "r", "pool": "pa"}], pools))
    try:
        async with node_process(["run", str(cfg)], tmp_path, port) as node:
            assert b'"backend": "a"' in (await get(port, "/x"))[1]
            # A broken file: refused with its key path, the old config keeps serving.
            write_config(cfg, config(port, [{"name": "r", "pool": "nope"}], pools))
            node.signal(signal.SIGHUP)
            await wait_for_log(node, "routes[0].pool: no pool named 'nope'")
            assert b'"backend": "a"' in (await get(port, "/x"))[1]
            # A good file: both workers switch.
            write_config(cfg, config(port, [{"name": "r", "pool": "pb"}], pools))
            node.signal(signal.SIGHUP)
            await wait_for_log(node, "config reloaded (SIGHUP)")
            await asyncio.sleep(0.3)
            for _ in range(6):   # several connections: both workers answer
                assert b'"backend": "b"' in (await get(port, "/x"))[1]
    finally:
        await a.stop()
        await b.stop()


async def test_reloads_under_load_drop_nothing(tmp_path: Path) -> None:
    a, b = await TestBackend.start("a"), await TestBackend.start("b")
    port = free_port()
    pools = {"pa": {"regions": {"us-east-1": [a.address]}}, "pb": {"regions": {"us-east-1": [b.address]}}}
    cfg = write_config(tmp_path / "n.yaml", config(port, [{"name": "r", "pool": "pa"}], pools))
    results: list[int] = []

    async def client(stop: asyncio.Event) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while not stop.is_set() and len(results) < 20000:
                writer.write(b"GET /k HTTP/1.1\r\nHost: t\r\n\r\n")
                head = await reader.readuntil(b"\r\n\r\n")
                n = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                await reader.readexactly(n)
                results.append(int(head[9:12]))
        finally:
            writer.close()

    try:
        async with node_process(["run", str(cfg)], tmp_path, port) as node:
            stop = asyncio.Event()
            clients = [asyncio.create_task(client(stop)) for _ in range(8)]
            for i in range(6):
                await asyncio.sleep(0.25)
                write_config(cfg, config(port, [{"name": "r", "pool": "pb" if i % 2 == 0 else "pa"}], pools))
                node.signal(signal.SIGHUP)
            await asyncio.sleep(0.3)
            stop.set()
            await asyncio.gather(*clients)
            assert len(results) > 200
            assert set(results) == {200}
            assert node.log().count("config reloaded") >= 3
    finally:
        await a.stop()
        await b.stop()


async def test_sigterm_drains_in_flight_requests_and_exits_zero(tmp_path: Path) -> None:
    a = await TestBackend.start("a")
    port = free_port()
    cfg = write_config(tmp_path / "n.yaml", config(port, [{"name": "r", "pool": "pa"}],
                                                   {"pa": {"regions": {"us-east-1": [a.address]}}}))
    try:
        async with node_process(["run", str(cfg)], tmp_path, port) as node:
            slow = asyncio.create_task(get(port, "/slow/800"))
            await asyncio.sleep(0.2)
            node.signal(signal.SIGTERM)
            status, _ = await slow
            assert status == 200          # the in-flight request finished
            code = await asyncio.get_running_loop().run_in_executor(None, node.proc.wait, 10)
            assert code == 0
            with pytest.raises(OSError):
                await asyncio.open_connection("127.0.0.1", port)
    finally:
        await a.stop()


async def test_a_dead_worker_is_replaced(tmp_path: Path) -> None:
    import os
    a = await TestBackend.start("a")
    port = free_port()
    cfg = write_config(tmp_path / "n.yaml", config(port, [{"name": "r", "pool": "pa"}],
                                                   {"pa": {"regions": {"us-east-1": [a.address]}}}))
    try:
        async with node_process(["run", str(cfg)], tmp_path, port) as node:
            await wait_for_log(node, "worker 1 (pid")
            line = [ln for ln in node.log().splitlines() if "worker 1 (pid" in ln][0]
            pid = int(line.split("worker 1 (pid ")[1].split(")")[0])
            os.kill(pid, signal.SIGKILL)
            await wait_for_log(node, "starting a new one")
            await asyncio.sleep(0.5)
            for _ in range(10):
                assert (await get(port, "/x"))[0] == 200
    finally:
        await a.stop()


async def test_one_scrape_gives_both_workers_requests(tmp_path: Path) -> None:
    import aiohttp
    a = await TestBackend.start("a")
    port, admin = free_port(), free_port()
    data = config(port, [{"name": "r", "pool": "pa"}], {"pa": {"regions": {"us-east-1": [a.address]}}},
                  admin_port=admin)
    data["access_log"] = {"path": str(tmp_path / "access.log")}
    cfg = write_config(tmp_path / "n.yaml", data)
    try:
        async with node_process(["run", str(cfg)], tmp_path, port) as node:
            n = 300
            for i in range(0, n, 30):   # many connections: SO_REUSEPORT spreads them
                await asyncio.gather(*(get(port, f"/m{j}") for j in range(i, i + 30)))
            await asyncio.sleep(1.6)   # one report interval, plus margin
            import json
            lines = (tmp_path / "access.log").read_text().splitlines()
            served_by = {json.loads(ln)["id"].split("-")[0] for ln in lines}
            assert len(lines) == n and len(served_by) == 2   # both workers served
            async with aiohttp.ClientSession() as s:
                async with s.get(f"http://127.0.0.1:{admin}/metrics") as r:
                    text = await r.text()
            total = sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines()
                        if ln.startswith("novaedge_requests_total{"))
            assert total == n
            assert a.stats.requests == n
    finally:
        await a.stop()
