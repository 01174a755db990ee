"""The in-flight level that the metrics report is the node's own count of
requests begun and not finished (the node calls nothing per request for it):
a request waiting on its backend counts, and stops counting when it ends,
whether it succeeded or failed before its head was understood."""
from __future__ import annotations

import asyncio

from tests.support.backend import TestBackend
from tests.support.node import node_config, port_of, raw_exchange, run_node


async def test_a_waiting_request_is_in_flight_until_it_ends() -> None:
    backend = await TestBackend.start()
    try:
        cfg = node_config([backend.address], metrics={"enabled": True})
        async with run_node(cfg) as node:
            port = port_of(node)
            slow = asyncio.create_task(raw_exchange(
                port, b"GET /slow/600 HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n"))
            for _ in range(100):
                if node.inflight:
                    break
                await asyncio.sleep(0.01)
            report = node.hooks.drain_report(node)
            assert report["metrics"]["inflight"] == 1
            assert (await slow).startswith(b"HTTP/1.1 200")
            # one that fails before its head is understood begins and ends too
            bad = await raw_exchange(port, b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
            assert bad.startswith(b"HTTP/1.1 400")
            report = node.hooks.drain_report(node)
            assert report["metrics"]["inflight"] == 0
            assert node.started == node.stats["requests"] == 2
    finally:
        await backend.stop()
