"""proxy/_response.c's response parser callbacks of Exchange (on_message_begin,
on_status, on_headers_complete with _render_head, on_body, on_message_complete)
must write the bytes the Python methods (Exchange._<name>_py) write, raise what
they raise and leave the exchange, its context and the node exactly as they
do: here a real httptools parser feeds both the same random responses, split
at random points, one parser calling the exchange's (C) methods, the other a
stand-in whose callbacks are the exchange's Python methods."""
from __future__ import annotations

import copy
import os
import sys
import types
from typing import Any

import httptools
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy import exchange as exchange_mod
from proxy.context import RequestContext
from proxy.downstream import Downstream
from proxy.exchange import _RESPONSE_CALLBACKS, Exchange

PURE = os.environ.get("NOVAEDGE_PURE_PYTHON") == "1"
CALLBACKS = _RESPONSE_CALLBACKS + ("on_header",)


class _Up:
    """The upstream connection, as far as the callbacks go: on_body may close it."""

    def __init__(self) -> None:
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


def _exchange(*, version: str = "1.1", method: str = "GET", keep_alive: bool = True,
              body_complete: bool = True, closing: bool = False, draining: bool = False,
              trusted: bool = False, debug: bool = False, wanted: bool = True, timer: bool = True,
              want_upgrade: bool = False, request_id: str = "r-1") -> Exchange:
    node = types.SimpleNamespace(
        via_header=b"Via: 1.1 novaedge\r\n", deadlines=set(), draining=draining,
        snapshot=types.SimpleNamespace(config=types.SimpleNamespace(debug_headers=debug, limits=None)),
        explain_wanted=lambda ex: wanted, explain=lambda ctx: "route=default backend=b1")
    down = Downstream.__new__(Downstream)
    down.node = node  # type: ignore[assignment]
    down.trusted_peer = trusted
    down.closing = closing
    ex = Exchange(down)
    ex.version, ex.method, ex.keep_alive, ex.body_complete = version, method, keep_alive, body_complete
    ex.want_upgrade = want_upgrade
    ex.ctx = RequestContext(request_id, 0.0, method, "h.example", "/", "", version, "10.0.0.1", 4000,
                            None, [], "l")
    ex.last_read = 123.5
    ex.up = _Up()  # type: ignore[assignment]
    if timer:
        ex.timer = 99.0
        node.deadlines.add(ex)
    return ex


def _parser(ex: Exchange, python: bool) -> httptools.HttpResponseParser:
    """The exchange's parser: its own (C) methods, or its Python ones."""
    if not python:
        return httptools.HttpResponseParser(ex)
    stand_in = types.SimpleNamespace(**{n: getattr(ex, f"_{n}_py") for n in CALLBACKS})
    return httptools.HttpResponseParser(stand_in)


def _state(ex: Exchange) -> dict[str, object]:
    s: dict[str, object] = {}
    for name in Exchange.__slots__:
        v = getattr(ex, name, "<unset>")
        if name == "resp_parser":
            v = type(v).__name__
        elif name == "down":
            v = (getattr(v, "closing", "<unset>"), getattr(v, "trusted_peer", "<unset>"))
        elif name == "node":
            deadlines = getattr(v, "deadlines", ())
            v = (ex in deadlines, len(deadlines), getattr(v, "draining", "<unset>"))
        elif name == "up":
            v = v.closed if isinstance(v, _Up) else v
        elif name == "ctx" and isinstance(v, RequestContext):
            v = tuple(getattr(v, k, "<unset>") for k in RequestContext.__slots__)
        elif isinstance(v, (list, set, bytearray)):
            v = (type(v).__name__, list(v) if not isinstance(v, set) else sorted(map(repr, v)))
        s[name] = v
    return s


def _error(e: BaseException) -> tuple[object, ...]:
    c = e.__context__
    return (type(e).__name__, str(e), type(c).__name__ if c is not None else None, str(c))


def _feed(ex: Exchange, pieces: list[bytes]) -> list[object]:
    """Feed as Exchange.upstream_data does (one read at a time, `out` written
    after each); what each read gave and the state after it."""
    log: list[object] = []
    for piece in pieces:
        try:
            ex.resp_parser.feed_data(piece)  # type: ignore[union-attr]
        except httptools.HttpParserUpgrade as e:
            log.append(("upgrade", e.args))
        except httptools.HttpParserError as e:
            log.append(_error(e))
        else:
            log.append("ok")
        log.append(b"".join(getattr(ex, "out", [b"<unset>"])))
        log.append(_state(ex))
        if log[-3] != "ok":
            break
        if hasattr(ex, "out"):
            ex.out = type(ex.out)()   # flushed; an odd list type stays odd for the next piece
        ex.head_unflushed = False
    return log


def _both(pieces: list[bytes], **kw: Any) -> tuple[list[object], list[object]]:
    runs = []
    for python in (False, True):
        ex = _exchange(**kw)
        ex.resp_parser = _parser(ex, python)
        runs.append(_feed(ex, pieces))
    return runs[0], runs[1]


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])] or [b""]


# -- random responses -----------------------------------------------------------

field_names = st.sampled_from([b"Server", b"Date", b"Content-Type", b"Connection", b"Keep-Alive",
                               b"X-Thing", b"TE", b"Trailer", b"Proxy-Connection", b"Upgrade",
                               b"Set-Cookie", b"content-type", b"Proxy-Authenticate", b"Via"]) \
    | st.text("abcxyzXY-0123", min_size=1, max_size=12).map(str.encode)
field_values = st.sampled_from([b"keep-alive", b"close", b"x-thing", b" Keep-Alive ,\tTE", b"x-thing, close",
                                b"", b"text/plain", b"upgrade", b"Upgrade, keep-alive", b"a=b; Path=/",
                                b"nginx/1.22.1", b"timeout=5"]) \
    | st.text("abc XYZ,;=/-09\t", max_size=30).map(lambda s: s.strip().encode())
fields = st.lists(st.tuples(field_names, field_values), max_size=6)
reasons = st.sampled_from(["OK", "", "Not Found", "Custom Reason", "caf\xe9"]) | st.text("abc XYZ", max_size=12)


def _head_bytes(http: str, status: int, reason: str | None, fl: list[tuple[bytes, bytes]]) -> bytes:
    line = f"HTTP/{http} {status}" + ("" if reason is None else " " + reason)
    return line.encode("latin-1") + b"\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in fl) + b"\r\n"


@st.composite
def responses(draw: Any) -> bytes:
    http = draw(st.sampled_from(["1.1", "1.1", "1.0"]))
    out = b""
    for _ in range(draw(st.integers(0, 2))):   # interim responses first
        status = draw(st.sampled_from([100, 102, 103]))
        out += _head_bytes(http, status, draw(st.none() | reasons), draw(fields))
    status = draw(st.sampled_from([200, 200, 201, 204, 206, 301, 304, 404, 500, 503, 599, 101, 299, 999]))
    fl = draw(fields)
    framing = draw(st.sampled_from(["cl", "chunked", "close", "none"]))
    body = draw(st.binary(max_size=40))
    if status == 101:
        fl = fl + [(b"Upgrade", b"websocket"), (b"Connection", b"Upgrade")]
        return out + _head_bytes(http, status, draw(st.none() | reasons), fl) + body
    if framing == "cl":
        fl = fl + [(draw(st.sampled_from([b"Content-Length", b"content-length"])), b"%d" % len(body))]
    elif framing == "chunked":
        fl = fl + [(b"Transfer-Encoding", b"chunked")]
        sizes = draw(st.lists(st.integers(1, 10), max_size=4))
        chunks, i = [], 0
        for n in sizes:
            chunks.append(b"%x\r\n%b\r\n" % (len(body[i:i + n]), body[i:i + n]))
            i += n
        trailer = draw(st.sampled_from([b"", b"X-Trailer: 1\r\n"]))
        body = b"".join(c for c in chunks if not c.startswith(b"0\r\n")) + b"0\r\n" + trailer + b"\r\n"
    elif framing == "none":
        body = b""
    fl = draw(st.permutations(fl))
    out += _head_bytes(http, status, draw(st.none() | reasons), fl) + body
    if draw(st.integers(0, 5)) == 0:   # a second response: _ExtraResponse
        out += b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
    return out


@settings(max_examples=800, deadline=None)
@given(data=responses(), cuts=st.lists(st.integers(0, 10_000), max_size=6),
       version=st.sampled_from(["1.1", "1.1", "1.0"]), method=st.sampled_from(["GET", "GET", "HEAD", "POST"]),
       keep_alive=st.booleans(), body_complete=st.booleans(), closing=st.booleans(),
       draining=st.booleans(), trusted=st.sampled_from([False, False, True]),
       debug=st.sampled_from([False, False, False, True]), wanted=st.booleans(), timer=st.booleans(),
       want_upgrade=st.booleans())
def test_the_c_callbacks_match_the_python_ones(data, cuts, version, method, keep_alive, body_complete, closing,
                                               draining, trusted, debug, wanted, timer, want_upgrade) -> None:
    c, py = _both(_split(data, cuts), version=version, method=method, keep_alive=keep_alive,
                  body_complete=body_complete, closing=closing, draining=draining, trusted=trusted, debug=debug,
                  wanted=wanted, timer=timer, want_upgrade=want_upgrade)
    assert c == py


def test_a_plain_response_is_rendered_as_expected() -> None:
    """An anchor for the comparisons: what both give for the everyday response."""
    data = b"HTTP/1.1 200 OK\r\nServer: s\r\nConnection: keep-alive\r\nContent-Length: 3\r\n\r\nok\n"
    c, py = _both([data[:30], data[30:]])
    assert c == py
    assert c[0] == c[3] == "ok"
    assert c[1] == b""
    assert c[4] == (b"HTTP/1.1 200 OK\r\nServer: s\r\nContent-Length: 3\r\nVia: 1.1 novaedge\r\n"
                    b"X-Request-Id: r-1\r\n\r\nok\n")
    state = c[5]
    assert state["resp_complete"] is True and state["resp_keep_alive"] is True
    assert state["resp_close_after"] is False and state["timer"] == 0.0
    assert state["node"][0] is False   # the deadline was dropped


@pytest.mark.parametrize("data,kw", [
    (b"HTTP/1.1 200 \r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", {"version": "1.0"}),
    (b"HTTP/1.0 404 Not Found\r\n\r\nbody until close", {}),
    (b"HTTP/1.1 777\r\nContent-Length: 0\r\n\r\n", {"keep_alive": False}),
    (b"HTTP/1.1 204 No Content\r\n\r\n", {"method": "HEAD", "body_complete": False}),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiHTTP/1.1 200 OK\r\n\r\n", {}),
    (b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", {}),
    (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\nxx", {"want_upgrade": True}),
    (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n", {}),
    (b"HTTP/1.1 200 OK\r\nConnection: x-thing\r\nX-Thing: 1\r\nContent-Length: 0\r\n\r\n", {}),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", {"trusted": True}),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", {"debug": True, "wanted": False}),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", {"request_id": "r-\xe9"}),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", {"request_id": "r-\udc80"}),   # .encode() raises
    (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\nabcde", {}),   # a body on a 304: closed
])
def test_the_cases_left_to_python_and_the_odd_ones(data, kw) -> None:
    c, py = _both([data], **kw)
    assert c == py


def _one(ex_kw: dict[str, Any], set_up: Any, data: bytes) -> list[object]:
    """Both versions on one response, each exchange first changed by set_up(ex)."""
    runs = []
    for python in (False, True):
        ex = _exchange(**ex_kw)
        set_up(ex)
        ex.resp_parser = _parser(ex, python)
        runs.append(_feed(ex, [data[:20], data[20:]]))
        # and in one piece: the head's state as set_up left it (a head cut at
        # byte 20 gets its out list reset before on_headers_complete)
        ex = _exchange(**ex_kw)
        set_up(ex)
        ex.resp_parser = _parser(ex, python)
        runs.append(_feed(ex, [data]))
    assert runs[0] == runs[2] and runs[1] == runs[3]
    return runs[0]


class _Str(str):
    pass


class _List(list):  # type: ignore[type-arg]
    pass


class _Down(Downstream):
    __slots__ = ()

    def keep_alive_after(self, ex: Exchange) -> bool:
        return False


@pytest.mark.parametrize("name,value", [
    ("resp_reason", bytearray()), ("resp_reason", 0), ("version", _Str("1.1")), ("timer", 5),
    ("body_complete", 1), ("resp_close_after", 0), ("out", _List()), ("resp_headers", ()),
    ("keep_alive", 1), ("resp_complete", 0), ("resp_no_body", 0), ("resp_out_chunked", 1), ("ctx", None),
    ("resp_status", 200.0),
])
def test_odd_types_in_the_exchange_go_to_python(name, value) -> None:
    data = b"HTTP/1.1 200 Fine\r\nServer: s\r\nContent-Length: 4\r\n\r\nbody"
    _one({}, lambda ex: setattr(ex, name, copy.copy(value)), data)
    chunked = b"HTTP/1.1 200 Fine\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nbody\r\n0\r\n\r\n"
    _one({}, lambda ex: setattr(ex, name, copy.copy(value)), chunked)


def test_odd_types_in_the_context_down_and_node_go_to_python() -> None:
    data = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
    for set_up in (lambda ex: setattr(ex.ctx, "method", _Str("HEAD")),
                   lambda ex: setattr(ex.ctx, "request_id", _Str("r-2")),
                   lambda ex: setattr(ex.ctx, "bytes_out", 1.5),
                   lambda ex: setattr(ex.down, "trusted_peer", 0),
                   lambda ex: setattr(ex.down, "closing", 0),
                   lambda ex: setattr(ex.down, "__class__", _Down),   # its own keep_alive_after
                   lambda ex: setattr(ex.node, "draining", None),
                   lambda ex: setattr(ex.node, "via_header", bytearray(b"Via: x\r\n")),
                   lambda ex: setattr(ex.node.snapshot.config, "debug_headers", 0),
                   # reads that fail: Python raises after its first changes, and so must the C
                   lambda ex: delattr(ex.down, "trusted_peer"),
                   lambda ex: delattr(ex.node, "via_header"),
                   lambda ex: delattr(ex.node.snapshot.config, "debug_headers"),
                   lambda ex: delattr(ex.node, "deadlines"),
                   lambda ex: delattr(ex.node, "draining"),
                   lambda ex: delattr(ex.ctx, "request_id"),
                   lambda ex: delattr(ex, "out"),
                   lambda ex: setattr(ex, "ctx", types.SimpleNamespace(**{
                       k: getattr(ex.ctx, k) for k in RequestContext.__slots__}))):
        _one({}, set_up, data)


def test_a_node_whose_deadlines_are_not_a_set() -> None:
    class Deadlines(set):  # type: ignore[type-arg]
        discarded = 0

        def discard(self, item: object) -> None:
            type(self).discarded += 1
            super().discard(item)

    def set_up(ex: Exchange) -> None:
        ex.node.deadlines = Deadlines(ex.node.deadlines)  # type: ignore[misc]

    _one({}, set_up, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert Deadlines.discarded == 4   # each version, fed in two pieces and in one


def test_an_exchange_subclass_goes_to_python() -> None:
    class Sub(Exchange):
        __slots__ = ()

        def _render_head(self, interim: bool) -> bytes:
            return b"sub:" + super()._render_head(interim)

    ex = _exchange()
    ex.__class__ = Sub
    ex.resp_parser = httptools.HttpResponseParser(ex)
    log = _feed(ex, [b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"])
    assert log[0] == "ok" and log[1].startswith(b"sub:HTTP/1.1 200 OK\r\n")


def test_replaced_python_methods_are_called(monkeypatch) -> None:
    """A _render_head, _clear_timer or keep_alive_after replaced at run time
    (a test's patch) is called, not bypassed by the C."""
    data = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    calls: list[str] = []
    render, clear, keep = Exchange._render_head, Exchange._clear_timer, Downstream.keep_alive_after

    def _render(self, interim):
        calls.append("render")
        return render(self, interim)

    def _clear(self):
        calls.append("clear")
        clear(self)

    def _keep(self, ex):
        calls.append("keep")
        return False

    for name, cls, fn in (("_render_head", Exchange, _render), ("_clear_timer", Exchange, _clear),
                          ("keep_alive_after", Downstream, _keep)):
        with monkeypatch.context() as m:
            m.setattr(cls, name, fn)
            calls.clear()
            _one({}, lambda ex: None, data)
            assert len(calls) == 4 and len(set(calls)) == 1, calls   # each version, in two pieces and in one
    data = b"HTTP/1.1 200 OK\r\nServer: s\r\nContent-Length: 0\r\n\r\n"
    with monkeypatch.context() as m:   # no C field loop: Python's loop
        m.setattr(exchange_mod, "_response_fields", None)
        _one({}, lambda ex: None, data)
    with monkeypatch.context() as m:   # another one: it is called
        m.setattr(exchange_mod, "_response_fields", lambda fields: (b"X-Other: 1\r\n", True, False))
        out = b"".join(x for x in _one({}, lambda ex: None, data) if isinstance(x, bytes))
        assert out.startswith(b"HTTP/1.1 200 OK\r\nX-Other: 1\r\nVia")


def _calls(python: bool) -> list[object]:
    ex = _exchange()
    log: list[object] = []
    steps: list[tuple[str, tuple[object, ...]]] = [
        ("on_headers_complete", ()),                    # no parser: the assert
        ("on_status", (b"O",)), ("on_status", ("K",)), ("on_status", (bytearray(b"K"),)),
        ("on_body", (b"",)), ("on_body", ("text",)), ("on_body", (memoryview(b"ab"),)),
        ("on_body", (b"xyz",)), ("on_message_begin", ()), ("on_message_complete", ()),
    ]
    ex.resp_parser = None
    for status in (0, 101, 200, 10**30, -10**30):
        steps += [("set:resp_status", (status,)), ("set:resp_complete", (False,)), ("on_message_complete", ())]
    steps += [("on_message_begin", ()), ("set:resp_out_chunked", (True,)), ("on_body", (b"q" * 300,)),
              ("set:resp_no_body", (True,)), ("on_body", (b"q",)), ("on_body", (b"",))]
    for name, args in steps:
        if name.startswith("set:"):
            setattr(ex, name[4:], *args)
            continue
        try:
            log.append(("ok", getattr(Exchange, f"_{name}_py" if python else name)(ex, *args)))
        except Exception as e:
            log.append((type(e).__name__, str(e)))
        log.append(_state(ex))
    return log


def test_called_directly_with_odd_arguments() -> None:
    assert _calls(python=False) == _calls(python=True)


# -- the C is built and used -------------------------------------------------------

def test_the_c_version_is_built_and_used() -> None:
    if PURE:
        assert exchange_mod._c_response is None
        assert Exchange.on_headers_complete is Exchange._on_headers_complete_py
        return
    for name in _RESPONSE_CALLBACKS:
        assert getattr(Exchange, name) is not getattr(Exchange, f"_{name}_py"), \
            "proxy/_response.c was not built (no C compiler?)"
    # No Python frame runs for the everyday response: not the callbacks, not
    # _render_head, _clear_timer or keep_alive_after (inlined).
    ex = _exchange()
    ex.resp_parser = httptools.HttpResponseParser(ex)
    seen: list[str] = []

    def profile(frame, event, arg):
        if event == "call":
            seen.append(frame.f_code.co_name)

    sys.setprofile(profile)
    try:
        ex.resp_parser.feed_data(b"HTTP/1.1 200 OK\r\nServer: s\r\nContent-Length: 2\r\n\r\nhi")
    finally:
        sys.setprofile(None)
    assert [n for n in seen if not n.startswith("<")] == [], seen
    assert ex.resp_complete and ex.out[0].endswith(b"\r\n\r\n") and ex.out[1] == b"hi"


# Python code that runs inside the C's on_headers_complete (a keep_alive_after of
# a subclass, a deadlines set of a subclass) and changes the exchange: the C must
# see what Python sees (found by a review; each failed before the fix).
class _DownNewOut(Downstream):
    __slots__ = ()

    def keep_alive_after(self, ex: Exchange) -> bool:
        ex.out = []   # Python appends the head to the list bound before this ran
        return True


class _DownDelOut(Downstream):
    __slots__ = ()

    def keep_alive_after(self, ex: Exchange) -> bool:
        del ex.out
        return True


class _DownDelNoBody(Downstream):
    __slots__ = ()

    def keep_alive_after(self, ex: Exchange) -> bool:
        del ex.resp_no_body
        return True


class _ChangingDeadlines(set):  # type: ignore[type-arg]
    def discard(self, ex: Any) -> None:
        super().discard(ex)
        ex.version = "1.0"
        ex.body_complete = False
        ex.ctx.request_id = "changed"


class _DelDownDeadlines(set):  # type: ignore[type-arg]
    def discard(self, ex: Any) -> None:
        super().discard(ex)
        del ex.down


def _armed(deadlines: type) -> Any:
    def set_up(ex: Exchange) -> None:
        ex.timer = 5.0
        ex.node.deadlines = deadlines(ex.node.deadlines)
        ex.node.deadlines.add(ex)
    return set_up


@pytest.mark.parametrize("set_up", [
    lambda ex: setattr(ex.down, "__class__", _DownNewOut),
    lambda ex: setattr(ex.down, "__class__", _DownDelOut),
    lambda ex: setattr(ex.down, "__class__", _DownDelNoBody),
    _armed(_ChangingDeadlines),
    _armed(_DelDownDeadlines),
])
def test_python_code_run_inside_the_head_sees_and_changes_what_python_would(set_up) -> None:
    data = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
    runs = []
    for python in (False, True):
        ex = _exchange()
        set_up(ex)
        ex.resp_parser = _parser(ex, python)
        before = ex.out
        try:
            ex.resp_parser.feed_data(data)
            result: object = "ok"
        except Exception as e:
            result = _error(e)
        runs.append((result, list(before), list(getattr(ex, "out", ["<unset>"])), _state(ex)))
    assert runs[0] == runs[1]
