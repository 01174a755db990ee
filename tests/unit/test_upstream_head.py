"""build_upstream_head with a connection's memo gives the bytes it gives without
one, and its C version (proxy/_hotpath.c) gives what the Python one gives."""
from __future__ import annotations

import os
import types

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.exchange import Exchange
from proxy.request import HEADER_ACTIONS, build_upstream_head, build_upstream_head_py


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


# -- the C version (proxy/_hotpath.c) against the Python one ----------------

def test_the_c_version_is_built_and_used() -> None:
    if os.environ.get("NOVAEDGE_PURE_PYTHON") == "1":
        pytest.skip("NOVAEDGE_PURE_PYTHON=1")
    assert build_upstream_head is not build_upstream_head_py, "proxy/_hotpath.c was not built"


field_names = st.sampled_from([b"Host", b"host", b"Accept", b"X-Forwarded-For", b"Via", b"Connection",
                               b"Keep-Alive", b"TE", b"Upgrade", b"Content-Length", b"Transfer-Encoding",
                               b"Expect", b"X-Custom", b"x-custom", b"Proxy-Connection", b"X-Real-IP",
                               b"X-Request-Id", b"X-Edge-Country"]) | st.binary(min_size=1, max_size=8)
field_values = st.sampled_from([b"", b"a.example", b"203.0.113.7", b"1.0 cdn", b"x-custom, keep-alive"]) \
    | st.binary(max_size=20)
extras = st.sampled_from([[], [(b"X-Edge-Country", b"DE")], [(b"X-Edge-Region", b"us-east-1")]])


def _ex_from(fields, method, host_count, chunked, declared, want_upgrade, upgrade, tokens) -> Exchange:
    ex = _exchange(fields)
    ex.method = method
    if host_count is not None:
        ex.host_count = host_count
    ex.chunked = chunked
    ex.declared_len = declared
    ex.want_upgrade = want_upgrade
    ex.upgrade = upgrade
    ex.conn_tokens = set(tokens)
    return ex


@settings(max_examples=400, deadline=None)
@given(requests=st.lists(st.tuples(
           st.lists(st.tuples(field_names, field_values), max_size=8),
           st.sampled_from(["GET", "POST", "PUT", "PATCH", "HEAD", "DELETE", "OPTIONS"]),
           st.none() | st.integers(0, 2), st.booleans(), st.sampled_from([-1, 0, 5, 2**40]),
           st.booleans(), st.none() | st.just(b"websocket"),
           st.sets(st.sampled_from([b"keep-alive", b"x-custom", b"host", b"via", b"x-forwarded-for", b"te"])),
           st.sampled_from([b"a.example", b"b.example:8080", b""]), st.sampled_from(["10.0.0.9", "203.0.113.7"]),
           st.booleans(), extras, st.booleans()), min_size=1, max_size=5))
def test_the_c_version_matches_the_python_one(requests) -> None:
    memo_c: list[object] = [None, b""]
    memo_py: list[object] = [None, b""]
    for i, (fields, method, hc, chunked, declared, wu, up, tokens, host, client, trusted, extra, no_memo) \
            in enumerate(requests):
        ex_c = _ex_from(fields, method, hc, chunked, declared, wu, up, tokens)
        ex_py = _ex_from(fields, method, hc, chunked, declared, wu, up, tokens)
        args = (b"/p?q=1", host, client, trusted, "10.0.0.9", b"https", b"1.1 novaedge", b"r%d" % i,
                HEADER_ACTIONS, extra)
        got = build_upstream_head(ex_c, *args, None if no_memo else memo_c)
        want = build_upstream_head_py(ex_py, *args, None if no_memo else memo_py)
        assert got == want
        assert (ex_c.host_missing, ex_c.body_chunked_out) == (ex_py.host_missing, ex_py.body_chunked_out)
        assert memo_c == memo_py


@settings(max_examples=400, deadline=None)
@given(requests=st.lists(st.tuples(
           st.lists(st.tuples(field_names, field_values), max_size=8),
           st.sampled_from(["GET", "POST", "PUT", "HEAD"]), st.none() | st.integers(0, 2), st.booleans(),
           st.sampled_from([-1, 0, 5, 2**40, 2**63 - 1, 2**63, 2**64 - 1]), st.booleans(),
           st.none() | st.just(b"websocket"),
           st.sets(st.sampled_from([b"keep-alive", b"x-custom", b"host", b"te"]))), min_size=2, max_size=6),
       host=st.sampled_from([b"a.example", b""]), trusted=st.booleans(), extra=extras)
def test_the_c_version_on_a_warm_connection(requests, host, trusted, extra) -> None:
    """One connection's requests with the same host, client and geo fields:
    after the first, the memo holds the block and the C builds the head
    itself (Content-Lengths past 2**63 included: it leaves those to Python)."""
    memo_c: list[object] = [None, b""]
    memo_py: list[object] = [None, b""]
    for i, (fields, method, hc, chunked, declared, wu, up, tokens) in enumerate(requests):
        ex_c = _ex_from(fields, method, hc, chunked, declared, wu, up, tokens)
        ex_py = _ex_from(fields, method, hc, chunked, declared, wu, up, tokens)
        args = (b"/p", host, "10.0.0.9", trusted, "10.0.0.9", b"http", b"1.1 novaedge", b"r%d" % i,
                HEADER_ACTIONS, extra)
        assert build_upstream_head(ex_c, *args, memo_c) == build_upstream_head_py(ex_py, *args, memo_py)
        assert (ex_c.host_missing, ex_c.body_chunked_out) == (ex_py.host_missing, ex_py.body_chunked_out)
        assert memo_c == memo_py
