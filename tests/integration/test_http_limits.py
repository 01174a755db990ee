"""Limits and timeouts (each configurable under `limits:`), and the node's own
error responses: short, correct, and saying which error it is."""
from __future__ import annotations

import asyncio
import json
import time

import pytest

from proxy.config import Limits
from tests.support.backend import BAD
from tests.support.harness import blackhole, harness
from tests.support.http import RawClient, chunked, exchange, request


def test_limit_defaults() -> None:
    d = Limits()
    assert (d.max_request_line, d.max_header_bytes, d.max_headers) == (8192, 32768, 100)
    assert d.header_timeout_s > 0 and d.body_idle_timeout_s > 0 and d.keepalive_timeout_s > 0


async def test_configured_size_limits() -> None:
    async with harness(limits={"max_request_line": 1024, "max_header_bytes": 2048, "max_headers": 10}) as h:
        cases = [
            (request("GET", "/" + "a" * 1000), 200),
            (request("GET", "/" + "a" * 1100), 414),
            (request("GET", "/", headers=[("X-A", "v" * 1900)]), 200),
            (request("GET", "/", headers=[("X-A", "v" * 2100)]), 431),
            (request("GET", "/", headers=[(f"X-{i}", "v") for i in range(8)]), 200),
            (request("GET", "/", headers=[(f"X-{i}", "v") for i in range(10)]), 431),
        ]
        for raw, status in cases:
            resps, _raw, closed = await exchange(h.port, raw)
            assert resps[0].status == status, raw[:60]
            if status != 200:
                assert closed


async def test_header_trickled_past_the_limit_is_cut_off() -> None:
    """A header that never ends, sent in pieces: httptools would buffer it all."""
    async with harness(limits={"max_header_bytes": 4096, "max_request_line": 1024}) as h:
        pieces = [b"GET / HTTP/1.1\r\nHost: a\r\nX-Long: "] + [b"v" * 1000] * 20
        resps, _raw, closed = await exchange(h.port, pieces, gap=0.01)
        assert [r.status for r in resps] == [431] and closed


@pytest.mark.parametrize("framing", ["length", "chunked"])
async def test_body_limit_per_route(framing: str) -> None:
    routes = [{"name": "small", "pool": "default", "match": {"path_prefix": "/small"}, "max_body_bytes": 100_000},
              {"name": "big", "pool": "default", "match": {"path_prefix": "/"}}]
    async with harness(routes=routes) as h:
        ok = b"o" * 100_000
        big = b"b" * 3_000_000
        for path, body, status in [("/small", ok, 200), ("/small", big, 413), ("/big", big, 200)]:
            if framing == "length":
                raw = request("POST", path, body=body)
            else:
                raw = request("POST", path, headers=[("Transfer-Encoding", "chunked")]) + \
                    b"".join(chunked(body[i:i + 65536])[:-5] for i in range(0, len(body), 65536)) + b"0\r\n\r\n"
            before = h.backend.stats.requests
            # The client is still writing its 3 MB when the 413 comes: the node must
            # let it read that answer (no reset from closing on unread input).
            resps, _raw, _closed = await exchange(h.port, raw, timeout=5)
            assert [r.status for r in resps] == [status], (path, len(body))
            if status == 413:
                assert resps[0].header("x-novaedge-error", ) and resps[0].closes
                assert h.backend.stats.requests == before   # never completed upstream


async def test_slowloris_header_trickle_is_cut_off() -> None:
    async with harness(limits={"header_timeout_s": 0.6}) as h:
        head = request("GET", "/")
        t0 = time.monotonic()
        c = await RawClient.connect(h.port)
        try:
            for i in range(len(head) - 1):   # 1 byte every 50 ms: never finishes in time
                if c.eof:
                    break
                try:
                    await c.send(head[i:i + 1])
                except (ConnectionResetError, BrokenPipeError):
                    break
                await asyncio.sleep(0.05)
                if await c.closed_within(0):
                    break
            assert await c.closed_within(2)
        finally:
            await c.close()
        assert time.monotonic() - t0 < 4.0   # header_timeout_s 0.6, not the default 10 s
        assert b" 408 " in c.buf
        assert h.backend.stats.requests == 0


async def test_silent_fresh_connection_is_closed_after_header_timeout() -> None:
    async with harness(limits={"header_timeout_s": 0.5, "keepalive_timeout_s": 60}) as h:
        c = await RawClient.connect(h.port)
        try:
            assert await c.closed_within(3)   # header_timeout_s 0.5, keep-alive 60 s
        finally:
            await c.close()


async def test_body_idle_timeout_is_408() -> None:
    async with harness(limits={"body_idle_timeout_s": 0.5}) as h:
        c = await RawClient.connect(h.port)
        try:
            await c.send(request("POST", "/", headers=[("Content-Length", "100")]) + b"x" * 10)
            t0 = time.monotonic()
            (r,) = await c.responses(1, timeout=3)
            assert r.status == 408 and r.header("x-novaedge-error") == "request body timeout"
            assert 0.4 < time.monotonic() - t0 < 4.0   # the 0.5 s limit, not a default
            assert await c.closed_within(1)
        finally:
            await c.close()
        assert h.backend.stats.requests == 0


async def test_keepalive_idle_timeout_closes() -> None:
    async with harness(limits={"keepalive_timeout_s": 0.5}) as h:
        c = await RawClient.connect(h.port)
        try:
            await c.send(request("GET", "/bytes/1"))
            await c.responses(1)
            t0 = time.monotonic()
            assert await c.closed_within(2)
            assert 0.4 < time.monotonic() - t0 < 4.0   # the 0.5 s limit, not a default
        finally:
            await c.close()


@pytest.mark.parametrize("name", sorted(n.decode() for n in BAD))
async def test_malformed_backend_response_is_502(name: str) -> None:
    async with harness(upstream={"retries": 0}) as h:
        r = await h.get(f"/bad/{name}")
        assert r.status == 502
        assert r.header("x-novaedge-error") == "upstream-bad-response"
        assert r.body.startswith(b"502 Bad Gateway: upstream-bad-response")


async def test_errors_are_short_and_say_which() -> None:
    with blackhole() as hole:
        routes = [{"name": "small", "pool": "default", "match": {"path_prefix": "/small"}, "max_body_bytes": 10},
                  {"name": "slow", "pool": "slowpool", "match": {"path_prefix": "/slow"}},
                  {"name": "none", "pool": "empty", "match": {"path_prefix": "/none"}},
                  {"name": "all", "pool": "default", "match": {"path_prefix": "/"}}]
        pools = {"slowpool": {"regions": {"us-east-1": [hole]}}, "empty": {"regions": {"us-east-1": []}}}
        async with harness(routes=routes, upstream={"connect_timeout_s": 0.2},
                           extra_pools=pools) as h:
            cases = [
                (request("GET", "/", host=None), 400, "missing Host header field"),
                (request("POST", "/small", body=b"x" * 11), 413, "request body over 10 bytes"),
                (request("GET", "/" + "a" * 9000), 414, "request target too long"),
                (request("GET", "/", headers=[("X-A", "v" * 33000)]), 431, "request header block too large"),
                (request("GET", "/bad/garbage"), 502, "upstream-bad-response"),
                (request("GET", "/none"), 503, ""),      # the balancer's words
                (request("GET", "/slow"), 504, "upstream-connect-timeout"),
            ]
            for raw, status, reason in cases:
                resps, _raw, _closed = await exchange(h.port, raw)
                (r,) = resps
                assert r.status == status and r.header("x-novaedge-error")
                if reason:
                    assert r.header("x-novaedge-error") == reason
                assert r.header("x-request-id")
                assert r.header("content-type", ) == "text/plain; charset=utf-8"
                assert r.body.decode().startswith(f"{status} ") and reason in r.body.decode()
                assert len(r.body) < 200


async def test_body_idle_timeout_does_not_count_time_we_were_not_reading() -> None:
    """A pipelined upload waits (unread) behind a slow response: not the client's idleness."""
    async with harness(limits={"body_idle_timeout_s": 0.5}) as h:
        c = await RawClient.connect(h.port)
        try:
            await c.send(request("GET", "/slow/1200") + request("POST", "/", headers=[("Content-Length", "10")])
                         + b"01234")
            (first,) = await c.responses(1, timeout=3)
            assert first.status == 200
            await c.send(b"56789")
            (second,) = await c.responses(1)
            assert second.status == 200 and json.loads(second.body)["body_len"] == 10
        finally:
            await c.close()


async def test_header_timeout_does_not_count_time_we_were_not_reading() -> None:
    async with harness(limits={"header_timeout_s": 0.5}) as h:
        c = await RawClient.connect(h.port)
        try:
            second = request("GET", "/bytes/2")
            await c.send(request("GET", "/slow/1200") + second[:10])
            (first,) = await c.responses(1, timeout=3)
            assert first.status == 200
            await c.send(second[10:])
            (r,) = await c.responses(1)
            assert r.status == 200 and r.body == b"xx"
        finally:
            await c.close()


@pytest.mark.parametrize("length", [2**63, 2**64 - 1])
async def test_a_content_length_past_64_bits_of_signed_int_is_a_413_not_a_500(length: int) -> None:
    """llhttp takes a Content-Length up to 2**64-1. On a connection's second
    request (its forwarding block memoised) the C head builder once raised
    on one past 2**63-1: a 500 and a traceback for any client who sent it."""
    async with harness() as h:
        raw = request("GET", "/") + request("POST", "/", headers=[("Content-Length", str(length))])
        resps, _raw, closed = await exchange(h.port, raw)
        assert [r.status for r in resps] == [200, 413] and closed
