"""The upstream side: keep-alive pools per backend, their cap and idle timeout,
connect/response/read timeouts, and which failures are retried.

Retry rule under test (RFC 9110 9.2.2, 9112 9.3.1): a request is retried only
if no byte of it can have reached a backend (connect refused, a pooled
connection the backend had already closed), or it is idempotent and its body
is still held. A POST that may have reached the backend is never retried.
"""
from __future__ import annotations

import asyncio
import json
import time

from tests.support.harness import blackhole, closed_port, harness
from tests.support.http import RawClient, exchange, request


async def test_pool_reuses_connections_across_clients() -> None:
    async with harness() as h:
        for _ in range(10):
            r = await h.get("/bytes/10")
            assert r.status == 200
        assert h.backend.stats.requests == 10
        assert h.backend.stats.connections == 1
        pool = next(iter(h.node.pools.values()))
        assert pool.stats()["reused"] == 9


async def test_pools_are_per_backend() -> None:
    async with harness(2) as h:
        for _ in range(12):
            assert (await h.get("/")).status == 200
        used = [b for b in h.backends if b.stats.requests]
        assert sum(b.stats.requests for b in used) == 12
        # sequential requests: one warm connection per backend used, however the
        # balancer spread them
        assert [b.stats.connections for b in used] == [1] * len(used)
        assert sorted(p.key for p in h.node.pools.values() if p.created) == \
            sorted(f"us-east-1/{b.address}" for b in used)


async def test_idle_pooled_connections_are_closed_after_idle_timeout() -> None:
    async with harness(upstream={"idle_timeout_s": 0.4}) as h:
        assert (await h.get("/")).status == 200
        assert len(h.backend.conns) == 1
        await asyncio.sleep(1.2)   # sweeper runs every 0.25 s
        assert len(h.backend.conns) == 0, "the node should have closed its idle connection"
        assert (await h.get("/")).status == 200
        assert h.backend.stats.connections == 2


async def test_connection_cap_per_backend() -> None:
    async with harness(upstream={"max_connections_per_backend": 2, "retries": 0}) as h:
        results = await asyncio.gather(*[h.get("/slow/400") for _ in range(3)])
        statuses = sorted(r.status for r in results)
        assert statuses == [200, 200, 503]
        err = next(r for r in results if r.status == 503)
        assert err.header("x-novaedge-error") == "upstream-connection-limit"
        assert h.backend.stats.connections == 2


async def test_connect_timeout_is_504() -> None:
    with blackhole() as addr:
        async with harness(0, backends=[addr], upstream={"connect_timeout_s": 0.3}) as h:
            t0 = time.monotonic()
            r = await h.get("/")
            assert r.status == 504
            assert r.header("x-novaedge-error") == "upstream-connect-timeout"
            assert time.monotonic() - t0 < 2.5   # connect_timeout_s 0.3, not 3 s


async def test_response_timeout_is_504_and_not_retried() -> None:
    async with harness(2, upstream={"response_timeout_s": 0.3}) as h:
        t0 = time.monotonic()
        r = await h.get("/slow/3000")
        assert r.status == 504 and r.header("x-novaedge-error") == "upstream-response-timeout"
        assert time.monotonic() - t0 < 2.5   # response_timeout_s 0.3: long before the 3 s answer
        await asyncio.sleep(0.1)
        assert h.requests_seen() == 1   # it may have been processed: never sent twice


async def test_stalled_response_body_is_cut_off() -> None:
    async with harness(upstream={"response_timeout_s": 0.4}) as h:
        t0 = time.monotonic()
        resps, raw, closed = await exchange(h.port, request("GET", "/stall"), timeout=3)
        assert closed and resps == []               # the head went out; the body never completed
        assert raw.startswith(b"HTTP/1.1 200 ") and raw.endswith(b"s" * 10)
        assert time.monotonic() - t0 < 3.0   # response_timeout_s 0.4 between reads


async def test_connect_refused_is_retried_on_another_backend() -> None:
    async with harness(1, backends=[closed_port()]) as h:
        for _ in range(4):   # round robin: half of them try the dead one first
            r = await h.get("/")
            assert r.status == 200
        assert h.backend.stats.requests == 4


async def test_connect_refused_everywhere_is_502_with_its_reason() -> None:
    async with harness(0, backends=[closed_port(), closed_port()]) as h:
        r = await h.get("/")
        assert r.status == 502
        assert r.header("x-novaedge-error") == "upstream-connect-refused"


async def test_no_backend_is_503() -> None:
    async with harness(0, backends=[]) as h:
        r = await h.get("/")
        assert r.status == 503 and r.header("x-novaedge-error") and r.header("x-request-id")


async def test_stale_pooled_connection_is_not_used() -> None:
    """The backend closed an idle pooled connection and its FIN is in our kernel,
    but the loop has not read it yet: the node must not send on it (a POST could
    then not be retried)."""
    async with harness() as h:
        assert (await h.get("/")).status == 200
        pool = next(iter(h.node.pools.values()))
        (idle,) = list(pool.idle)
        assert idle.transport is not None
        idle.transport.pause_reading()          # the node has not seen the FIN yet...
        for c in list(h.backend.conns):
            assert c.t is not None
            c.t.close()                         # ...which the backend sends now
        await asyncio.sleep(0.2)
        r = await h.get("/", method="POST", body=b"data")
        assert r.status == 200 and json.loads(r.body)["body_len"] == 4
        assert h.backend.stats.requests == 2 and h.backend.stats.connections == 2


async def test_pooled_connection_reset_on_reuse_retries_idempotent_request() -> None:
    async with harness() as h:
        assert (await h.get("/")).status == 200
        h.backend.drop_reused = 1   # the next request on the reused connection is reset unread
        r = await h.get("/bytes/3")
        assert r.status == 200 and r.body == b"xxx"
        assert h.backend.stats.dropped == 1
        assert h.backend.stats.requests == 2
        assert h.backend.stats.connections == 2   # retried on a fresh connection, same backend


async def test_post_that_may_have_reached_the_backend_is_never_retried() -> None:
    async with harness(2) as h:
        r = await h.get("/reset", method="POST", body=b"payment")
        assert r.status == 502
        assert r.header("x-novaedge-error") == "upstream-reset-before-response"
        await asyncio.sleep(0.1)
        assert h.requests_seen() == 1
        assert h.paths_seen() == ["/reset"]


async def test_idempotent_request_reset_by_backend_is_retried_elsewhere() -> None:
    async with harness(2) as h:
        r = await h.get("/reset")
        assert r.status == 502          # every backend resets it...
        assert h.requests_seen() == 2   # ...but each was tried once (GET is idempotent)


async def test_upstream_body_back_pressure_pauses_the_client() -> None:
    """A backend that stops reading the request body: the node stops reading the
    client (bounded memory) and gives up with 504 after the upstream timeout."""
    async with harness(upstream={"response_timeout_s": 1.0}, limits={"body_idle_timeout_s": 1.0}) as h:
        stalled = asyncio.Event()

        def stop_reading() -> None:
            for c in h.backend.conns:
                assert c.t is not None
                c.t.pause_reading()
            stalled.set()

        c = await RawClient.connect(h.port)
        try:
            await c.send(request("POST", "/sink", headers=[("Content-Length", str(1 << 30))]))
            await asyncio.sleep(0.1)
            stop_reading()
            sent = 0
            block = b"u" * 65536
            t0 = time.monotonic()
            while time.monotonic() - t0 < 1.0:
                try:
                    await asyncio.wait_for(c.send(block), 0.3)
                except asyncio.TimeoutError:
                    break   # our writes stopped draining: the node stopped reading
                sent += len(block)
            assert sent < 64 << 20, f"the node kept reading ({sent} bytes) from a stalled upload"
            (r,) = await c.responses(1, timeout=4)
            assert r.status == 504 and r.header("x-novaedge-error") == "upstream-send-timeout"
        finally:
            await c.close()
