"""One scrape of the admin /metrics gives the node's totals across worker processes.

Two real forked processes stand in for the data-plane workers: each records
requests through WorkerMetrics on its own event loop, with run_flusher
shipping pickled deltas over a pipe every 20 ms (the control channel's
shape), and a final flush when its flusher is cancelled. The control plane
(this process) applies every delta as it arrives, then /metrics is scraped
once over a real socket.
"""
from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import time
from multiprocessing.connection import Connection

from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from proxy.context import RequestContext
from proxy.observe.admin import build_admin_app
from proxy.observe.fake import FakeNodeView
from proxy.observe.metrics import WorkerMetrics, run_flusher

REQUESTS = {1: 1500, 2: 2300}    # per worker; 5xx every 10th


class _Route:
    name = "api"


def _ctx(i: int, worker: int) -> RequestContext:
    ctx = RequestContext(f"w{worker}-{i}", 0.0, "GET", "api.example.com", "/x", "", "1.1", "127.0.0.1",
                         1, None, [], "127.0.0.1:8080")
    ctx.route, ctx.region, ctx.backend = _Route(), "eu-west-1", f"eu-west-1/10.0.0.{worker}:80"
    ctx.status = 503 if i % 10 == 0 else 200
    ctx.end = 0.004
    return ctx


def _worker(conn: Connection, worker: int, n: int) -> None:
    async def serve() -> None:
        metrics = WorkerMetrics(worker)
        flusher = asyncio.create_task(run_flusher(metrics, conn.send, interval=0.02))
        for i in range(n):
            metrics.begin()
            metrics.observe(_ctx(i, worker))
            if i % 100 == 99:
                await asyncio.sleep(0.005)   # traffic spread over ~100 ms: several flushes
        flusher.cancel()
        try:
            await flusher
        except asyncio.CancelledError:
            pass
        conn.send("done")

    try:
        asyncio.run(serve())
    finally:
        conn.close()
        os._exit(0)


def test_one_scrape_sums_both_workers() -> None:
    ctx = mp.get_context("fork")
    pipes, procs = [], []
    try:
        for worker, n in REQUESTS.items():
            parent, child = ctx.Pipe(duplex=False)
            p = ctx.Process(target=_worker, args=(child, worker, n), daemon=True)
            p.start()
            child.close()
            pipes.append(parent)
            procs.append(p)
        text, messages = asyncio.run(_control_plane(pipes))
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join()
    assert [p.exitcode for p in procs] == [0, 0]
    assert all(m >= 3 for m in messages), messages   # periodic flushes, not one message at exit

    values: dict[tuple[str, frozenset], float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            values[(s.name, frozenset(s.labels.items()))] = s.value

    def req(worker: int, code: str) -> float:
        return values[("novaedge_requests_total", frozenset({
            "route": "api", "region": "eu-west-1", "backend": f"eu-west-1/10.0.0.{worker}:80",
            "code": code}.items()))]

    total = sum(v for (name, labels), v in values.items()
                if name == "novaedge_requests_total" and ("route", "api") in labels
                and dict(labels)["backend"].startswith("eu-west-1/10.0.0."))
    assert total == sum(REQUESTS.values())
    assert req(1, "5xx") == 150 and req(2, "5xx") == 230
    assert req(1, "2xx") + req(2, "2xx") == 1350 + 2070
    hist_count = values[("novaedge_request_duration_seconds_count", frozenset({"route": "api"}.items()))]
    assert hist_count == sum(REQUESTS.values())
    assert values[("novaedge_requests_in_flight", frozenset())] == 0     # every begin() was observed
    assert values[("novaedge_metrics_workers", frozenset())] == 2


async def _control_plane(pipes: list[Connection]) -> tuple[str, list[int]]:
    view = FakeNodeView(traffic=False)
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    finished: set[int] = set()
    messages = [0] * len(pipes)

    def on_readable(i: int) -> None:
        conn = pipes[i]
        while conn.poll():
            try:
                msg = conn.recv()
            except EOFError:
                loop.remove_reader(conn.fileno())
                finished.add(i)
                break
            if msg == "done":
                loop.remove_reader(conn.fileno())
                finished.add(i)
                break
            view.metrics.apply(msg)
            messages[i] += 1
        if len(finished) == len(pipes) and not done.done():
            done.set_result(None)

    for i, conn in enumerate(pipes):
        loop.add_reader(conn.fileno(), on_readable, i)
    client = TestClient(TestServer(build_admin_app(view, token=None), host="127.0.0.1"))
    await client.start_server()
    try:
        t0 = time.monotonic()
        await asyncio.wait_for(done, timeout=30)
        assert time.monotonic() - t0 < 30
        resp = await client.get("/metrics")
        assert resp.status == 200
        return await resp.text(), messages
    finally:
        for conn in pipes:
            try:
                loop.remove_reader(conn.fileno())
            except (ValueError, OSError):
                pass
            conn.close()
        await client.close()
