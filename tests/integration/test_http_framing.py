"""HTTP/1.1 message framing through a real node: keep-alive, pipelining, bodies
both ways, Expect: 100-continue, HEAD, 1xx, 204/304, close-delimited
responses, hop-by-hop fields and the forwarding headers. Raw bytes on real
sockets; responses are read by tests/support/http.py, a second, independent
parser, so a framing bug shared with llhttp cannot hide.
"""
from __future__ import annotations

import hashlib
import json
import os

import pytest

from tests.support.harness import harness
from tests.support.http import RawClient, chunked, exchange, request


def echo(body: bytes) -> dict:
    return json.loads(body)


def hdr(doc: dict, name: str) -> list[str]:
    return [v for n, v in doc["headers"] if n.lower() == name.lower()]


async def test_keep_alive_client_and_upstream() -> None:
    async with harness() as h:
        c = await RawClient.connect(h.port)
        try:
            for i in range(3):
                await c.send(request("GET", f"/bytes/{i + 1}"))
                (r,) = await c.responses(1)
                assert r.status == 200 and r.body == b"x" * (i + 1) and not r.closes
        finally:
            await c.close()
        assert h.backend.stats.requests == 3
        assert h.backend.stats.connections == 1   # one pooled upstream connection, reused


async def test_pipelined_requests_answered_in_order() -> None:
    async with harness() as h:
        # The first is the slowest: responses must still come back in request order.
        paths = ["/slow/300", "/bytes/2", "/chunked/3", "/status/204", "/bytes/5"]
        raw = b"".join(request("GET", p) for p in paths)
        resps, _raw, closed = await exchange(h.port, raw, expect=5)
        assert [r.status for r in resps] == [200, 200, 200, 204, 200]
        assert [len(r.body) for r in resps] == [len(resps[0].body), 2, 3, 0, 5]
        assert json.loads(resps[0].body)["target"] == "/slow/300"
        assert not closed
        assert h.backend.stats.paths == paths


async def test_pipelined_bodies_stay_with_their_requests() -> None:
    async with harness() as h:
        bodies = [b"a" * 10, b"b" * 70000, b"c" * 3]
        raw = (request("POST", "/", body=bodies[0])
               + request("POST", "/", headers=[("Transfer-Encoding", "chunked")], body=chunked(bodies[1][:5000], bodies[1][5000:]), length=False)
               + request("PUT", "/", body=bodies[2]))
        resps, _raw, _closed = await exchange(h.port, raw, expect=3)
        assert [echo(r.body)["body_sha256"] for r in resps] == [hashlib.sha256(b).hexdigest() for b in bodies]


@pytest.mark.parametrize("encoding", ["length", "chunked"])
async def test_request_body_streams_intact(encoding: str) -> None:
    body = os.urandom(3 * 1024 * 1024 + 17)
    async with harness() as h:
        if encoding == "length":
            pieces = [request("POST", "/", body=body)]
        else:
            head = request("POST", "/", headers=[("Transfer-Encoding", "chunked")])
            pieces = [head] + [chunked(body[i:i + 300000])[:-5] for i in range(0, len(body), 300000)] + [b"0\r\n\r\n"]
        resps, _raw, _closed = await exchange(h.port, pieces, expect=1, timeout=10)
        doc = echo(resps[0].body)
        assert doc["body_len"] == len(body)
        assert doc["body_sha256"] == hashlib.sha256(body).hexdigest()
        # re-framed, never both (9112 6.3): chunked stays chunked, a length stays a length
        if encoding == "length":
            assert hdr(doc, "content-length") == [str(len(body))] and not hdr(doc, "transfer-encoding")
        else:
            assert hdr(doc, "transfer-encoding") == ["chunked"] and not hdr(doc, "content-length")


@pytest.mark.parametrize("path,framing", [("/bytes/300000", "length"), ("/chunked/300000", "chunked"),
                                          ("/close/300000", "chunked")])
async def test_response_framing_for_http11(path: str, framing: str) -> None:
    async with harness() as h:
        c = await RawClient.connect(h.port)
        try:
            await c.send(request("GET", path))
            (r,) = await c.responses(1)
            assert r.status == 200 and len(r.body) == 300000 and r.framing == framing
            assert not r.closes
            # The connection is still good for the next request (the close-delimited
            # upstream body was converted to chunked, not to a client close).
            await c.send(request("GET", "/bytes/7"))
            (r2,) = await c.responses(1)
            assert r2.status == 200 and r2.body == b"x" * 7
        finally:
            await c.close()


@pytest.mark.parametrize("path", ["/chunked/70000", "/close/70000"])
async def test_unframed_response_is_close_delimited_for_http10(path: str) -> None:
    async with harness() as h:
        resps, _raw, closed = await exchange(h.port, request("GET", path, version="HTTP/1.0"))
        (r,) = resps
        assert r.framing == "close" and len(r.body) == 70000 and closed
        assert r.header("transfer-encoding") is None   # 1.0 clients do not know chunked


async def test_http10_keep_alive_with_length() -> None:
    async with harness() as h:
        c = await RawClient.connect(h.port)
        try:
            for _ in range(2):
                await c.send(request("GET", "/bytes/4", version="HTTP/1.0", headers=[("Connection", "keep-alive")]))
                (r,) = await c.responses(1)
                assert r.body == b"xxxx" and r.header("connection") == "keep-alive"
        finally:
            await c.close()


@pytest.mark.parametrize("path", ["/bytes/100", "/chunked/100", "/status/404"])
async def test_head_has_no_body_and_keeps_framing(path: str) -> None:
    async with harness() as h:
        raw = request("HEAD", path) + request("GET", "/bytes/3")
        resps, rawb, _closed = await exchange(h.port, raw, expect=2, methods=["HEAD", "GET"])
        head, nxt = resps
        if path == "/bytes/100":
            assert head.header("content-length") == "100"   # the length a GET would have
        assert head.body == b"" and nxt.body == b"xxx"
        assert rawb.count(b"HTTP/1.1 ") == 2   # nothing else went out


@pytest.mark.parametrize("status", [204, 304])
async def test_no_body_statuses(status: int) -> None:
    async with harness() as h:
        raw = request("GET", f"/status/{status}") + request("GET", "/bytes/3")
        resps, _raw, _closed = await exchange(h.port, raw, expect=2)
        assert [r.status for r in resps] == [status, 200]
        assert resps[0].body == b"" and resps[0].header("transfer-encoding") is None
        assert resps[1].body == b"xxx"


async def test_103_early_hints_relayed_to_http11_only() -> None:
    async with harness() as h:
        resps, _raw, _closed = await exchange(h.port, request("GET", "/hints"))
        (r,) = resps
        assert [i.status for i in r.interim] == [103]
        assert r.interim[0].header("link") == "</a.css>; rel=preload"
        assert r.status == 200
        resps, raw10, _closed = await exchange(h.port, request("GET", "/hints", version="HTTP/1.0"))
        assert resps[0].interim == [] and b" 103 " not in raw10   # 9110 15.2: no 1xx to 1.0


async def test_expect_100_continue_answered_by_the_node() -> None:
    async with harness() as h:
        c = await RawClient.connect(h.port)
        try:
            await c.send(request("POST", "/", headers=[("Expect", "100-continue"), ("Content-Length", "5")]))
            interim = await c.read_until(b"\r\n\r\n", timeout=2)
            assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
            assert h.backend.stats.requests == 0
            await c.send(b"hello")
            (r,) = await c.responses(1)
            doc = echo(r.body)
            assert r.status == 200 and doc["body_len"] == 5
            assert not hdr(doc, "expect")   # the node handled it; the backend never sees it
        finally:
            await c.close()


@pytest.mark.parametrize("path,headers,status", [
    ("/", [("Content-Length", "2000")], 413),          # over the route's limit: no 100 first
    ("/nowhere", [("Content-Length", "5")], 404),      # no route: no 100 first
    ("/", [("Content-Length", "5"), ("Expect", "100-continue")], 417),   # twice, "teapot" below
])
async def test_expect_never_100_before_an_error(path: str, headers: list[tuple[str, str]], status: int) -> None:
    routes = [{"name": "r", "pool": "default", "match": {"path_prefix": "/"}, "max_body_bytes": 1000}]
    if status == 404:
        routes[0]["match"] = {"path_prefix": "/api"}
    expect = "teapot" if status == 417 else "100-continue"
    async with harness(routes=routes) as h:
        c = await RawClient.connect(h.port)
        try:
            await c.send(request("POST", path, headers=[("Expect", expect)] + headers[:1]))
            (r,) = await c.responses(1, timeout=2)
            assert r.status == status and r.interim == []
            assert h.backend.stats.requests == 0
        finally:
            await c.close()


async def test_expect_ignored_for_http10() -> None:
    async with harness() as h:
        c = await RawClient.connect(h.port)
        try:
            await c.send(request("POST", "/", version="HTTP/1.0",
                                 headers=[("Expect", "100-continue"), ("Content-Length", "3")]))
            assert await c.nothing_for(0.3)   # no 1xx for a 1.0 client (9110 15.2)
            await c.send(b"abc")
            (r,) = await c.responses(1)
            assert r.status == 200 and r.interim == []
        finally:
            await c.close()


async def test_hop_by_hop_response_fields_stripped() -> None:
    async with harness() as h:
        r = await h.get("/hop")
        assert r.status == 200 and r.body == b"ok"
        assert r.header("x-end") == "1"
        for name in ("x-hop", "keep-alive", "proxy-authenticate", "upgrade", "trailer"):
            assert r.header(name) is None, name
        assert "1.1 novaedge" in (r.header("via") or "")
        assert r.header("x-request-id")


async def test_a_second_response_from_the_backend_is_never_relayed() -> None:
    async with harness() as h:
        c = await RawClient.connect(h.port)
        try:
            await c.send(request("GET", "/twice"))
            (r,) = await c.responses(1)
            assert r.body == b"first"
            await c.send(request("GET", "/bytes/4"))
            (r2,) = await c.responses(1)
            assert r2.body == b"xxxx"   # not the backend's stray "extra"
        finally:
            await c.close()
        assert h.backend.stats.connections == 2   # the polluted connection was not reused


async def test_forwarding_headers_from_an_untrusted_client() -> None:
    async with harness() as h:
        r = await h.get("/", headers=[("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-Proto", "https"),
                                      ("X-Forwarded-Host", "evil"), ("X-Real-IP", "6.6.6.6"),
                                      ("Forwarded", "for=6.6.6.6"), ("X-Request-Id", "mine"),
                                      ("Via", "1.0 earlier")])
        doc = echo(r.body)
        assert hdr(doc, "x-forwarded-for") == ["127.0.0.1"]   # replaced, not appended
        assert hdr(doc, "x-forwarded-proto") == ["http"]
        assert hdr(doc, "x-forwarded-host") == ["a.test"]
        assert hdr(doc, "x-real-ip") == ["127.0.0.1"]
        assert hdr(doc, "forwarded") == []
        assert hdr(doc, "x-request-id") == [r.header("x-request-id")] != ["mine"]
        assert hdr(doc, "via") == ["1.0 earlier, 1.1 novaedge"]


async def test_forwarding_headers_from_a_trusted_proxy() -> None:
    async with harness(trusted_proxies=["127.0.0.5/32"]) as h:
        resps, _raw, _closed = await exchange(
            h.port, request("GET", "/", headers=[("X-Forwarded-For", "203.0.113.7, 198.51.100.1")]),
            local_addr=("127.0.0.5", 0))
        doc = echo(resps[0].body)
        # The chain is kept and the proxy's own address appended; the client is the
        # rightmost address that is not a trusted proxy.
        assert hdr(doc, "x-forwarded-for") == ["203.0.113.7, 198.51.100.1, 127.0.0.5"]
        assert hdr(doc, "x-real-ip") == ["198.51.100.1"]
        # A chain whose next hop is not an address stops at the last good hop.
        resps, _raw, _closed = await exchange(
            h.port, request("GET", "/", headers=[("X-Forwarded-For", "203.0.113.7, <script>")]),
            local_addr=("127.0.0.5", 0))
        doc = echo(resps[0].body)
        assert hdr(doc, "x-real-ip") == ["127.0.0.5"]
        # The same header from an address that is not trusted is replaced.
        resps, _raw, _closed = await exchange(
            h.port, request("GET", "/", headers=[("X-Forwarded-For", "203.0.113.7")]),
            local_addr=("127.0.0.6", 0))
        doc = echo(resps[0].body)
        assert hdr(doc, "x-forwarded-for") == ["127.0.0.6"] and hdr(doc, "x-real-ip") == ["127.0.0.6"]


async def test_http10_request_without_host_gets_one_upstream() -> None:
    async with harness() as h:
        resps, _raw, _closed = await exchange(h.port, request("GET", "/", host=None, version="HTTP/1.0"))
        doc = echo(resps[0].body)
        assert hdr(doc, "host") == [h.backend.address]   # HTTP/1.1 upstream needs a Host


async def test_client_half_close_still_gets_its_response() -> None:
    async with harness() as h:
        c = await RawClient.connect(h.port)
        try:
            await c.send(request("GET", "/slow/100") + request("GET", "/bytes/2"))
            c.writer.write_eof()   # like `printf ... | nc -N`
            resps = await c.responses(2)
            assert [r.status for r in resps] == [200, 200]
            assert await c.closed_within(2)
        finally:
            await c.close()


async def test_node_answers_keep_the_connection_for_bodiless_requests() -> None:
    routes = [{"name": "api", "pool": "default", "match": {"path_prefix": "/api"}}]
    async with harness(routes=routes) as h:
        raw = request("GET", "/nowhere") + request("GET", "/api/bytes/2") + request("GET", "/nowhere")
        resps, _raw, closed = await exchange(h.port, raw, expect=3)
        assert [r.status for r in resps] == [404, 200, 404]
        assert not closed and not any(r.closes for r in resps)


async def test_thousands_of_pipelined_requests() -> None:
    """Answered synchronously (404) or proxied, in order, without recursion."""
    routes = [{"name": "bytes", "pool": "default", "match": {"path_prefix": "/bytes"}}]
    async with harness(routes=routes) as h:
        paths = [f"/bytes/{i % 7 + 1}" if i % 3 else "/nowhere" for i in range(3000)]
        raw = b"".join(request("GET", p) for p in paths)
        resps, _raw, closed = await exchange(h.port, raw, expect=len(paths), timeout=20)
        assert len(resps) == len(paths) and not closed
        for p, r in zip(paths, resps):
            if p == "/nowhere":
                assert r.status == 404
            else:
                assert r.status == 200 and len(r.body) == int(p.rsplit("/", 1)[1])
        assert h.backend.stats.requests == 2000


def random_pipeline(rng: "random.Random") -> tuple[list[bytes], list[tuple[str, str, bytes]]]:
    """A random pipeline of requests (bodies by length or chunked, odd chunk
    sizes and extensions), cut into random TCP segments."""
    reqs: list[tuple[str, str, bytes]] = []
    wire = b""
    for _ in range(rng.randint(1, 8)):
        method = rng.choice(["GET", "GET", "HEAD", "POST", "PUT", "DELETE"])
        path = rng.choice(["/", "/", f"/bytes/{rng.randint(0, 20000)}", f"/chunked/{rng.randint(1, 40000)}"])
        body = rng.randbytes(rng.choice([0, 1, 100, 5000, 70000])) if method in ("POST", "PUT") else b""
        if method == "HEAD" or body == b"":
            wire += request(method, path)
        elif rng.random() < 0.5:
            wire += request(method, path, body=body)
        else:
            pieces, i = [], 0
            while i < len(body):
                n = rng.randint(1, 9000)
                ext = rng.choice([b"", b";x=1", b';q="a b"'])
                pieces.append(b"%x%b\r\n%b\r\n" % (len(body[i:i + n]), ext, body[i:i + n]))
                i += n
            wire += request(method, path, headers=[("Transfer-Encoding", "chunked")]) + b"".join(pieces) + b"0\r\n\r\n"
        reqs.append((method, path, body))
    cuts = sorted(rng.sample(range(1, len(wire)), min(len(wire) - 1, rng.randint(0, 12))))
    segments = [wire[a:b] for a, b in zip([0] + cuts, cuts + [len(wire)])]
    return segments, reqs


@pytest.mark.parametrize("seed", range(20))
async def test_random_pipelines(seed: int) -> None:
    import random
    rng = random.Random(seed)
    segments, reqs = random_pipeline(rng)
    async with harness() as h:
        resps, _raw, closed = await exchange(h.port, segments, expect=len(reqs), methods=[m for m, _p, _b in reqs],
                                             gap=rng.choice([0.0, 0.002]), timeout=10)
        assert len(resps) == len(reqs) and not closed
        for (method, path, body), r in zip(reqs, resps):
            assert r.status == 200, (method, path)
            if method == "HEAD":
                assert r.body == b""
            elif path == "/":
                doc = echo(r.body)
                assert (doc["method"], doc["body_len"], doc["body_sha256"]) == \
                    (method, len(body), hashlib.sha256(body).hexdigest())
            else:
                assert len(r.body) == int(path.rsplit("/", 1)[1])
        assert h.backend.stats.paths == [p for _m, p, _b in reqs]


@pytest.mark.parametrize("size,status", [(30_000, 200), (200_000, 502)])
async def test_backend_response_head_is_bounded(size: int, status: int) -> None:
    async with harness(upstream={"retries": 0}) as h:
        r = await h.get(f"/bighead/{size}")
        assert r.status == status
        if status == 200:
            assert len(r.header("x-big") or "") == size and r.body == b"ok"


async def test_response_trailers_are_dropped_and_framing_kept() -> None:
    async with harness() as h:
        raw = request("GET", "/trailers") + request("GET", "/bytes/3")
        resps, _raw, _closed = await exchange(h.port, raw, expect=2)
        assert [(r.status, r.body) for r in resps] == [(200, b"ok"), (200, b"xxx")]
        assert resps[0].header("x-t") is None and resps[0].header("trailer") is None
