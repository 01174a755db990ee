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


# -- check_head's common case and the response head's fields ----------------

from proxy import exchange as exchange_mod  # noqa: E402
from proxy.request import check_head, check_head_py  # noqa: E402


def test_the_other_c_parts_are_used() -> None:
    if PURE:
        pytest.skip("NOVAEDGE_PURE_PYTHON=1")
    assert check_head is not check_head_py
    assert exchange_mod._response_fields is not None


def _head_ex(version, method, url, host_count, host_value, te, expect, has_cl, upgrade, tokens) -> Exchange:
    ex = _down(100, 32768).parsing
    ex.version, ex.method, ex.url = version, method, list(url)
    ex.host_count, ex.host_value, ex.te_value, ex.expect = host_count, host_value, te, expect
    ex.has_cl, ex.upgrade, ex.conn_tokens = has_cl, upgrade, set(tokens)
    if has_cl:
        ex.headers = [(b"content-length", b"5")]
    return ex


def _check(fn, ex: Exchange, known) -> tuple[object, ...]:
    try:
        out = ("ok", fn(ex, known))
    except Reject as e:
        out = ("reject", e.status, e.reason)
    return out + ((ex.declared_len, ex.chunked, ex.expect, ex.want_upgrade, ex.upgrade),)


targets = st.sampled_from([b"/", b"/a/b?c=d", b"/%41%zz", b"/%4", b"/a#f", b"/a\\b", b"*", b"http://h/x",
                           b"/caf\xc3\xa9", b"/a b", b"/%2F"]) | st.binary(max_size=12).map(lambda b: b"/" + b)
hosts = st.sampled_from([b"a.example", b"a.example:8080", b"[::1]:80", b"bad host", b""])


@settings(max_examples=500, deadline=None)
@given(version=st.sampled_from(["1.1", "1.1", "1.0", "0.9", "2.0"]),
       method=st.sampled_from(["GET", "GET", "POST", "CONNECT", "OPTIONS"]),
       url=st.lists(targets, min_size=1, max_size=2), host_count=st.sampled_from([1, 1, 1, 0, 2]),
       host_value=st.none() | hosts, known=st.none() | hosts,
       te=st.none() | st.sampled_from([b"chunked", b"gzip, chunked"]),
       expect=st.none() | st.sampled_from([b"100-continue", b"x"]), has_cl=st.booleans(),
       upgrade=st.none() | st.sampled_from([b"websocket", b"h2c"]),
       tokens=st.sets(st.sampled_from([b"upgrade", b"keep-alive"])))
def test_the_c_check_head_matches_the_python_one(version, method, url, host_count, host_value, known, te,
                                                 expect, has_cl, upgrade, tokens) -> None:
    args = (version, method, url, host_count, host_value, te, expect, has_cl, upgrade, tokens)
    assert _check(check_head, _head_ex(*args), known) == _check(check_head_py, _head_ex(*args), known)


def _render(ex: Exchange, fields_fn) -> bytes:
    saved = exchange_mod._response_fields
    exchange_mod._response_fields = fields_fn
    try:
        return ex._render_head(interim=False)
    finally:
        exchange_mod._response_fields = saved


resp_names = st.sampled_from([b"Server", b"Content-Length", b"content-length", b"Transfer-Encoding",
                              b"Connection", b"Keep-Alive", b"X-Thing", b"TE", b"Trailer", b"Upgrade",
                              b"Proxy-Authenticate", b"PROXY-CONNECTION"]) | st.binary(min_size=1, max_size=40)
resp_values = st.sampled_from([b"keep-alive", b"close", b"x-thing", b" Keep-Alive ,\tTE", b"x-thing, close",
                               b"", b"5", b",,"]) | st.binary(max_size=80)


@settings(max_examples=500, deadline=None)
@given(fields=st.lists(st.tuples(resp_names, resp_values), max_size=10), status=st.sampled_from([200, 404]),
       version=st.sampled_from(["1.1", "1.0"]))
def test_the_c_response_fields_match_the_python_loop(fields, status, version) -> None:
    if exchange_mod._response_fields is None:
        pytest.skip("the C version is not built")
    heads = []
    for fn in (exchange_mod._response_fields, None):
        down = _down(100, 32768)
        down.trusted_peer = down.closing = False
        node = types.SimpleNamespace(via_header=b"Via: 1.1 novaedge\r\n", draining=False,
                                     snapshot=types.SimpleNamespace(config=types.SimpleNamespace(debug_headers=False)))
        down.node = node  # type: ignore[assignment]
        ex = down.parsing
        ex.node = node  # type: ignore[assignment]
        ex.ctx = types.SimpleNamespace(request_id="r1")  # type: ignore[assignment]
        ex.resp_status, ex.resp_headers, ex.version, ex.body_complete = status, list(fields), version, True
        heads.append((_render(ex, fn), ex.resp_out_chunked, ex.resp_close_after, ex.resp_close_delimited))
    assert heads[0] == heads[1]


def test_a_connection_field_naming_an_end_to_end_field_is_left_to_python() -> None:
    if exchange_mod._response_fields is None:
        pytest.skip("the C version is not built")
    fields = exchange_mod._response_fields
    assert fields([(b"Connection", b"keep-alive"), (b"Server", b"x")]) == (b"Server: x\r\n", False, False)
    assert fields([(b"Connection", b" Keep-Alive ,\tTE"), (b"Content-Length", b"3")]) == \
        (b"Content-Length: 3\r\n", True, False)
    assert fields([(b"Connection", b"x-thing"), (b"X-Thing", b"1")]) is None
    assert fields([(b"X-Thing", b"1"), (b"Connection", b"close, x-thing")]) is None


# -- Exchange(down) made in C from its template -------------------------------

def test_a_c_made_exchange_equals_one_made_by_init() -> None:
    from proxy import downstream as downstream_mod
    if PURE:
        assert downstream_mod._new_exchange is Exchange
        return
    new = downstream_mod._new_exchange
    assert new is not Exchange
    down = _down(100, 32768)
    a, b, c = new(down), new(down), Exchange(down)
    assert type(a) is Exchange
    for name in Exchange.__slots__:
        va, vc = getattr(a, name, "<unset>"), getattr(c, name, "<unset>")
        assert va == vc, name
        if isinstance(va, (list, set)):   # a fresh one per exchange, never shared
            assert va is not getattr(b, name) and va is not vc, name
    assert a.down is down and a.node is down.node and a.limits is down.node.snapshot.config.limits
    a.headers.append((b"host", b"x"))
    assert b.headers == [] and c.headers == []


def test_a_template_with_a_mutable_constant_is_refused() -> None:
    """A slot __init__ sets to something the template cannot copy safely (a
    dict) must make setup fail, so that the Python class is used."""
    if PURE:
        pytest.skip("NOVAEDGE_PURE_PYTHON=1")
    from proxy import _hotpath  # type: ignore[attr-defined]
    down = _down(100, 32768)
    limits = down.node.snapshot.config.limits
    tpl = Exchange(down)
    tpl.tried = {"x": 1}  # type: ignore[assignment]
    from proxy import downstream as downstream_mod
    try:
        with pytest.raises(TypeError, match="tried"):
            _hotpath.setup_exchange(tpl, down, down.node, limits)
        with pytest.raises(TypeError, match="not set up"):
            downstream_mod._new_exchange(down)   # a failed setup leaves no half template
    finally:   # set up again (the C state is global) for the tests that follow, as downstream.py does
        from proxy.snapshot import Snapshot
        _hotpath.setup_exchange(Exchange(down), down, down.node, limits, Snapshot)
    assert downstream_mod._new_exchange(down).tried == set()


uri_bytes = st.sampled_from(list(b"abcXYZ019-._~!$&'()*+,;=:@/?%") + list(b"# \\G\x00\x7f\xff\"<>"))
fast_targets = st.lists(uri_bytes, max_size=14).map(lambda bs: b"/" + bytes(bs))


@settings(max_examples=800, deadline=None)
@given(version=st.sampled_from(["1.1", "1.0"]), method=st.sampled_from(["GET", "POST", "DELETE"]),
       target=fast_targets, host=hosts)
def test_the_c_check_head_on_the_requests_it_answers_itself(version, method, target, host) -> None:
    """The common case, which the C answers without Python: most examples here
    (a target of URI characters, the connection's known Host)."""
    args = (version, method, [target], 1, host, None, None, False, None, set())
    ex_c = _head_ex(*args)
    got = _check(check_head, ex_c, host)
    assert got == _check(check_head_py, _head_ex(*args), host)
    if got[0] == "ok":
        assert got[1][1] is ex_c.host_value   # node.py tells a validated Host by identity


def test_the_limits_of_each_config_apply() -> None:
    """The C keeps the last config's two limits (a frozen Limits): exchanges under
    different configs, interleaved, each get their own (431 at their own count).
    In a fresh process, so that which config the C saw first is known: a larger
    limit first, then a smaller one, which a stale cache would not enforce."""
    import subprocess
    import sys
    script = """
import sys, types
sys.path.insert(0, {tests!r})
from test_hotpath import _down, _call
from proxy.downstream import Downstream
fields = [(b"X-%d" % i, b"v") for i in range(10)]
for max_headers in (100, 4, 8, 4, 100, 5):
    c, py = _down(max_headers, 4000), _down(max_headers, 4000)
    got = [_call(Downstream.on_header, c, n, v) for n, v in fields]
    want = [_call(Downstream._on_header_py, py, n, v) for n, v in fields]
    assert got == want, (max_headers, got, want)
    assert (got[max_headers] == ("reject", 431, f"more than {{max_headers}} header fields")
            if max_headers < len(fields) else got[-1] == ("ok",)), (max_headers, got)
print("ok")
""".format(tests=os.path.dirname(__file__))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_the_c_field_table_refuses_names_it_cannot_hold() -> None:
    # The C copies the action table once, as lower-case names of at most 32
    # bytes; a table it could not match the way Python's .get does is refused
    # at setup (the Python loop then runs), not half applied.
    if exchange_mod._response_fields is None:
        pytest.skip("the C version is not built")
    from proxy import _hotpath  # type: ignore[attr-defined]
    from proxy.exchange import _CL, _CONN, _HOP, _RESPONSE_ACTIONS, _TE
    from proxy.http11 import HOP_BY_HOP
    acts = (_HOP, _CL, _TE, _CONN)
    for bad_actions, bad_hop in [({b"Content-Length": _CL}, HOP_BY_HOP), ({b"x" * 33: _CL}, HOP_BY_HOP),
                                 ({b"": _CL}, HOP_BY_HOP), ({b"te": "1"}, HOP_BY_HOP),
                                 (_RESPONSE_ACTIONS, frozenset({b"Keep-Alive"}))]:
        with pytest.raises(TypeError):
            _hotpath.setup_fields(bad_actions, bad_hop, acts)
    fields = _hotpath.setup_fields(_RESPONSE_ACTIONS, HOP_BY_HOP, acts)   # the real table again
    assert fields([(b"KEEP-ALIVE", b"1"), (b"Content-length", b"3"), (b"Connection", b"Keep-Alive, TE")]) == \
        (b"Content-length: 3\r\n", True, False)


def test_the_response_actions_are_read_only() -> None:
    # response_fields copies them once at setup: a table that cannot change
    # is the same table for the C and for _render_head's Python loop.
    from proxy.exchange import _HOP, _RESPONSE_ACTIONS
    with pytest.raises(TypeError):
        _RESPONSE_ACTIONS[b"x-internal"] = _HOP  # type: ignore[index]


def test_an_exchange_gets_its_snapshot_s_limits_however_they_are_held() -> None:
    """new_exchange keeps the last Snapshot's limits (frozen, both); a
    snapshot of another kind, which could change, is read every time."""
    if PURE:
        pytest.skip("NOVAEDGE_PURE_PYTHON=1")
    from proxy import downstream as downstream_mod
    from proxy.config import parse_config
    from proxy.snapshot import compile_snapshot
    down = _down(100, 32768)
    stand_in = down.node.snapshot
    first = stand_in.config.limits
    assert downstream_mod._new_exchange(down).limits is first
    stand_in.config.limits = other = types.SimpleNamespace(max_headers=1, max_header_bytes=10)
    assert downstream_mod._new_exchange(down).limits is other   # the same stand-in, changed
    for n in (10, 20, 10):
        snap = compile_snapshot(parse_config({"limits": {"max_headers": n}}))
        down.node.snapshot = snap
        for _ in range(2):
            ex = downstream_mod._new_exchange(down)
            assert ex.limits is snap.config.limits and ex.limits.max_headers == n
