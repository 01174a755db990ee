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


# -- the response side: Exchange.on_header --------------------------------

def test_the_response_c_version_is_used() -> None:
    if PURE:
        pytest.skip("NOVAEDGE_PURE_PYTHON=1")
    assert Exchange.on_header is not Exchange._on_header_py


def _resp_call(fn, ex: Exchange, name: bytes, value: bytes) -> tuple[object, ...]:
    try:
        fn(ex, name, value)
    except ValueError as e:
        return ("error", str(e))
    return ("ok",)


@settings(max_examples=300, deadline=None)
@given(fields=st.lists(st.tuples(names, values | st.binary(min_size=20_000, max_size=30_000)), max_size=8),
       sent_after=st.none() | st.integers(0, 8), start=st.sampled_from([0, 60_000, 65_530]))
def test_the_c_response_on_header_matches_the_python_one(fields, sent_after, start) -> None:
    exs = [_down(100, 32768).parsing, _down(100, 32768).parsing]
    for ex in exs:
        ex.resp_head_bytes = start
    for i, (name, value) in enumerate(fields):
        if i == sent_after:
            for ex in exs:
                ex.resp_head_sent = True   # the head went out: what follows are trailers
        got = _resp_call(Exchange.on_header, exs[0], name, value)
        want = _resp_call(Exchange._on_header_py, exs[1], name, value)
        assert got == want
        assert (exs[0].resp_head_bytes, exs[0].resp_headers) == (exs[1].resp_head_bytes, exs[1].resp_headers)


def test_a_c_part_that_does_not_fit_leaves_the_python_version(caplog) -> None:
    """A stale build whose setup() no longer fits the Python side must not
    break the import: the Python version runs, and the log says why."""
    from proxy import _accel

    def setup(module):
        raise TypeError("setup: Exchange.headers is not an object slot")

    if PURE:
        assert _accel.attach("proxy._hotpath", setup) is None
        return
    with caplog.at_level("WARNING", logger="novaedge.accel"):
        assert _accel.attach("proxy._hotpath", setup) is None
    assert "does not fit this source" in caplog.text
    assert _accel.attach("proxy._no_such_module", setup) is None
