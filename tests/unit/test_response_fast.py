"""proxy/_response.c's feed_fast: a read that is one whole plain response
(status line, fields, a Content-Length body, nothing more), on an exchange
whose llhttp parser has not been made yet (resp_parser is UNFED), is
recognised in C, which makes llhttp's callbacks on the exchange itself.

- the recogniser accepts only responses llhttp parses the same way: a real
  httptools parser makes exactly the callbacks (and its getters give the
  status and keep-alive) that the C makes, and ends the message at the
  read's last byte;
- an exchange fed through the C ends in the same state, with the same bytes
  out, as one whose parser is fed the same read; and a callback's error
  comes out as httptools' callback error.
"""
from __future__ import annotations

import gc
import os
import sys
from typing import Any

import httptools
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy import exchange as exchange_mod
from proxy.exchange import UNFED, Exchange
from tests.unit.test_fast_head import clean_names, names, seps, value_chars
from tests.unit.test_response_callbacks import _error, _exchange, _state, responses

PURE = os.environ.get("NOVAEDGE_PURE_PYTHON") == "1"
pytestmark = pytest.mark.skipif(PURE, reason="NOVAEDGE_PURE_PYTHON=1")

if not PURE:
    from proxy import _response  # type: ignore[attr-defined]

NGINX = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Fri, 27 Nov 2026 10:00:00 GMT\r\n"
         b"Content-Type: text/plain\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\nok\n")


def test_the_c_version_is_built_and_used() -> None:
    assert exchange_mod._feed_fast is _response.feed_fast, "proxy/_response.c was not built (no C compiler?)"
    ex = _exchange()
    ex.resp_parser = UNFED
    before = _response.fast_count()
    assert _response.feed_fast(ex, NGINX) is True
    assert _response.fast_count() == before + 1
    assert ex.resp_complete and ex.resp_status == 200 and ex.resp_parser is UNFED
    assert b"".join(ex.out).endswith(b"\r\n\r\nok\n")


# -- the recogniser against llhttp ------------------------------------------------------

class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []
        self.parser = httptools.HttpResponseParser(self)

    def on_message_begin(self) -> None:
        self.calls.append(("begin",))

    def on_status(self, reason: bytes) -> None:
        self.calls.append(("status", reason))

    def on_header(self, name: bytes, value: bytes) -> None:
        self.calls.append(("header", name, value))

    def on_headers_complete(self) -> None:
        self.calls.append(("headers_complete", self.parser.get_status_code(), self.parser.should_keep_alive()))

    def on_body(self, body: bytes) -> None:
        if self.calls[-1][0] == "body":
            body = self.calls.pop()[1] + body  # type: ignore[operator]
        self.calls.append(("body", body))

    def on_message_complete(self) -> None:
        self.calls.append(("complete",))


def llhttp_sees(data: bytes) -> object:
    r = Recorder()
    try:
        r.parser.feed_data(data)
    except httptools.HttpParserError as e:
        return ("error", type(e).__name__, r.calls)
    return r.calls


def c_sees(data: bytes) -> object:
    got = _response.scan(data)
    if got is None:
        return None
    status, reason, fields, body = got
    return ([("begin",), ("status", reason)] + [("header", n, v) for n, v in fields]
            + [("headers_complete", status, True)] + ([("body", body)] if body else []) + [("complete",)])


def check(data: bytes) -> bool:
    mine = c_sees(data)
    if mine is not None:
        assert llhttp_sees(data) == mine, data   # ("complete",) last: the message ends with the read
    return mine is not None


clean_values = st.text(st.sampled_from([chr(c) for c in range(0x21, 0x7f)] * 3 + [" ", "\t"]), min_size=1,
                       max_size=12).map(lambda v: v.strip(" \t") or "v")
framing_names = st.sampled_from(["Content-Length", "content-length", "CONTENT-LENGTH", "Connection",
                                 "Transfer-Encoding", "Upgrade", "Proxy-Connection", "Keep-Alive"])
framing_values = st.sampled_from(["keep-alive", "Keep-Alive", "close", "upgrade", "chunked", "3", "03", "+3",
                                  "3 ", "3,3", "-1", "0x3", "99999999999999999999", "1" * 18])


@st.composite
def plain_responses(draw: Any) -> bytes:
    """Responses in the C's subset, near it and off it."""
    noisy = draw(st.booleans())

    def part(clean: Any, wide: Any) -> Any:
        return draw(wide if noisy and draw(st.integers(0, 3)) == 0 else clean)

    version = part(st.just("HTTP/1.1"), st.sampled_from(["HTTP/1.0", "HTTP/2.0", "http/1.1", "HTTP/1.1 "]))
    status = part(st.sampled_from(["200", "201", "404", "500", "299", "599"]),
                  st.sampled_from(["204", "304", "100", "101", "199", "600", "999", "20", "2000", "abc"]))
    reason = part(st.sampled_from(["OK", "Not Found", "Custom  Reason"]),
                  st.sampled_from(["", " OK", "OK ", "caf\xe9", "O\tK", "O\rK"]) | st.text(value_chars, max_size=6))
    body = draw(st.binary(max_size=30))
    fl = [(part(clean_names, names), part(st.just(": "), seps), part(clean_values, st.text(value_chars, max_size=8)))
          for _ in range(draw(st.integers(0, 4)))]
    cl = draw(st.sampled_from(["Content-Length", "content-length"]))
    fl.append((cl, ": ", part(st.just(str(len(body))), framing_values)))
    if draw(st.booleans()):
        fl.append(("Connection", ": ", part(st.just("keep-alive"), framing_values)))
    if noisy and draw(st.integers(0, 3)) == 0:
        fl.append((draw(framing_names), ": ", draw(framing_values)))
    fl = draw(st.permutations(fl))
    eol = part(st.just("\r\n"), st.sampled_from(["\n", "\r", " \r\n", "\r\n"]))
    head = f"{version} {status} {reason}{eol}" + "".join(f"{n}{s}{v}\r\n" for n, s, v in fl) + "\r\n"
    data = head.encode("latin-1") + body
    if noisy and draw(st.integers(0, 3)) == 0:   # a byte changed, dropped or added anywhere
        i = draw(st.integers(0, len(data)))
        b = bytes([draw(st.integers(0, 255))])
        data = draw(st.sampled_from([data[:i] + b + data[i + 1:], data[:i] + data[i + 1:], data[:i] + b + data[i:]]))
    return data


@settings(max_examples=3000, deadline=None)
@given(data=plain_responses() | responses())
def test_what_the_c_recognises_llhttp_parses_the_same_way(data: bytes) -> None:
    check(data)


def test_the_common_responses_are_recognised() -> None:
    for data in (NGINX, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
                 b"HTTP/1.1 200 OK\r\nContent-Length: 16384\r\n\r\n" + b"x" * 16384,
                 b"HTTP/1.1 500 Internal Server Error\r\nconnection: Keep-Alive\r\ncontent-length: 2\r\n\r\nhi"):
        assert check(data), data


@pytest.mark.parametrize("data", [
    b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nh",                 # short: more to come
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi!",               # bytes after it
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nhi",
    b"HTTP/1.1 200 OK\r\n\r\nhi",                                     # close-delimited
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi",
    b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n",                    # no reason phrase
    b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nhi",
])
def test_what_the_c_leaves_to_llhttp(data: bytes) -> None:
    assert _response.scan(data) is None


# -- the exchange: C against llhttp ------------------------------------------------------

def run_both(data: bytes, **kw: Any) -> bool:
    """feed_fast against an httptools parser fed the same read, both calling
    the exchange's C callbacks; True if the C took it."""
    results = []
    for fast in (True, False):
        ex = _exchange(**kw)
        ex.resp_parser = UNFED if fast else httptools.HttpResponseParser(ex)
        taken = None
        try:
            taken = _response.feed_fast(ex, data) if fast else None
            if not taken:
                if fast:   # as upstream_data: llhttp's parser, made now
                    ex.resp_parser = httptools.HttpResponseParser(ex)
                ex.resp_parser.feed_data(data)  # type: ignore[union-attr]
            outcome: object = "ok"
        except httptools.HttpParserError as e:
            outcome = _error(e)[2:]   # the cause (httptools' own message differs)
        state = _state(ex)
        state["resp_parser"] = "parser"   # UNFED or one that parsed: the same to what follows
        results.append((taken if fast else None, outcome, b"".join(ex.out), state))
    assert results[0][1:] == results[1][1:]
    return bool(results[0][0])


@settings(max_examples=600, deadline=None)
@given(data=plain_responses() | responses(), version=st.sampled_from(["1.1", "1.1", "1.0"]),
       method=st.sampled_from(["GET", "GET", "HEAD", "POST"]), keep_alive=st.booleans(),
       body_complete=st.booleans(), closing=st.booleans(), draining=st.booleans(),
       trusted=st.sampled_from([False, False, True]), debug=st.sampled_from([False, False, False, True]),
       timer=st.booleans())
def test_the_c_leaves_the_exchange_as_llhttp_does(data, version, method, keep_alive, body_complete, closing,
                                                  draining, trusted, debug, timer) -> None:
    run_both(data, version=version, method=method, keep_alive=keep_alive, body_complete=body_complete,
             closing=closing, draining=draining, trusted=trusted, debug=debug, timer=timer)


def test_plain_responses_to_get_take_the_c() -> None:
    assert run_both(NGINX)
    assert run_both(NGINX, version="1.0", keep_alive=False, trusted=True)   # Python's on_headers_complete
    assert not run_both(NGINX, method="HEAD")


@pytest.mark.parametrize("name", ["on_message_begin", "on_status", "on_header", "on_headers_complete",
                                  "on_body", "on_message_complete"])
@pytest.mark.parametrize("exc", [ValueError, KeyboardInterrupt])
def test_a_failing_callback_is_httptools_callback_error(name: str, exc: type[BaseException]) -> None:
    real = Exchange.__dict__[name]

    def failing(self: Exchange, *args: object) -> None:
        raise exc(f"{name} refused")

    def raised(fast: bool) -> tuple[object, ...]:
        ex = _exchange()
        ex.resp_parser = UNFED if fast else httptools.HttpResponseParser(ex)
        with pytest.raises(httptools.HttpParserCallbackError) as e:
            if fast:
                _response.feed_fast(ex, NGINX)
            else:
                ex.resp_parser.feed_data(NGINX)  # type: ignore[union-attr]
        c = e.value.__context__
        return (type(c), str(c), e.value.__cause__, e.value.__suppress_context__, ex.resp_parser is UNFED)

    try:
        setattr(Exchange, name, failing)
        fast, slow = raised(True), raised(False)
    finally:
        setattr(Exchange, name, real)
    assert fast[:4] == slow[:4] == (exc, f"{name} refused", None, False)
    assert fast[4]   # UNFED back: the parser upstream_data makes next starts afresh


def test_no_reference_is_leaked() -> None:
    def run(n: int) -> None:
        for i in range(n):
            ex = _exchange()
            ex.resp_parser = UNFED
            data = NGINX if i % 2 else NGINX.replace(b"10:00:00", b"10:%02d:%02d" % (i // 60 % 60, i % 60))
            assert _response.feed_fast(ex, data)

    run(1000)
    gc.collect()
    blocks = sys.getallocatedblocks()
    run(3000)
    gc.collect()
    assert sys.getallocatedblocks() - blocks < 1000   # (a leak: one or more a response)



def test_a_patched_getattribute_is_honoured_as_httptools_honours_it() -> None:
    # feed_fast calls its own C callbacks directly only while Exchange finds
    # them the generic way; a __getattribute__ given to the class is used, as
    # httptools' getattr uses it.
    seen: dict[bool, list[bytes]] = {True: [], False: []}
    real_status = Exchange.__dict__["on_status"]
    fast_now = [True]

    def getattribute(self: Exchange, name: str) -> Any:
        if name == "on_status":
            def on_status(reason: bytes) -> Any:
                seen[fast_now[0]].append(reason)
                return real_status.__get__(self)(reason)
            return on_status
        return object.__getattribute__(self, name)

    Exchange.__getattribute__ = getattribute  # type: ignore[method-assign]
    try:
        for fast in (True, False):
            fast_now[0] = fast
            ex = _exchange()
            if fast:
                ex.resp_parser = UNFED
                assert _response.feed_fast(ex, NGINX) is True
            else:
                ex.resp_parser = httptools.HttpResponseParser(ex)
                ex.resp_parser.feed_data(NGINX)  # type: ignore[union-attr]
    finally:
        del Exchange.__getattribute__
    assert seen[True] == seen[False] == [b"OK"]
