"""proxy/_request.c: Downstream.on_url, on_message_begin, on_headers_complete,
on_message_complete and Node.head_complete in C must do exactly what their
Python methods (the reference: _on_url_py, ..., Node._head_complete_py) do.
Here both get the same random request heads through real httptools parsers,
on two connections in the same state, and everything is compared after each
read: the errors raised, every slot of the connection, of each exchange and
of each RequestContext, the node's counters, what the hooks saw, the bytes
written."""
from __future__ import annotations

import collections
import contextlib
import gc
import itertools
import os
import types
from typing import Any, Iterator

import httptools
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from proxy import downstream as downstream_mod
from proxy import node as node_mod
from proxy.config import parse_config
from proxy.context import RequestContext
from proxy.downstream import Downstream, Reject, _StopParsing
from proxy.exchange import SENT, WAITING, Exchange
from proxy.node import Node, NodeHooks
from proxy.request import header_actions
from proxy.snapshot import compile_snapshot

PURE = os.environ.get("NOVAEDGE_PURE_PYTHON") == "1"
CALLBACKS = ("on_url", "on_message_begin", "on_headers_complete", "on_message_complete")


def test_the_c_version_is_built_and_used() -> None:
    if PURE:
        pytest.skip("NOVAEDGE_PURE_PYTHON=1")
    for name in CALLBACKS:
        assert getattr(Downstream, name) is not getattr(Downstream, f"_{name}_py"), \
            f"proxy/_request.c was not built (no C compiler?): {name}"
        assert type(getattr(Downstream, name)).__name__ == "method_descriptor", name
    assert Node.head_complete is not Node._head_complete_py  # type: ignore[attr-defined]
    assert type(Node.head_complete).__name__ == "method_descriptor"


@contextlib.contextmanager
def python_reference() -> Iterator[None]:
    """The Python methods in place of the C ones (a parser made inside binds them)."""
    saved = {n: Downstream.__dict__[n] for n in CALLBACKS}
    saved_hc = Node.__dict__["head_complete"]
    try:
        for n in CALLBACKS:
            setattr(Downstream, n, getattr(Downstream, f"_{n}_py"))
        Node.head_complete = Node._head_complete_py  # type: ignore[attr-defined,method-assign]
        yield
    finally:
        for n, v in saved.items():
            setattr(Downstream, n, v)
        Node.head_complete = saved_hc  # type: ignore[method-assign]


# -- a node, its hooks and a connection, without sockets ---------------------------

class Hooks(NodeHooks):
    header_actions = header_actions(frozenset({b"x-geo"}))

    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []

    def forward_headers(self, node: Node, ctx: RequestContext) -> list[tuple[bytes, bytes]]:
        self.calls.append((ctx.request_id, ctx.host, ctx.path, ctx.query))
        return [(b"X-Geo", ctx.host.encode() or b"-")]   # varies with the host: the memo too

    def geo_lookup(self, ip: str) -> Any:
        return ("geo", ip)


class Transport:
    def __init__(self) -> None:
        self.log: list[object] = []

    def write(self, data: bytes) -> None:
        self.log.append(bytes(data))

    def __getattr__(self, name: str) -> Any:
        if name in ("close", "abort", "write_eof", "pause_reading", "resume_reading"):
            return lambda *a: self.log.append(name)
        if name == "can_write_eof":
            return lambda: True
        raise AttributeError(name)


def make_node(limits: dict[str, int], answer: bool) -> Node:
    cfg = parse_config({"limits": limits, "trusted_proxies": ["10.1.0.0/16"]})
    node = Node.__new__(Node)
    node.snapshot = compile_snapshot(cfg, 1)
    node.hooks = Hooks()
    node._ids = itertools.count(250)   # ids with hex letters
    node._id_prefix = "ab1-"
    node.via_header = b"Via: 1.1 novaedge\r\n"
    clock = itertools.count()
    node.now = lambda: 100.0 + next(clock)  # type: ignore[method-assign]   # every reading shows
    node.deadlines = set()
    node.stats = {"requests": 0, "connections": 0, "errors": 0}
    node.started = 0
    node._finished = None
    node.geo = None
    node.draining = False
    node.connections = set()
    dispatched: list[Exchange] = []
    node.dispatched = dispatched  # type: ignore[attr-defined]

    def dispatch(down: Downstream, ex: Exchange) -> None:
        dispatched.append(ex)
        ex.max_body = 1 << 30
        if answer:   # a synchronous answer: the next pipelined request starts at once
            Node._answer(node, down, ex, 404, "no route for this host and path")
        else:   # as if forwarded: every other one with its response timer armed (as
            ex.state = SENT   # _attach does), the rest armed by request_done
            if len(dispatched) % 2 == 0:
                ex._arm_response_timer(node.now())

    node.dispatch = dispatch  # type: ignore[method-assign]
    return node


def make_down(node: Node, trusted: bool, host_seen: bytes | None) -> Downstream:
    listener = types.SimpleNamespace(name="127.0.0.1:8080", scheme=b"http")
    down = Downstream(node, listener)  # type: ignore[arg-type]
    down.transport = Transport()  # type: ignore[assignment]
    down.peer_ip = down.client_ip = "10.1.2.3" if trusted else "192.0.2.7"
    down.client_port = 5555
    down.trusted_peer = trusted
    down.last_active = 100.0
    if host_seen is not None:
        down.host_seen, down.host_name = host_seen, host_seen.decode().lower().partition(":")[0]
    down.parser = httptools.HttpRequestParser(down)
    return down


# -- everything compared, objects by structure ---------------------------------------

class Canon:
    """A comparable picture of a connection and all it reaches: exchanges and
    contexts by their order of first sight, so two runs compare by structure."""

    def __init__(self) -> None:
        self.objects: dict[int, int] = {}
        self.table: list[object] = []

    def __call__(self, x: object) -> object:
        if x is None or isinstance(x, (bool, int, float, str, bytes)):
            return (type(x).__name__, x)
        if isinstance(x, (Exchange, RequestContext)):
            if id(x) not in self.objects:
                self.objects[id(x)] = len(self.table)
                self.table.append(None)
                n = self.objects[id(x)]
                self.table[n] = (type(x).__name__, {s: self(getattr(x, s, "<unset>")) for s in type(x).__slots__})
            return ("obj", self.objects[id(x)])
        if isinstance(x, Downstream):
            return "<down>"
        if isinstance(x, Node):
            return "<node>"
        if isinstance(x, (list, tuple, collections.deque)):
            return (type(x).__name__, [self(v) for v in x])
        if isinstance(x, (set, frozenset)):
            return (type(x).__name__, sorted(repr(self(v)) for v in x))
        if isinstance(x, dict):
            return {repr(k): self(v) for k, v in x.items()}
        if isinstance(x, BaseModel):
            return repr(x)
        if isinstance(x, Transport):
            return ("transport", list(x.log))
        return type(x).__name__   # the parser, the listener, functions


def state(down: Downstream) -> object:
    c = Canon()
    node = down.node
    d = {s: c(getattr(down, s, "<unset>")) for s in Downstream.__slots__ if s not in ("node", "listener")}
    ids = repr(node._ids) if isinstance(node._ids, itertools.count) else type(node._ids).__name__
    n = (node.started, ids, dict(node.stats), c(node.hooks.calls),  # type: ignore[attr-defined]
         c(node.dispatched))  # type: ignore[attr-defined]
    return d, n, c.table


def error_of(e: BaseException) -> object:
    cause = e.__context__
    return (type(e).__name__, str(e), type(cause).__name__, str(cause),
            getattr(cause, "status", None), getattr(cause, "reason", None))


def feed(down: Downstream, chunks: list[bytes], via: str) -> list[object]:
    """Each read through data_received, or straight into the parser (its errors seen)."""
    out: list[object] = []
    for chunk in chunks:
        if via == "down":
            down.data_received(chunk)
            out.append("ok")
            continue
        try:
            down.parser.feed_data(chunk)  # type: ignore[union-attr]
            out.append("ok")
        except Exception as e:   # httptools' errors and the callbacks' (as their __context__)
            out.append(error_of(e))
            break   # llhttp cannot go on after an error
    return out


@contextlib.contextmanager
def activations_seen() -> Iterator[None]:
    """Downstream._activate (Python or C) with its calls noted in node.dispatched."""
    real = Downstream.__dict__["_activate"]

    def activate(self: Downstream, ex: Exchange, parsing: bool = False) -> None:
        self.node.dispatched.append(("activate", parsing))  # type: ignore[attr-defined]
        real(self, ex, parsing=parsing)

    Downstream._activate = activate  # type: ignore[method-assign]
    try:
        yield
    finally:
        Downstream._activate = real  # type: ignore[method-assign]


def run_both(msgs: bytes, cuts: list[int], limits: dict[str, int], trusted: bool, host_seen: bytes | None,
             answer: bool, via: str) -> None:
    cuts = sorted({c % (len(msgs) + 1) for c in cuts} | {0, len(msgs)})
    chunks = [msgs[a:b] for a, b in zip(cuts, cuts[1:]) if b > a]
    results = []
    for reference in (False, True):
        with python_reference() if reference else contextlib.nullcontext(), activations_seen():
            down = make_down(make_node(limits, answer), trusted, host_seen)
            got = feed(down, chunks, via)
            results.append((got, state(down)))
    assert results[0][0] == results[1][0]
    assert results[0][1][0] == results[1][1][0]   # the connection
    assert results[0][1][1] == results[1][1][1]   # the node and its hooks
    assert results[0][1][2] == results[1][1][2]   # the exchanges and contexts


# -- random request heads ------------------------------------------------------------

# (the common values repeated: most heads are valid, and reach head_complete)
methods = st.sampled_from(["GET"] * 6 + ["POST", "POST", "HEAD", "PUT", "OPTIONS", "CONNECT", "PATCH", "DELETE"])
versions = st.sampled_from(["1.1"] * 6 + ["1.0"] * 3 + ["2.0", "0.9"])
uri_chars = st.sampled_from(list("abcXYZ019-._~!$&'()*+,;=:@/%") + ["%41", "%zz", "\\", "#", "\xe9"])
paths = st.sampled_from(["/", "/", "/a/b", "/a/b", "/x?y=1&z", "/x?y=1&z", "/?", "/a?b?c", "/%41", "*",
                         "http://h.example/p?q=1",
                         "https://u@h.example/", "http://[::1]:81/x", "/caf\xe9"]) \
    | st.lists(uri_chars, max_size=12).map(lambda cs: "/" + "".join(cs)) \
    | (st.integers(40, 200) | st.sampled_from([60, 61, 62, 124, 125, 126])).map(
        lambda n: "/" + "a" * n + "?q")   # some over max_request_line, some at it
hosts = st.sampled_from(["a.example"] * 4 + ["A.Example:8080"] * 2 + ["b.example"] * 2
                        + [None, "[::1]:80", "bad host", "", "h_x"])
connections = st.sampled_from([None, None, "close", "keep-alive", "upgrade", "Keep-Alive, Upgrade"])
upgrades = st.sampled_from([None, None, "websocket", "h2c"])
extras = st.lists(st.sampled_from([("Accept", "*/*")] * 8 + [("User-Agent", "t")] * 8 + [
                                   ("X-Forwarded-For", "203.0.113.9, 10.1.0.5"),
                                   ("X-Forwarded-For", "junk"), ("Via", "1.0 other"), ("Expect", "100-continue"),
                                   ("Expect", "x"), ("X_Y", "1"), ("Content_Length", "3"), ("User-Agent", "t"),
                                   ("X-Geo", "spoofed"), ("X-Long", "v" * 150)]), max_size=4)
bodies = st.none() | st.tuples(st.just("cl"), st.binary(max_size=20)) \
    | st.tuples(st.just("chunked"), st.lists(st.binary(min_size=1, max_size=9), max_size=3))


@st.composite
def messages(draw: Any) -> bytes:
    method, version, path = draw(methods), draw(versions), draw(paths)
    lines = [f"{method} {path} HTTP/{version}"]
    host = draw(hosts)
    if host is not None:
        lines.append(f"Host: {host}")
        if draw(st.sampled_from([False] * 19 + [True])):
            lines.append(f"host: {host}")   # a second Host field
    conn, upgrade = draw(connections), draw(upgrades)
    if conn is not None:
        lines.append(f"Connection: {conn}")
    if upgrade is not None:
        lines.append(f"Upgrade: {upgrade}")
    lines += [f"{n}: {v}" for n, v in draw(extras)]
    body = draw(bodies)
    payload = b""
    if body is not None and body[0] == "cl":
        lines.append(f"Content-Length: {len(body[1])}")
        payload = body[1]
    elif body is not None:
        lines.append("Transfer-Encoding: chunked")
        payload = b"".join(b"%x\r\n%b\r\n" % (len(c), c) for c in body[1]) + b"0\r\n\r\n"
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload


LIMITS = st.fixed_dictionaries({"max_request_line": st.sampled_from([64, 128, 8192]),
                                "max_header_bytes": st.sampled_from([256, 32768]),
                                "max_headers": st.sampled_from([4, 100])})


@settings(max_examples=600, deadline=None)
@given(msgs=st.lists(messages(), min_size=1, max_size=4).map(b"".join), cuts=st.lists(st.integers(0, 2000), max_size=4),
       limits=LIMITS, trusted=st.sampled_from([False, False, False, True]),
       host_seen=st.sampled_from([None, None, b"a.example", b"A.Example:8080"]),
       answer=st.booleans(), via=st.sampled_from(["parser", "down"]))
def test_the_c_callbacks_match_the_python_ones(msgs, cuts, limits, trusted, host_seen, answer, via) -> None:
    run_both(msgs, cuts, limits, trusted, host_seen, answer, via)


@settings(max_examples=300, deadline=None)
@given(msgs=st.lists(st.tuples(st.sampled_from(["GET", "POST", "HEAD"]), st.sampled_from(["/", "/a?b=c", "/x/y"]),
                               st.sampled_from(["a.example", "b.example:81", "A.EXAMPLE"]),
                               st.sampled_from(["1.1", "1.0"])), min_size=1, max_size=6),
       answer=st.booleans(), cuts=st.lists(st.integers(0, 600), max_size=3))
def test_the_common_requests_match(msgs, answer, cuts) -> None:
    """The requests the C answers itself: most examples here (plain heads, one Host)."""
    raw = b"".join(f"{m} {p} HTTP/{v}\r\nHost: {h}\r\nAccept: */*\r\n\r\n".encode() for m, p, h, v in msgs)
    run_both(raw, cuts, {"max_request_line": 8192, "max_header_bytes": 32768, "max_headers": 100}, False, None,
             answer, "parser")


# -- the common case does not touch Python ---------------------------------------------

def test_the_common_case_never_calls_the_python_methods() -> None:
    if PURE:
        pytest.skip("NOVAEDGE_PURE_PYTHON=1")
    from proxy import _request  # type: ignore[attr-defined]

    def spy(*a: object, **k: object) -> None:
        raise AssertionError("the Python method was called")

    g = vars(downstream_mod)
    try:
        _request.setup_down(Downstream, Exchange, g, WAITING, spy, spy, spy, spy)
        stand_ins = tuple(object() for _ in range(12))
        _request.setup_node(Node, vars(node_mod), spy, Node.next_request_id, type(itertools.count()),
                            RequestContext, RequestContext(*stand_ins), stand_ins)
        down = make_down(make_node({"max_request_line": 64}, answer=True), False, None)
        at_limit = b"/a?" + b"b" * 61
        down.parser.feed_data(b"GET " + at_limit + b" HTTP/1.1\r\nHost: x.example\r\n\r\n"  # type: ignore[union-attr]
                              b"POST /p HTTP/1.1\r\nHost: x.example\r\nContent-Length: 2\r\n\r\nhi")
        assert [ex.ctx.path for ex in down.node.dispatched] == ["/a", "/p"]  # type: ignore[attr-defined]
        assert down.node.dispatched[0].ctx.query == "b" * 61  # type: ignore[attr-defined]
        assert down.parsed == 2 and down.node.started == 2 and len(at_limit) == 64
    finally:
        node_mod._setup_request_c(_request)
        _request.setup_down(Downstream, Exchange, g, WAITING, Downstream._on_url_py,  # type: ignore[attr-defined]
                            Downstream._on_message_begin_py, Downstream._on_headers_complete_py,  # type: ignore[attr-defined]
                            Downstream._on_message_complete_py)  # type: ignore[attr-defined]
    assert _request.new_context(*range(12)).request_id == 0


def test_the_template_context_equals_one_made_by_init() -> None:
    if PURE:
        pytest.skip("NOVAEDGE_PURE_PYTHON=1")
    from proxy import _request  # type: ignore[attr-defined]
    args = ("r1", 1.5, "GET", "h", "/p", "q", "1.1", "1.2.3.4", 80, None, [(b"host", b"h")], "l")
    a, b, c = _request.new_context(*args), _request.new_context(*args), RequestContext(*args)
    assert type(a) is RequestContext
    for s in RequestContext.__slots__:
        assert getattr(a, s) == getattr(c, s), s
        assert type(getattr(a, s)) is type(getattr(c, s)), s
    assert a.verdicts is not b.verdicts and a.headers is args[10]
    # falsy arguments too: a branch in __init__ (x or default) would show here
    falsy = ("", 0.0, "", "", "", "", "", "", 0, None, [], "")
    d, e = _request.new_context(*falsy), RequestContext(*falsy)
    for s in RequestContext.__slots__:
        assert getattr(d, s) == getattr(e, s) and type(getattr(d, s)) is type(getattr(e, s)), s


def test_a_template_that_does_not_fit_is_refused() -> None:
    if PURE:
        pytest.skip("NOVAEDGE_PURE_PYTHON=1")
    from proxy import _request  # type: ignore[attr-defined]
    stand_ins = tuple(object() for _ in range(12))
    tpl = RequestContext(*stand_ins)
    tpl.verdicts = {"x": 1}  # type: ignore[assignment]
    try:
        with pytest.raises(TypeError, match="verdicts"):
            _request.setup_node(Node, vars(node_mod), Node._head_complete_py, Node.next_request_id,  # type: ignore[attr-defined]
                                type(itertools.count()), RequestContext, tpl, stand_ins)
        tpl = RequestContext(*stand_ins)
        tpl.host = "x"   # an argument not kept as given
        with pytest.raises(TypeError, match="argument 3"):
            _request.setup_node(Node, vars(node_mod), Node._head_complete_py, Node.next_request_id,  # type: ignore[attr-defined]
                                type(itertools.count()), RequestContext, tpl, stand_ins)
        with pytest.raises(TypeError, match="not set up"):
            _request.new_context(*range(12))   # a failed setup leaves no half template
        node_mod._setup_request_c(_request)
        with pytest.raises(TypeError, match="does not fit"):
            _request.setup_node(Node, vars(node_mod), Node._head_complete_py, Node.next_request_id,  # type: ignore[attr-defined]
                                type(itertools.count()), RequestContext, object(), stand_ins)
        with pytest.raises(TypeError, match="not set up"):
            _request.new_context(*range(12))
        c, py = head_pair(HEAD)   # and head_complete is Python's meanwhile
        assert compare_head(c, py)[0] == "ok"
    finally:
        node_mod._setup_request_c(_request)


# -- odd inputs and states: the same as Python --------------------------------------------

def outcome(fn: Any, *args: Any, **kw: Any) -> object:
    try:
        return ("ok", fn(*args, **kw))
    except Exception as e:
        return ("raise", type(e).__name__, str(e), getattr(e, "status", None), getattr(e, "reason", None))


def pair(trusted: bool = False, answer: bool = False) -> tuple[Downstream, Downstream]:
    return (make_down(make_node({"max_request_line": 64}, answer), trusted, None),
            make_down(make_node({"max_request_line": 64}, answer), trusted, None))


def same(c: Downstream, py: Downstream) -> None:
    assert state(c) == state(py)


def test_odd_on_url_calls() -> None:
    class B(bytes):
        pass

    c, py = pair()
    for d in (c, py):
        Downstream.on_message_begin(d)
    for args, kw in [((b"/a",), {}), ((B(b"/b"),), {}), ((), {"url": b"/c"}), ((b"/d", b"x"), {}), ((), {}),
                     ((b"/" + b"x" * 70,), {})]:
        got = outcome(Downstream.on_url, c, *args, **kw)
        want = outcome(Downstream._on_url_py, py, *args, **kw)  # type: ignore[attr-defined]
        assert got == want, args
        same(c, py)
    assert c.parsing.url_len > 64   # the 414 came after the piece was counted, as in Python
    for d in (c, py):   # at the limit exactly, and one byte over
        d.parsing = Exchange(d)
        d.parsing.header_bytes = 1000   # (never != url_len from llhttp: the target comes first)
    for url in (b"/" + b"y" * 62, b"z", b"w"):
        assert outcome(Downstream.on_url, c, url) == outcome(Downstream._on_url_py, py, url)  # type: ignore[attr-defined]
        same(c, py)
    assert c.parsing.url_len == 65 and c.parsing.header_bytes == 1065
    for d in (c, py):
        d.parsing = None
    assert outcome(Downstream.on_url, c, b"/") == outcome(Downstream._on_url_py, py, b"/")  # type: ignore[attr-defined]
    for d in (c, py):
        d.parsing = Exchange(d)
        d.parsing.url_len = 2 ** 70   # beyond the C's integers
    assert outcome(Downstream.on_url, c, b"/") == outcome(Downstream._on_url_py, py, b"/")  # type: ignore[attr-defined]


def test_odd_states_of_the_other_callbacks() -> None:
    c, py = pair()
    for name in ("on_message_complete", "on_headers_complete"):   # no exchange: Python's assert
        got = outcome(getattr(Downstream, name), c)
        assert got == outcome(getattr(Downstream, f"_{name}_py"), py)
        assert got[1] == "AssertionError"
    for d in (c, py):
        d.dead = True
    got = outcome(Downstream.on_message_begin, c)
    assert got == outcome(Downstream._on_message_begin_py, py)  # type: ignore[attr-defined]
    assert got[1] == _StopParsing.__name__
    for d in (c, py):
        d.dead = 0   # falsy, not False: Python's way
    assert outcome(Downstream.on_message_begin, c) == outcome(Downstream._on_message_begin_py, py)  # type: ignore[attr-defined]
    same(c, py)
    for d in (c, py):
        d.parsed = 2.5   # not an int: += as Python does it
        d.current = None
    assert outcome(Downstream.on_message_complete, c) == outcome(Downstream._on_message_complete_py, py)  # type: ignore[attr-defined]
    same(c, py)
    assert c.parsed == 3.5
    for d in (c, py):
        Downstream._on_message_begin_py(d)  # type: ignore[attr-defined]
        del d.current   # an unset slot: Python's AttributeError
    got = outcome(Downstream.on_message_complete, c)
    assert got == outcome(Downstream._on_message_complete_py, py) and got[1] == "AttributeError"  # type: ignore[attr-defined]
    same(c, py)
    for d in (c, py):
        d.parser, d.current = None, None   # on_headers_complete's second assert
        Downstream._on_message_begin_py(d)  # type: ignore[attr-defined]
    assert outcome(Downstream.on_headers_complete, c) == outcome(Downstream._on_headers_complete_py, py)  # type: ignore[attr-defined]


def head_pair(raw: bytes, trusted: bool = False) -> tuple[Downstream, Downstream]:
    """Two connections whose exchange has its head parsed, up to head_complete."""
    downs = []
    for reference in (False, True):
        with python_reference() if reference else contextlib.nullcontext():
            d = make_down(make_node({}, answer=False), trusted, None)
            d.node.head_complete = lambda down, ex: None  # type: ignore[method-assign]
            d.parser.feed_data(raw)  # type: ignore[union-attr]
            del d.node.head_complete
            d.current = None
        downs.append(d)
    return downs[0], downs[1]


def last(d: Downstream) -> Exchange:
    return [x for x in d.node.dispatched if isinstance(x, Exchange)][-1]  # type: ignore[attr-defined]


def compare_head(c: Downstream, py: Downstream) -> object:
    got = outcome(Node.head_complete, c.node, c, last(c))
    want = outcome(Node._head_complete_py, py.node, py, last(py))  # type: ignore[attr-defined]
    assert got == want
    same(c, py)
    return got


HEAD = b"GET /a?b=1 HTTP/1.1\r\nHost: x.example\r\nX-Forwarded-For: 203.0.113.9\r\n\r\n"


def test_head_complete_of_a_trusted_peer_and_odd_arguments() -> None:
    assert compare_head(*head_pair(HEAD, trusted=True))[0] == "ok"
    c, py = head_pair(HEAD)
    assert compare_head(c, py)[0] == "ok"
    assert c.host_seen == b"x.example" and c.host_name == "x.example"
    ns = types.SimpleNamespace(down=1)
    assert outcome(Node.head_complete, c.node, c, ns) == outcome(Node._head_complete_py, py.node, py, ns)  # type: ignore[attr-defined]
    assert outcome(Node.head_complete, c.node, c) == outcome(Node._head_complete_py, py.node, py)  # type: ignore[attr-defined]
    ex_c, ex_py = last(c), last(py)
    assert outcome(Node.head_complete, c.node, down=c, ex=ex_c) == \
        outcome(Node._head_complete_py, py.node, down=py, ex=ex_py)  # type: ignore[attr-defined]
    same(c, py)


def test_head_complete_with_unset_slots_and_failing_hooks() -> None:
    c, py = head_pair(HEAD)
    for d in (c, py):
        del d.geo
    got = compare_head(c, py)
    assert got[1] == "AttributeError"
    c, py = head_pair(HEAD)
    for d in (c, py):
        d.node.hooks.forward_headers = lambda node, ctx: 1 / 0  # type: ignore[method-assign]
    assert compare_head(c, py)[1] == "ZeroDivisionError"
    c, py = head_pair(b"GET / HTTP/1.1\r\n\r\n")   # no Host: check_head's 400
    assert compare_head(c, py)[3] == 400


def test_head_complete_with_the_node_s_own_parts_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    """What head_complete calls is looked up as Python looks it up."""
    class Ctx(RequestContext):
        __slots__ = ()

    real_check = node_mod.check_head

    def check_flips_trust(ex: Exchange, known: bytes | None) -> tuple[bytes, bytes]:
        ex.down.trusted_peer = True   # (check_head never does: the C has Python's branch all the same)
        return real_check(ex, known)

    cases: list[tuple[str, Any]] = [
        ("RequestContext", Ctx), ("check_head", lambda ex, known: list(real_check(ex, known))),
        ("check_head", lambda ex, known: (*real_check(ex, known), 1)), ("check_head", lambda ex, known: 5),
        ("check_head", lambda ex, known: (bytearray(b"/q?x"), b"h.example")),
        ("check_head", check_flips_trust), ("split_host", lambda h: "split"),
    ]
    for name, value in cases:
        with monkeypatch.context() as m:
            m.setattr(node_mod, name, value)
            compare_head(*head_pair(HEAD))
    real_init = RequestContext.__init__

    def init(self: RequestContext, *args: Any) -> None:
        real_init(self, *args)
        self.region = "from a new __init__"

    with monkeypatch.context() as m:   # the template no longer fits: the type is called
        m.setattr(RequestContext, "__init__", init)
        compare_head(*head_pair(HEAD))
        c, py = head_pair(HEAD)
        compare_head(c, py)
        assert last(c).ctx.region == "from a new __init__"
    c, py = head_pair(HEAD)
    for d in (c, py):
        d.node.next_request_id = lambda: "own-id"  # type: ignore[method-assign]
    compare_head(c, py)
    c, py = head_pair(HEAD)
    for d in (c, py):
        d.node._ids = iter([7, 8])   # not a count: the method is called
        d.node._id_prefix = "\xe9-"
    compare_head(c, py)
    import builtins   # the method reads attributes only: a replaced built-in format changes neither version
    c, py = head_pair(HEAD)
    with monkeypatch.context() as m:
        m.setattr(builtins, "format", lambda n, f: "BFMT")
        compare_head(c, py)
    rid = last(c).ctx.request_id
    assert rid.startswith("ab1-") and int(rid[4:], 16) >= 1, rid
    c, py = head_pair(HEAD)
    for d in (c, py):
        d.node._ids = itertools.count(1.5)   # not an int: "%x" refuses it in both
    compare_head(c, py)
    for start in (0, 9, 10, 15, 16, 255, 4096, 2 ** 63 - 1, 2 ** 63, 2 ** 70):   # 2 ** 63: beyond the C's integers
        c, py = head_pair(HEAD)
        for d in (c, py):
            d.node._ids = itertools.count(start)
        compare_head(c, py)
        assert last(c).ctx.request_id == "ab1-" + format(start, "x")


def test_a_url_split_over_reads_and_a_bytes_subclass_target() -> None:
    class B(bytes):
        pass

    c, py = head_pair(HEAD)
    for d in (c, py):
        last(d).url = [B(b"/x?"), b"y"]
    assert compare_head(c, py)[0] == "ok"
    c, py = head_pair(HEAD)
    for d in (c, py):
        last(d).url = [B(b"/x?yz")]
    assert compare_head(c, py)[0] == "ok"
    assert last(c).ctx.query == "yz"


def test_no_reference_is_leaked() -> None:
    """Many requests through the C, good ones and refused ones: the memory
    blocks allocated do not grow (sys.getallocatedblocks sees a leaked str,
    bytes or float too, which gc.get_objects() does not)."""
    import sys
    down = make_down(make_node({}, answer=True), False, None)
    raw = b"GET /a?b HTTP/1.1\r\nHost: x.example\r\n\r\nHEAD /p HTTP/1.1\r\nHost: y.example:8\r\n\r\n"
    refused = [b"GET /" + b"a" * 100 + b" HTTP/1.1\r\nHost: x\r\n\r\n",   # 414 (on_url)
               b"GET /p HTTP/1.1\r\nHost: bad host\r\n\r\n",            # 400 (check_head)
               b"GET /p HTTP/1.1\r\n\r\n"]                                # 400: no Host

    def rounds(n: int) -> None:
        for _ in range(n):
            down.parser.feed_data(raw)  # type: ignore[union-attr]
        down.node.dispatched.clear()  # type: ignore[attr-defined]
        down.node.hooks.calls.clear()  # type: ignore[attr-defined]
        down.transport.log.clear()  # type: ignore[union-attr]
        for bad in refused:
            for _ in range(n // 10):
                d = make_down(make_node({"max_request_line": 64}, answer=True), False, None)
                with contextlib.suppress(httptools.HttpParserError):
                    d.parser.feed_data(bad)  # type: ignore[union-attr]
                d.parser = None   # the parser holds d's bound callbacks

    rounds(200)
    gc.collect()
    before = sys.getallocatedblocks()
    rounds(3000)
    gc.collect()
    assert sys.getallocatedblocks() - before < 200


def test_the_reject_of_a_long_target_is_python_s() -> None:
    raw = b"GET /" + b"a" * 100 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    run_both(raw, [50], {"max_request_line": 64}, False, None, False, "parser")
    down = make_down(make_node({"max_request_line": 64}, False), False, None)
    with pytest.raises(httptools.HttpParserCallbackError) as e:
        down.parser.feed_data(raw)  # type: ignore[union-attr]
    assert isinstance(e.value.__context__, Reject) and e.value.__context__.status == 414


def test_a_replaced_request_done_is_called_even_where_the_c_skips_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # The C does request_done's usual case itself (it would only set
    # body_complete); a request_done that is not Exchange's own is called.
    seen: list[str] = []
    real = Exchange.request_done

    def spy(self: Exchange) -> None:
        seen.append(self.method)
        real(self)

    for replaced in (False, True):
        if replaced:
            monkeypatch.setattr(Exchange, "request_done", spy)
        down = make_down(make_node({}, answer=False), False, None)
        down.data_received(b"GET /a HTTP/1.1\r\nHost: a.example\r\n\r\n")   # dispatched 1st: request_done arms
        down.current = None   # (as if answered) the next one is dispatched at once
        down.data_received(b"GET /b HTTP/1.1\r\nHost: a.example\r\n\r\n")   # 2nd: armed by dispatch, C skips
        ex = down.node.dispatched[-1]  # type: ignore[attr-defined]
        assert ex.body_complete and ex.timer > 0
        assert seen == (["GET", "GET"] if replaced else [])


def test_activate_is_called_as_python_calls_it() -> None:
    # on_headers_complete in C calls self._activate(ex, parsing=True) with the
    # keyword, as the Python method does: an _activate taking it only by
    # keyword works on both paths.
    def run(reference: bool) -> object:
        real = Downstream.__dict__["_activate"]
        seen: list[bool] = []

        def activate(self: Downstream, ex: Exchange, *, parsing: bool = False) -> None:
            seen.append(parsing)
            real(self, ex, parsing=parsing)

        Downstream._activate = activate  # type: ignore[method-assign]
        try:
            with python_reference() if reference else contextlib.nullcontext():
                down = make_down(make_node({}, False), False, None)
                down.parser.feed_data(b"GET /a HTTP/1.1\r\nHost: h.test\r\n\r\n")  # type: ignore[union-attr]
        finally:
            Downstream._activate = real  # type: ignore[method-assign]
        return seen

    assert run(True) == run(False) == [True]


def test_a_body_appended_during_dispatch_is_not_replayed(monkeypatch: pytest.MonkeyPatch) -> None:
    # _activate replays what waited for the exchange in the pipeline queue, and
    # only that: a body chunk held back during dispatch (still connecting) is
    # the exchange's to send, not the replay's.
    node = make_node({}, answer=False)
    replayed: list[bytes] = []
    monkeypatch.setattr(Exchange, "request_body", lambda self, chunk: replayed.append(chunk))
    inner = node.dispatch

    def dispatch(down: Downstream, ex: Exchange) -> None:
        inner(down, ex)
        ex.pending_body.append(b"held while connecting")

    node.dispatch = dispatch  # type: ignore[method-assign]
    down = make_down(node, False, None)
    down.data_received(b"GET /a HTTP/1.1\r\nHost: h.test\r\n\r\n")
    assert replayed == [] and node.dispatched[0].pending_body == [b"held while connecting"]  # type: ignore[attr-defined]
