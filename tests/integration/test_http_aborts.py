"""Either side going away mid-exchange: nothing leaks, nothing is reused that
should not be, and a truncated response is never made to look complete."""
from __future__ import annotations

import asyncio

import pytest

from tests.support.harness import Harness, harness
from tests.support.http import RawClient, exchange, request


async def settle(h: Harness, cond: "object", seconds: float = 2.0) -> None:
    for _ in range(int(seconds / 0.05)):
        if cond():  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("kind", ["length", "chunked"])
async def test_truncated_response_is_not_completed(kind: str) -> None:
    async with harness() as h:
        resps, raw, closed = await exchange(h.port, request("GET", f"/truncate/{kind}"), timeout=3)
        assert closed and resps == [], raw   # the client can tell it is incomplete
        assert raw.startswith(b"HTTP/1.1 200 ")
        assert not raw.endswith(b"0\r\n\r\n")
        pool = next(iter(h.node.pools.values()))
        assert not pool.idle


async def test_client_gone_mid_download_closes_upstream() -> None:
    async with harness() as h:
        c = await RawClient.connect(h.port)
        await c.send(request("GET", f"/download/{200 << 20}"))
        await c.read_until(b"\r\n\r\n")
        await c._more(1)
        await c.close()
        await settle(h, lambda: not h.backend.conns and not h.node.connections)
        assert not h.backend.conns, "upstream connection of an abandoned download still open"
        assert not h.node.connections
        pool = next(iter(h.node.pools.values()))
        assert not pool.idle and not pool.busy


async def test_client_gone_while_waiting_leaks_nothing() -> None:
    """A FIN from the client may be a half-close (it still reads): the node
    finishes the exchange; the write then fails and everything is let go."""
    async with harness() as h:
        c = await RawClient.connect(h.port)
        await c.send(request("GET", "/slow/400"))
        await asyncio.sleep(0.1)
        assert len(h.backend.conns) == 1
        await c.close()
        pool = next(iter(h.node.pools.values()))
        await settle(h, lambda: not h.node.connections and not pool.busy)
        assert not h.node.connections and not pool.busy
        assert len(h.backend.conns) <= 1 and len(pool.idle) == len(h.backend.conns)


async def test_backend_closing_after_its_response_is_not_reused() -> None:
    async with harness() as h:
        c = await RawClient.connect(h.port)
        try:
            for _ in range(2):
                await c.send(request("GET", "/early/200"))   # answers with Connection: close
                (r,) = await c.responses(1)
                assert r.status == 200 and r.body == b"early"
                assert not r.closes   # hop-by-hop: the client's connection is not the backend's
        finally:
            await c.close()
        assert h.backend.stats.connections == 2


async def test_early_backend_answer_during_an_upload_closes_cleanly() -> None:
    async with harness() as h:
        c = await RawClient.connect(h.port)
        try:
            await c.send(request("POST", "/early/403", headers=[("Content-Length", str(8 << 20))]) + b"p" * 65536)
            (r,) = await c.responses(1)
            assert r.status == 403 and r.body == b"early"
            assert r.closes   # the body will never be read: the connection ends after this
            for _ in range(20):   # the client, still uploading, is not reset mid-way
                try:
                    await asyncio.wait_for(c.send(b"p" * 65536), 1)
                except (ConnectionResetError, BrokenPipeError):
                    break
            assert await c.closed_within(3)
        finally:
            await c.close()


@pytest.mark.parametrize("where", ["node-413", "bad-request"])
async def test_error_answer_survives_unread_upload(where: str) -> None:
    """The node answers at once and closes while megabytes of the client's body
    are unread. A plain close() would make the kernel send a RST, which discards
    the answer from the client's receive buffer before it reads it: the node
    must shut down writing and drain instead (lingering close)."""
    routes = [{"name": "r", "pool": "default", "max_body_bytes": 1 << 20}]
    async with harness(routes=routes) as h:
        if where == "node-413":
            head = request("POST", "/", headers=[("Content-Length", str(10 << 20))])
        else:
            head = request("POST", "/", headers=[("Content-Length", str(10 << 20)), ("Host", "second")])
        c = await RawClient.connect(h.port)
        try:
            c.writer.write(head + b"p" * (2 << 20))
            await asyncio.sleep(0.3)   # do not read yet: the answer waits in our buffer
            (r,) = await c.responses(1)
            assert r.status == (413 if where == "node-413" else 400)
        finally:
            await c.close()


async def test_aborted_request_body_never_completes_upstream() -> None:
    async with harness() as h:
        c = await RawClient.connect(h.port)
        await c.send(request("POST", "/", headers=[("Content-Length", "100000")]) + b"x" * 50000)
        await settle(h, lambda: h.backend.stats.upload_bytes >= 50000)
        await c.close()
        await settle(h, lambda: not h.backend.conns)
        assert h.backend.stats.requests == 0   # the backend never saw a complete request
        assert not h.backend.conns


async def test_client_that_stops_reading_is_let_go() -> None:
    async with harness(limits={"body_idle_timeout_s": 0.5}, upstream={"response_timeout_s": 0.3}) as h:
        c = await RawClient.connect(h.port)
        try:
            await c.send(request("GET", f"/download/{500 << 20}"))
            c.writer.transport.pause_reading()   # and never read again
            await settle(h, lambda: not h.node.connections, seconds=4)
            assert not h.node.connections, "a client that reads nothing holds the node forever"
            await settle(h, lambda: not h.backend.conns)
            assert not h.backend.conns
        finally:
            await c.close()


async def test_balancer_in_flight_returns_to_zero_whatever_the_ending() -> None:
    """Every attempt the balancer is told about must also end for it: a drifting
    in-flight count skews least-loaded choices forever."""
    async with harness(upstream={"response_timeout_s": 0.3, "retries": 0}) as h:
        # ok, 5xx, bad response, truncated mid-body, read timeout, reset, a tunnel
        for path in ["/", "/status/503", "/bad/garbage", "/truncate/length", "/stall", "/reset"]:
            await exchange(h.port, request("GET", path, headers=[("Connection", "close")]), timeout=2)
        c = await RawClient.connect(h.port)
        await c.send(request("GET", "/ws", headers=[("Connection", "Upgrade"), ("Upgrade", "websocket")]))
        await c.read_until(b"\r\n\r\n")
        await c.close()
        await asyncio.sleep(0.2)
        inflight = {b.id: b.in_flight for b in h.node.selector.cluster.backends()}
        assert inflight and all(v == 0 for v in inflight.values()), inflight
