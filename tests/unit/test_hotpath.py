"""proxy/_hotpath.c's Downstream.on_header must leave an exchange exactly as
the Python method (Downstream._on_header_py) does, and raise what it raises,
for every field: here both get the same random fields, limits and states."""
from __future__ import annotations

import os
import types

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.config import parse_config
from proxy.downstream import Downstream, Reject
from proxy.exchange import PARSING, WAITING, Exchange

PURE = os.environ.get("NOVAEDGE_PURE_PYTHON") == "1"


def test_the_c_version_is_built_and_used() -> None:
    if PURE:
        pytest.skip("NOVAEDGE_PURE_PYTHON=1")
    assert Downstream.on_header is not Downstream._on_header_py, "proxy/_hotpath.c was not built (no C compiler?)"


def _down(max_headers: int, max_header_bytes: int) -> Downstream:
    limits = parse_config({"limits": {"max_headers": max_headers,
                                      "max_header_bytes": max_header_bytes}}).limits
    node = types.SimpleNamespace(snapshot=types.SimpleNamespace(config=types.SimpleNamespace(limits=limits)))
    down = Downstream.__new__(Downstream)
    down.node = node  # type: ignore[assignment]
    down.parsing = Exchange(down)
    return down


def _state(ex: Exchange) -> tuple[object, ...]:
    return (list(ex.headers), list(ex.names), ex.header_bytes, ex.host_count, ex.host_value, ex.has_cl,
            ex.te_value, set(ex.conn_tokens), ex.expect, ex.upgrade, ex.trailer_bytes, ex.trailer_count)


def _call(fn, down: Downstream, name: bytes, value: bytes) -> tuple[object, ...]:
    try:
        fn(down, name, value)
    except Reject as e:
        return ("reject", e.status, e.reason)
    return ("ok",)


names = st.sampled_from([b"Host", b"host", b"HOST", b"Accept", b"User-Agent", b"X-Custom-1", b"Content-Length",
                         b"transfer-encoding", b"Connection", b"Expect", b"Upgrade", b"content_length",
                         b"X_Y", b"Transfer_Encoding", b"hosT", b"Expects", b"Upgrade2"]) \
    | st.binary(min_size=1, max_size=12)
values = st.sampled_from([b"", b"a.example", b"keep-alive, Upgrade", b"chunked", b"100-continue", b"5"]) \
    | st.binary(max_size=40) | st.binary(min_size=60, max_size=120)


@settings(max_examples=400, deadline=None)
@given(fields=st.lists(st.tuples(names, values), max_size=12), max_headers=st.integers(4, 8),
       max_header_bytes=st.integers(256, 400), url_len=st.integers(0, 200),
       when=st.sampled_from(["head", "head", "head", "trailer-ctx", "trailer-state"]))
def test_the_c_on_header_matches_the_python_one(fields, max_headers, max_header_bytes, url_len, when) -> None:
    c, py = _down(max_headers, max_header_bytes), _down(max_headers, max_header_bytes)
    for d in (c, py):
        ex = d.parsing
        ex.url_len = ex.header_bytes = url_len
        if when == "trailer-ctx":
            ex.ctx = object()  # type: ignore[assignment]
        elif when == "trailer-state":
            ex.state = WAITING
    assert c.parsing.state in (PARSING, WAITING)
    for name, value in fields:
        got = _call(Downstream.on_header, c, name, value)
        want = _call(Downstream._on_header_py, py, name, value)
        assert got == want, (name, value)
        assert _state(c.parsing) == _state(py.parsing), (name, value)


def test_subclass_values_and_odd_states_go_to_python() -> None:
    c, py = _down(10, 1000), _down(10, 1000)

    class B(bytes):
        pass

    for name, value in [(B(b"Host"), b"a"), (b"Accept", B(b"x")), (b"Host", b"b")]:
        assert _call(Downstream.on_header, c, name, value) == _call(Downstream._on_header_py, py, name, value)
    assert _state(c.parsing) == _state(py.parsing)
    assert c.parsing.host_count == 2
