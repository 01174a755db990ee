"""proxy/_request.c's Downstream.data_received: a read that is exactly one
plain GET/HEAD head, on a connection at rest, is recognised in C, which makes
llhttp's callbacks itself. Two things must hold:

- the recogniser accepts only heads that llhttp parses the same way: for
  every head it accepts, a real httptools parser makes exactly the callbacks
  (and its getters give the version, method and keep-alive) that the C
  makes, and is between messages afterwards;
- a connection fed through the C ends in the same state as one fed through
  the Python data_received and llhttp: every slot, every exchange and
  context, the node's counters, the bytes written.
"""
from __future__ import annotations

import contextlib
import gc
import os
import sys
from typing import Any, Iterator

import httptools
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.downstream import Downstream
from tests.unit.test_request_head_c import LIMITS, activations_seen, make_down, make_node, messages, state

PURE = os.environ.get("NOVAEDGE_PURE_PYTHON") == "1"
pytestmark = pytest.mark.skipif(PURE, reason="NOVAEDGE_PURE_PYTHON=1")

if not PURE:
    from proxy import _request  # type: ignore[attr-defined]

BROWSER = (b"GET /index.html?q=1 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
           b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)\r\n"
           b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
           b"Accept-Language: en-US,en;q=0.9\r\nAccept-Encoding: gzip, deflate, br\r\n"
           b"Sec-Ch-Ua: \"Chromium\";v=\"120\"\r\nSec-Fetch-Mode: navigate\r\nCache-Control: max-age=0\r\n\r\n")
MINIMAL = b"GET /tiny HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"


def test_the_c_version_is_built_and_used() -> None:
    assert Downstream.data_received is not Downstream._data_received_py, \
        "proxy/_request.c was not built (no C compiler?)"  # type: ignore[attr-defined]
    assert type(Downstream.data_received).__name__ == "method_descriptor"
    for head in (MINIMAL, BROWSER, b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n"):
        down = make_down(make_node({}, answer=False), False, None)
        before = _request.fast_count()
        down.data_received(head)
        assert _request.fast_count() == before + 1, head
        ex = down.node.dispatched[0]  # type: ignore[attr-defined]
        assert ex.body_complete and down.parsed == 1 and down.parsing is None
        assert ex.names == [line.split(b":")[0] for line in head.split(b"\r\n")[1:-2]]


# -- the recogniser against llhttp ------------------------------------------------------

class Recorder:
    """The callbacks a real httptools parser makes, with its getters at headers-complete."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []
        self.parser = httptools.HttpRequestParser(self)

    def on_message_begin(self) -> None:
        self.calls.append(("begin",))

    def on_url(self, url: bytes) -> None:
        if self.calls and self.calls[-1][0] == "url":
            url = self.calls.pop()[1] + url   # type: ignore[operator]
        self.calls.append(("url", url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self.calls.append(("header", name, value))

    def on_headers_complete(self) -> None:
        p = self.parser
        self.calls.append(("headers_complete", p.get_http_version(), p.get_method(), p.should_keep_alive()))

    def on_body(self, body: bytes) -> None:
        self.calls.append(("body", body))

    def on_message_complete(self) -> None:
        self.calls.append(("complete",))


def llhttp_sees(data: bytes) -> object:
    r = Recorder()
    try:
        r.parser.feed_data(data)
    except httptools.HttpParserError as e:
        return ("error", type(e).__name__, r.calls)
    # between messages: the next request parses as one on its own would
    nxt = len(r.calls)
    try:
        r.parser.feed_data(MINIMAL)
    except httptools.HttpParserError as e:
        return ("error after", type(e).__name__, r.calls)
    if r.calls[nxt:] != llhttp_alone(MINIMAL):
        return ("next request differs", r.calls[nxt:])
    return r.calls[:nxt]


def llhttp_alone(data: bytes) -> list[tuple[object, ...]]:
    r = Recorder()
    r.parser.feed_data(data)
    return r.calls


def c_sees(data: bytes) -> object:
    got = _request.scan(data)
    if got is None:
        return None
    method, target, fields = got
    return ([("begin",), ("url", target)] + [("header", n, v) for n, v in fields]
            + [("headers_complete", "1.1", method.encode(), True), ("complete",)])


def check(data: bytes) -> bool:
    """The C's reading of `data`, if it takes it, is llhttp's; True if taken."""
    mine = c_sees(data)
    if mine is not None:
        assert llhttp_sees(data) == mine, data
    return mine is not None


tchars = "!#$%&'*+-.^_`|~" + "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
odd = ["\x00", "\x7f", "\x80", "\xff", "\r", "\n", " ", "\t", "\x01", '"', "(", ")", ",", "/", ":",
       ";", "<", "=", ">", "?", "@", "[", "\\", "]", "{", "}"]
names = st.sampled_from(["Host", "Accept", "User-Agent", "X-A", "x_y", "Cookie", "Content-Length",
                         "Transfer-Encoding", "Connection", "Proxy-Connection", "Upgrade", "CONNECTION",
                         "content-length", "Keep-Alive", "TE", "Expect", "Trailer", "Via"]) \
    | st.text(st.sampled_from(list(tchars)), min_size=1, max_size=8) \
    | st.text(st.sampled_from(list(tchars[:20]) + odd), min_size=0, max_size=4)
value_chars = st.sampled_from([chr(c) for c in range(0x21, 0x7f)] * 3 + [" ", "\t"] * 4 + odd)
values = st.sampled_from(["*/*", "gzip, deflate", "a.example", "1", "close", "chunked", "keep-alive",
                          "0", "-1", "h2c", "100-continue"]) | st.text(value_chars, max_size=12)
seps = st.sampled_from([": ", ": ", ":", ":\t", ":  ", " :", ": \t"])
eols = st.sampled_from(["\r\n"] * 12 + ["\n", "\r", "\r\r\n", " \r\n", "\r\n "])
targets = st.sampled_from(["/", "/a", "/a/b?c=d&e", "/%41", "/%zz", "/a#f", "*", "//x", "/?", "http://h/p",
                           "/a b", "/caf\xe9", "/a\tb", "/~user/x.y;p=1"]) \
    | st.text(st.sampled_from(list("abc/?%#:@!$&'()*+,;=-._~[]{}|\\^`\"<> ") + ["\x7f", "\x80", "\x00"]),
              max_size=10).map(lambda s: "/" + s)


clean_names = st.sampled_from(["Host", "Accept", "User-Agent", "X-A", "x_y", "Cookie", "Expect", "TE", "Via"]) \
    | st.text(st.sampled_from(list(tchars)), min_size=1, max_size=8)
clean_values = st.text(st.sampled_from([chr(c) for c in range(0x21, 0x7f)] * 3 + [" ", "\t"]), min_size=1,
                       max_size=12).map(lambda v: v.strip(" \t") or "v")
clean_targets = st.text(st.sampled_from(list("abc/?%:@!$&'()*+,;=-._~")), max_size=10).map(lambda s: "/" + s)


@st.composite
def heads(draw: Any) -> bytes:
    """Heads in the C's subset, near it, and off it: each part from its clean
    strategy unless this head is a noisy one, then from the wider one."""
    noisy = draw(st.booleans())

    def part(clean: Any, wide: Any) -> Any:
        return draw(wide if noisy and draw(st.integers(0, 3)) == 0 else clean)

    method = part(st.sampled_from(["GET", "GET", "HEAD"]),
                  st.sampled_from(["get", "POST", "GETX", "PUT", "OPTIONS", "GET", "HEAD"]))
    sp1 = part(st.just(" "), st.sampled_from(["  ", "\t", " "]))
    sp2 = part(st.just(" "), st.sampled_from(["  ", "\t", " "]))
    version = part(st.just("HTTP/1.1"), st.sampled_from(["HTTP/1.0", "HTTP/2.0", "http/1.1", "HTTP/1.10",
                                                          "HTTP/1.1 ", "HTTP/1.1"]))
    head = f"{method}{sp1}{part(clean_targets, targets)}{sp2}{version}{part(st.just(chr(13) + chr(10)), eols)}"
    for _ in range(draw(st.integers(0, 6))):
        head += (f"{part(clean_names, names)}{part(st.sampled_from([': ', ':', ':  ', ':' + chr(9)]), seps)}"
                 f"{part(clean_values, values)}{part(st.just(chr(13) + chr(10)), eols)}")
    head += part(st.just("\r\n"), st.sampled_from(["\n", "", "\r", "\r\n\r\n", "\r\nX", "\r\n"]))
    data = head.encode("latin-1")
    if noisy and draw(st.integers(0, 4)) == 0:   # something after the head: a body, a second request
        data += draw(st.sampled_from([b"hi", MINIMAL, b"\r\n", b"G"]))
    if noisy and draw(st.integers(0, 3)) == 0:   # and a byte changed, dropped or added anywhere
        i = draw(st.integers(0, len(data)))
        b = bytes([draw(st.integers(0, 255))])
        data = draw(st.sampled_from([data[:i] + b + data[i + 1:], data[:i] + data[i + 1:], data[:i] + b + data[i:]]))
    return data


@settings(max_examples=3000, deadline=None)
@given(data=heads())
def test_what_the_c_recognises_llhttp_parses_the_same_way(data: bytes) -> None:
    check(data)


def test_the_common_heads_are_recognised() -> None:
    for data in (MINIMAL, BROWSER, b"HEAD /x HTTP/1.1\r\nHost: a\r\nAccept:*/*\r\nX-Empty-Not:\t1\r\n\r\n",
                 b"GET /a/b;p?q=%20&r=~ HTTP/1.1\r\nHost: [::1]:80\r\nCookie: a=b; c=\"d e\"\r\n\r\n",
                 b"GET / HTTP/1.1\r\n\r\n",   # no Host: llhttp does not care (head_complete does)
                 b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nX_Y: 1\r\nTE: trailers\r\n\r\n",
                 b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: %d\r\n" % (i, i) for i in range(64)) + b"\r\n",
                 b"GET / HTTP/1.1\r\nX-Long: " + b"v" * 5000 + b"\r\n\r\n"):
        assert check(data), data


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.0\r\nHost: a\r\n\r\n",                        # 1.0: keep-alive differs
    b"POST / HTTP/1.1\r\nHost: a\r\n\r\n",                       # other methods
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",   # fields llhttp acts on
    b"GET / HTTP/1.1\r\nHost: a\r\nproxy-connection: close\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: a \r\n\r\n",               # trailing whitespace
    b"GET / HTTP/1.1\r\nHost: a\r\nX:\r\n\r\n",                  # empty value
    b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",          # obs-fold
    b"GET / HTTP/1.1\nHost: a\n\n",                              # bare LF
    b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",                       # space before the colon
    b"GET / HTTP/1.1\r\nX: caf\xe9\r\n\r\n",                     # obs-text
    b"GET /#frag HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",                    # a leading empty line
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",   # pipelined
    b"GET / HTTP/1.1\r\nHost: a\r\n",                            # incomplete
    b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: %d\r\n" % (i, i) for i in range(65)) + b"\r\n",
])
def test_what_the_c_leaves_to_llhttp(data: bytes) -> None:
    assert _request.scan(data) is None


# -- the connection: C against the Python data_received ---------------------------------

@contextlib.contextmanager
def python_data_received() -> Iterator[None]:
    saved = Downstream.__dict__["data_received"]
    Downstream.data_received = Downstream._data_received_py  # type: ignore[attr-defined,method-assign]
    try:
        yield
    finally:
        Downstream.data_received = saved  # type: ignore[method-assign]


def compared(down: Downstream) -> tuple[Any, Any, Any]:
    return state(down)  # type: ignore[return-value]


def run_both(chunks: list[bytes], limits: dict[str, int], answer: bool, host_seen: bytes | None,
             ) -> int:
    """Both ways; how many heads the C took."""
    results, taken = [], 0
    for reference in (False, True):
        with python_data_received() if reference else contextlib.nullcontext(), activations_seen():
            down = make_down(make_node(limits, answer), False, host_seen)
            before = _request.fast_count()
            for chunk in chunks:
                down.data_received(chunk)
            if not reference:
                taken = _request.fast_count() - before
            results.append(compared(down))
    assert results[0][0] == results[1][0]   # the connection
    assert results[0][1] == results[1][1]   # the node and its hooks
    assert results[0][2] == results[1][2]   # the exchanges and contexts
    return taken


plain = st.tuples(st.sampled_from(["GET", "HEAD"]), st.sampled_from(["/", "/a?b=c", "/x/y", "/" + "p" * 100]),
                  st.sampled_from(["a.example", "A.Example:8080", "b.example", "bad host", "h_x", ""]),
                  st.lists(st.sampled_from([b"Accept: */*", b"User-Agent: t", b"X_Y: 1", b"Expect: 100-continue",
                                            b"X-Long: " + b"v" * 150, b"host: second.example",
                                            b"X-Forwarded-For: 203.0.113.9", b"Via: 1.0 other"]), max_size=6)
                  ).map(lambda t: (f"{t[0]} {t[1]} HTTP/1.1\r\nHost: {t[2]}\r\n".encode()
                                   + b"".join(f + b"\r\n" for f in t[3]) + b"\r\n"))
reads = st.lists(plain | messages(), min_size=1, max_size=5)


@settings(max_examples=500, deadline=None)
@given(reads=reads, limits=LIMITS, answer=st.booleans(),
       host_seen=st.sampled_from([None, b"a.example"]), joined=st.booleans())
def test_the_c_leaves_the_connection_as_python_does(reads: list[bytes], limits: dict[str, int], answer: bool,
                                                     host_seen: bytes | None, joined: bool) -> None:
    # one read per request (the fast path's case, when the last was answered), or all in one
    run_both([b"".join(reads)] if joined else reads, limits, answer, host_seen)


def test_most_plain_kept_alive_requests_take_the_c() -> None:
    # answered at once (404): each next read finds the connection at rest
    heads = [MINIMAL, BROWSER] * 3 + [b"HEAD / HTTP/1.1\r\nHost: a.example\r\nAccept: */*\r\n\r\n"]
    assert run_both(heads, {}, True, None) == len(heads)
    # small limits: the C calls on_header for every field and Python raises the 431
    assert run_both([BROWSER], {"max_headers": 4}, True, None) == 1
    assert run_both([BROWSER], {"max_header_bytes": 256}, True, None) == 1
    # not answered yet: the next read is pipelined, left to llhttp
    assert run_both([MINIMAL, MINIMAL], {}, False, None) == 1


def test_a_failing_callback_ends_the_read_as_llhttp_s_error_does() -> None:
    results = []
    for reference in (False, True):
        with python_data_received() if reference else contextlib.nullcontext():
            down = make_down(make_node({}, answer=False), False, None)
            logged: list[BaseException] = []
            down.node.log_internal_error = logged.append  # type: ignore[method-assign]

            def boom(d: Any, ex: Any) -> None:
                raise RuntimeError("dispatch failed")

            down.node.dispatch = boom  # type: ignore[method-assign]
            down.data_received(MINIMAL)
            down.data_received(MINIMAL)   # the connection is dead now: dropped
            written = b"".join(x for x in down.transport.log if isinstance(x, bytes))  # type: ignore[union-attr]
            results.append((compared(down), [repr(e) for e in logged], written))
    assert results[0] == results[1]
    assert results[0][1] == ["RuntimeError('dispatch failed')"]
    assert results[0][2].startswith(b"HTTP/1.1 500 ")


def test_a_changed_downstream_turns_the_c_off_and_back_on() -> None:
    down = make_down(make_node({}, answer=True), False, None)
    saved = Downstream.__dict__["on_url"]
    try:
        Downstream.on_url = Downstream._on_url_py  # type: ignore[attr-defined,method-assign]
        before = _request.fast_count()
        down.data_received(MINIMAL)
        assert _request.fast_count() == before and down.parsed == 1   # llhttp took it
    finally:
        Downstream.on_url = saved  # type: ignore[method-assign]
    down.data_received(MINIMAL)
    assert _request.fast_count() == before + 1 and down.parsed == 2


def test_no_reference_is_leaked() -> None:
    node = make_node({}, answer=True)
    down = make_down(node, False, None)
    distinct = [b"GET /%d HTTP/1.1\r\nHost: a.example\r\nX-N: %d\r\n\r\n" % (i, i) for i in range(600)]

    def run(n: int) -> None:
        for i in range(n):
            down.data_received(BROWSER if i % 2 else distinct[i % 600])   # cache hits and replacements
        node.dispatched.clear()  # type: ignore[attr-defined]
        down.transport.log.clear()  # type: ignore[union-attr]
        node.hooks.calls.clear()  # type: ignore[attr-defined]

    run(2000)
    gc.collect()
    blocks = sys.getallocatedblocks()
    run(4000)
    gc.collect()
    assert sys.getallocatedblocks() - blocks < 200


# -- the review's cases ----------------------------------------------------------------

def both(fn: Any) -> list[Any]:
    """fn() through the C, then through the Python data_received."""
    out = []
    for reference in (False, True):
        with python_data_received() if reference else contextlib.nullcontext():
            out.append(fn())
    return out


def test_a_connection_close_in_a_trailer_leaves_llhttp_closed() -> None:
    # llhttp reads Connection in trailer fields too: after this message it takes
    # no other, though the head said keep-alive; the C must not take the next
    def run() -> tuple[int, bool]:
        node = make_node({}, answer=False)
        down = make_down(node, False, None)
        down.data_received(b"POST / HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n"
                           b"0\r\nConnection: close\r\n\r\n")
        down.response_finished(node.dispatched[0], close=False)  # type: ignore[attr-defined]
        down.data_received(MINIMAL)
        return len(node.dispatched), down.dead  # type: ignore[attr-defined]
    c, py = both(run)
    assert c == py == (1, True)


def test_a_head_over_a_feed_slice_is_bounded_by_its_raw_size() -> None:
    head = b"GET / HTTP/1.1\r\nHost: a.example\r\nX: " + b" " * 70000 + b"v\r\n\r\n"

    def run() -> bytes:
        down = make_down(make_node({}, answer=True), False, None)
        down.data_received(head)
        return b"".join(x for x in down.transport.log if isinstance(x, bytes)).split(b"\r\n")[0]  # type: ignore[union-attr]
    c, py = both(run)
    assert c == py and c.startswith(b"HTTP/1.1 431 ")


def test_a_base_exception_from_a_callback_is_llhttp_s_callback_error_too() -> None:
    import asyncio

    def run() -> tuple[object, bool]:
        node = make_node({}, answer=False)
        node.log_internal_error = lambda e: None  # type: ignore[method-assign]

        def boom(d: Any, ex: Any) -> None:
            raise asyncio.CancelledError()

        node.dispatch = boom  # type: ignore[method-assign]
        down = make_down(node, False, None)
        try:
            down.data_received(MINIMAL)
        except BaseException as e:
            return type(e).__name__, down.dead
        return None, down.dead
    c, py = both(run)
    assert c == py == (None, True)


def test_limits_that_replace_the_lists_while_read() -> None:
    # a contrived limits object whose look-up replaces the exchange's lists: the
    # C must read them after the limits (it held them borrowed: a use after free)
    import types
    node = make_node({}, answer=False)
    down = make_down(node, False, None)
    real = node.snapshot.config.limits

    class OddLimits:
        max_request_line = real.max_request_line
        max_header_bytes = real.max_header_bytes

        reads = 0

        @property
        def max_headers(self) -> int:
            OddLimits.reads += 1
            if OddLimits.reads == 1:   # the C's read, before any field
                ex = down.parsing
                assert ex is not None
                ex.headers, ex.names = [], []
                [bytearray(64) for _ in range(1000)]   # reuse the freed memory
            return 100

    node.snapshot = types.SimpleNamespace(  # type: ignore[assignment]
        config=types.SimpleNamespace(limits=OddLimits()),
        **{k: getattr(node.snapshot, k) for k in dir(node.snapshot) if not k.startswith("_") and k != "config"})
    before = _request.fast_count()
    down.data_received(b"GET / HTTP/1.1\r\nAccept: */*\r\nHost: a.example\r\nX-A: 1\r\n\r\n")
    assert _request.fast_count() == before + 1
    ex = node.dispatched[-1]  # type: ignore[attr-defined]
    assert ex.headers == [(b"accept", b"*/*"), (b"host", b"a.example"), (b"x-a", b"1")]
    assert ex.names == [b"Accept", b"Host", b"X-A"]


def test_a_replaced_feed_turns_the_c_off() -> None:
    down = make_down(make_node({}, answer=True), False, None)
    saved = Downstream.__dict__["_feed"]
    seen: list[bytes] = []
    try:
        Downstream._feed = lambda self, data: (seen.append(data), saved(self, data))  # type: ignore[method-assign]
        down.data_received(MINIMAL)
    finally:
        Downstream._feed = saved  # type: ignore[method-assign]
    assert seen == [MINIMAL] and down.parsed == 1


def test_limits_are_read_again_unless_they_are_a_frozen_limits() -> None:
    """The C keeps the last config.Limits' values (a frozen model); limits of
    any other kind, which could change, are read for every request."""
    import types
    node = make_node({}, answer=True)
    real = node.snapshot.config.limits
    mutable = types.SimpleNamespace(**real.model_dump())
    node.snapshot = types.SimpleNamespace(config=types.SimpleNamespace(limits=mutable))  # type: ignore[assignment]
    down = make_down(node, False, None)
    head = b"GET / HTTP/1.1\r\nHost: a.example\r\nAccept: */*\r\nX-A: 1\r\n\r\n"
    down.data_received(head)
    assert b"431" not in b"".join(d for d in down.transport.log if isinstance(d, bytes))  # type: ignore[union-attr]
    mutable.max_headers = 2
    down.data_received(head)   # three fields: one over
    assert b"431" in b"".join(d for d in down.transport.log if isinstance(d, bytes))  # type: ignore[union-attr]


def test_a_patched_getattribute_turns_the_c_off() -> None:
    # The C makes llhttp's callbacks itself only while Downstream finds them
    # the generic way; with a __getattribute__ on the class, httptools' getattr
    # (and so the patch) sees every callback.
    seen: list[bytes] = []
    real_url = Downstream.__dict__["on_url"]

    def getattribute(self: Downstream, name: str) -> Any:
        if name == "on_url":
            def on_url(url: bytes) -> Any:
                seen.append(url)
                return real_url.__get__(self)(url)
            return on_url
        return object.__getattribute__(self, name)

    Downstream.__getattribute__ = getattribute  # type: ignore[method-assign]
    try:
        down = make_down(make_node({}, answer=True), False, None)
        down.data_received(MINIMAL)
    finally:
        del Downstream.__getattribute__
    assert seen == [b"/tiny"]
