"""1 GiB through a real `novaedge proxy` process, each way, with a slow end on
the far side: the node must apply back-pressure (pause the fast side) so its
memory stays flat. The node's VmRSS is sampled from /proc while the bytes flow.
"""
from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import AsyncIterator

import pytest
import pytest_asyncio

from tests.support.backend import TestBackend
from tests.support.http import RawClient, request
from tests.support.proc import NodeProcess, free_port, node_process

GIB = 1 << 30
RSS_GROWTH_LIMIT = 64 << 20
STALL_EVERY = 128 << 20      # the slow side stops for STALL_MS after every 128 MiB:
STALL_MS = 250               # without back-pressure the node would buffer ~all of it

pytestmark = pytest.mark.slow


def tree(pid: int) -> list[int]:
    """The process and its descendants (should the node ever fork workers)."""
    out = [pid]
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return out
    for k in kids:
        out.extend(tree(int(k)))
    return out


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process tree so far."""
    total = 0
    for p in tree(pid):
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def vm_rss(pid: int) -> int:
    """Resident memory of a process tree, in bytes."""
    total = 0
    for p in tree(pid):
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    assert total
    return total


class RssSampler:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self.task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            self.peak = max(self.peak, vm_rss(self.pid))
            await asyncio.sleep(0.02)

    def __enter__(self) -> "RssSampler":
        self.task = asyncio.ensure_future(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        self.peak = max(self.peak, vm_rss(self.pid))


@pytest_asyncio.fixture
async def proxied(tmp_path: Path) -> AsyncIterator[tuple[NodeProcess, int, TestBackend]]:
    backend = await TestBackend.start("big")
    port = free_port()
    try:
        async with node_process(["proxy", "--listen", f"127.0.0.1:{port}", "--to", f"http://{backend.address}"],
                                tmp_path, wait_for=port) as node:
            # warm up: imports, first connection, pool
            for _ in range(3):
                c = await RawClient.connect(port)
                await c.send(request("GET", "/bytes/100000", headers=[("Connection", "close")]))
                await c.responses(1)
                await c.close()
            yield node, port, backend
    finally:
        await backend.stop()


async def test_1gib_download_with_a_slow_client(proxied: tuple[NodeProcess, int, TestBackend]) -> None:
    node, port, _backend = proxied
    base = vm_rss(node.pid)
    cpu0 = cpu_s(node.pid)
    c = await RawClient.connect(port)
    t0 = time.monotonic()
    try:
        await c.send(request("GET", f"/download/{GIB}"))
        head = await c.read_until(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ") and b"Content-Length: %d" % GIB in head
        got = len(c.buf)
        c.buf = b""
        next_stall = STALL_EVERY
        with RssSampler(node.pid) as rss:
            while got < GIB:
                chunk = await asyncio.wait_for(c.reader.read(1 << 20), 10)
                assert chunk, f"closed after {got} bytes"
                got += len(chunk)
                if got >= next_stall:
                    next_stall += STALL_EVERY
                    await asyncio.sleep(STALL_MS / 1000)   # the slow client stops reading
    finally:
        await c.close()
    secs = time.monotonic() - t0
    assert got == GIB
    growth = rss.peak - base
    print(f"\n1 GiB download: {secs:.1f} s ({GIB / secs / 1e6:.0f} MB/s), node RSS {base >> 20} MiB "
          f"-> peak {rss.peak >> 20} MiB (+{growth >> 20} MiB), node CPU {cpu_s(node.pid) - cpu0:.1f} s")
    assert growth < RSS_GROWTH_LIMIT, f"node RSS grew {growth >> 20} MiB"


async def test_1gib_upload_to_a_slow_backend(proxied: tuple[NodeProcess, int, TestBackend]) -> None:
    node, port, backend = proxied
    base = vm_rss(node.pid)
    cpu0 = cpu_s(node.pid)
    c = await RawClient.connect(port)
    block = b"u" * (256 * 1024)
    t0 = time.monotonic()
    try:
        await c.send(request("POST", f"/sink?stall_every={STALL_EVERY}&stall_ms={STALL_MS}",
                             headers=[("Content-Length", str(GIB))]))
        with RssSampler(node.pid) as rss:
            for _ in range(GIB // len(block)):
                c.writer.write(block)
                await c.writer.drain()
            (r,) = await c.responses(1, timeout=30)
    finally:
        await c.close()
    secs = time.monotonic() - t0
    assert r.status == 200 and json.loads(r.body)["body_len"] == GIB
    assert backend.stats.upload_bytes >= GIB
    growth = rss.peak - base
    print(f"\n1 GiB upload: {secs:.1f} s ({GIB / secs / 1e6:.0f} MB/s), node RSS {base >> 20} MiB "
          f"-> peak {rss.peak >> 20} MiB (+{growth >> 20} MiB), node CPU {cpu_s(node.pid) - cpu0:.1f} s")
    assert growth < RSS_GROWTH_LIMIT, f"node RSS grew {growth >> 20} MiB"
