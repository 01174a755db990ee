"""build_upstream_head with a connection's memo gives the bytes it gives without one."""
from __future__ import annotations

import types

from proxy.exchange import Exchange
from proxy.request import HEADER_ACTIONS, build_upstream_head


def _exchange(headers: list[tuple[bytes, bytes]]) -> Exchange:
    node = types.SimpleNamespace(snapshot=types.SimpleNamespace(config=types.SimpleNamespace(limits=None)))
    ex = Exchange(types.SimpleNamespace(node=node))  # type: ignore[arg-type]
    ex.method = "GET"
    ex.headers = [(n.lower(), v) for n, v in headers]
    ex.names = [n for n, _ in headers]
    ex.host_count = sum(1 for n, _ in headers if n.lower() == b"host")
    return ex


def _head(headers: list[tuple[bytes, bytes]], host: bytes, client: str, trusted: bool,
          extra: list[tuple[bytes, bytes]], memo: list[object] | None, rid: bytes) -> bytes:
    return build_upstream_head(_exchange(headers), b"/p?q=1", host, client, trusted, "10.0.0.9",
                               b"https", b"1.1 novaedge", rid, HEADER_ACTIONS, extra, memo)


def test_memo_gives_the_same_head_as_none_request_after_request() -> None:
    region = [(b"X-Edge-Region", b"us-east-1")]
    # One connection's requests: the memo must follow every change of host,
    # client, forwarded chain and geo fields, and never leak one into another.
    seq = [
        ([(b"Host", b"a.example")], b"a.example", "10.0.0.9", False, region),
        ([(b"Host", b"a.example"), (b"Accept", b"*/*")], b"a.example", "10.0.0.9", False, region),
        ([(b"Host", b"b.example")], b"b.example", "10.0.0.9", False, region),
        ([(b"Host", b"b.example"), (b"X-Forwarded-For", b"203.0.113.7")], b"b.example", "203.0.113.7", True, region),
        ([(b"Host", b"b.example"), (b"Via", b"1.0 cdn")], b"b.example", "10.0.0.9", False, region),
        ([(b"Host", b"b.example")], b"b.example", "10.0.0.9", False, [(b"X-Country", b"DE"), *region]),
        ([(b"Host", b"b.example")], b"b.example", "10.0.0.9", False, region),
        ([], b"", "10.0.0.9", False, []),
    ]
    memo: list[object] = [None, b""]
    for i, (headers, host, client, trusted, extra) in enumerate(seq):
        rid = b"r%d" % i
        want = _head(headers, host, client, trusted, extra, None, rid)
        assert _head(headers, host, client, trusted, extra, memo, rid) == want, i
        assert b"X-Request-Id: " + rid + b"\r\n" in want


def test_forwarding_fields() -> None:
    head = _head([(b"Host", b"a.example"), (b"X-Forwarded-For", b"203.0.113.7"), (b"Via", b"1.0 cdn")],
                 b"a.example", "203.0.113.7", True, [], [None, b""], b"r1")
    assert head.startswith(b"GET /p?q=1 HTTP/1.1\r\nHost: a.example\r\n")
    assert b"X-Forwarded-For: 203.0.113.7, 10.0.0.9\r\n" in head
    assert b"X-Forwarded-Proto: https\r\nX-Forwarded-Host: a.example\r\n" in head
    assert b"X-Real-IP: 203.0.113.7\r\nVia: 1.0 cdn, 1.1 novaedge\r\n" in head
    assert head.endswith(b"\r\n\r\n") and head.count(b"Via:") == 1
