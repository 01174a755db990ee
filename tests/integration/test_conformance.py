"""RFC 9112 conformance and request-smuggling probes, one raw request per case.

Each case sends raw bytes on a fresh connection to a real node in front of a
real backend and states the outcome: the statuses the client must see, in
order, and exactly how many requests reach the backend. Every case also checks
that no request for ``/smuggled`` ever reaches the backend, that an error
closes the connection and says which error it is (X-NovaEdge-Error,
X-Request-Id).

Expected results come from RFC 9110/9112 (section numbers in the comments),
not from what the code does. Where the RFC lets a recipient choose (MAY
accept or reject), the stricter choice is expected and the comment says
"strict". Sources for the smuggling cases: RFC 9112 6.3 and 11.2, PortSwigger's
"HTTP Desync Attacks" (CL.TE, TE.CL, TE.TE obfuscations), and the chunk
extension / bare-LF ("TERM") desync variants.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import AsyncIterator, Callable

import pytest
import pytest_asyncio

from tests.support.harness import Harness, harness
from tests.support.http import exchange


CRLF = b"\r\n"
HOST = b"Host: a.test\r\n"
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: a.test\r\n\r\n"
HeadCheck = Callable[[list[tuple[str, str, list[tuple[str, str]]]]], None]


@dataclass
class Case:
    id: str
    raw: bytes
    statuses: list[int]              # final statuses the client sees, in order
    upstream: int                    # requests that must reach the backend
    check: HeadCheck | None = None   # more checks on the heads the backend saw
    methods: list[str] = field(default_factory=list)
    timeout: float = 2.0


def req(line: bytes, *headers: bytes, body: bytes = b"", host: bool = True) -> bytes:
    """A request from its request line, header lines (without CRLF) and body."""
    head = line + CRLF + (HOST if host else b"") + b"".join(h + CRLF for h in headers) + CRLF
    return head + body


def get(path: bytes = b"/", *headers: bytes, body: bytes = b"") -> bytes:
    return req(b"GET " + path + b" HTTP/1.1", *headers, body=body)


def post(*headers: bytes, body: bytes = b"") -> bytes:
    return req(b"POST / HTTP/1.1", *headers, body=body)


def te(body: bytes, *headers: bytes) -> bytes:
    """A POST whose framing headers are exactly `headers`, followed by `body`."""
    return req(b"POST / HTTP/1.1", *headers, body=body)


CHUNKED = b"Transfer-Encoding: chunked"


def header_of(head: tuple[str, str, list[tuple[str, str]]], name: str) -> list[str]:
    return [v for n, v in head[2] if n.lower() == name.lower()]


def backend_host_is(value: str) -> HeadCheck:
    def check(heads: list[tuple[str, str, list[tuple[str, str]]]]) -> None:
        assert header_of(heads[0], "host") == [value], heads[0]
    return check


def backend_target_is(value: str) -> HeadCheck:
    def check(heads: list[tuple[str, str, list[tuple[str, str]]]]) -> None:
        assert heads[0][1] == value, heads[0]
    return check


def backend_lacks(*names: str) -> HeadCheck:
    def check(heads: list[tuple[str, str, list[tuple[str, str]]]]) -> None:
        for n in names:
            assert not header_of(heads[0], n), (n, heads[0])
    return check


def backend_body_len(n: int) -> HeadCheck:
    def check(heads: list[tuple[str, str, list[tuple[str, str]]]]) -> None:
        cl = header_of(heads[0], "content-length")
        te_ = header_of(heads[0], "transfer-encoding")
        assert (cl == [str(n)] and not te_) or (te_ == ["chunked"] and not cl), heads[0]
    return check


C = Case
CASES: list[Case] = [
    # ------------------------------------------------------------------
    # baseline: what must work
    # ------------------------------------------------------------------
    C("get", get(), [200], 1),
    C("get-query", get(b"/p?a=1&b=%20"), [200], 1, backend_target_is("/p?a=1&b=%20")),
    C("head", req(b"HEAD / HTTP/1.1"), [200], 1, methods=["HEAD"]),
    C("post-cl", post(b"Content-Length: 5", body=b"hello"), [200], 1, backend_body_len(5)),
    C("post-chunked", te(b"5\r\nhello\r\n0\r\n\r\n", CHUNKED), [200], 1),
    C("post-no-length-is-empty", post(), [200], 1, backend_body_len(0)),   # 9112 6.3 (7)
    C("get-with-cl-body", get(b"/", b"Content-Length: 3", body=b"abc"), [200], 1, backend_body_len(3)),
    C("http10-without-host", req(b"GET / HTTP/1.0", host=False), [200], 1),  # Host is a 1.1 MUST
    C("http10-with-host", req(b"GET / HTTP/1.0"), [200], 1),
    C("pipelined-3", get() + get(b"/second") + get(b"/third"), [200, 200, 200], 3),
    C("pipelined-head-then-get", req(b"HEAD /bytes/10 HTTP/1.1") + get(b"/second"), [200, 200], 2,
      methods=["HEAD", "GET"]),
    C("pipelined-post-then-get", post(b"Content-Length: 5", body=b"hello") + get(b"/second"),
      [200, 200], 2),
    C("leading-empty-line", CRLF + get(), [200], 1),                          # 9112 2.2 SHOULD ignore
    C("crlf-between-pipelined", get() + CRLF + get(b"/second"), [200, 200], 2),  # 9112 2.2
    C("obs-text-in-value", get(b"/", b"X-A: caf\xe9"), [200], 1),              # 9110 5.5 obs-text
    C("ows-around-value", get(b"/", b"X-A: \t v \t"), [200], 1),              # 9110 5.5: OWS stripped
    C("empty-value", get(b"/", b"X-A:"), [200], 1),
    C("ipv6-host", req(b"GET / HTTP/1.1", b"Host: [::1]:8080", host=False), [200], 1),
    C("host-empty-port", req(b"GET / HTTP/1.1", b"Host: a.test:", host=False), [200], 1),  # 3986 port=*DIGIT
    C("pct-encoded-nul-is-data", get(b"/a%00b"), [200], 1),                   # syntactically valid
    C("cl-leading-zeros", post(b"Content-Length: 005", body=b"hello"), [200], 1, backend_body_len(5)),
    C("cl-trailing-ows", post(b"Content-Length: 5 ", body=b"hello"), [200], 1),  # OWS is not the value
    C("expect-100-with-body", post(b"Content-Length: 5", b"Expect: 100-continue", body=b"hello"),
      [200], 1, backend_lacks("expect")),   # the node answers 100 itself; Expect is not forwarded
    # ------------------------------------------------------------------
    # request-line forms (9112 3)
    # ------------------------------------------------------------------
    C("absolute-form", req(b"GET http://a.test/x?y HTTP/1.1"), [200], 1, backend_target_is("/x?y")),
    C("absolute-form-uppercase-scheme", req(b"GET HTTP://a.test/x HTTP/1.1"), [200], 1,
      backend_target_is("/x")),                                              # 3986 3.1: case-insensitive
    # 9112 3.2.2: the target's authority wins; a proxy MUST send a new Host from it.
    C("absolute-form-host-mismatch", req(b"GET http://b.test/ HTTP/1.1"), [200], 1,
      backend_host_is("b.test")),
    C("absolute-form-no-path", req(b"GET http://a.test HTTP/1.1"), [200], 1, backend_target_is("/")),
    C("absolute-form-userinfo", req(b"GET http://u:p@a.test/ HTTP/1.1"), [400], 0),  # 9110 4.2.4
    C("absolute-form-other-scheme", req(b"GET ftp://a.test/ HTTP/1.1"), [400], 0),
    C("absolute-form-empty-host", req(b"GET http:///x HTTP/1.1"), [400], 0),          # 9110 4.2.1
    C("absolute-form-without-host-header", req(b"GET http://a.test/ HTTP/1.1", host=False),
      [400], 0),                                                            # 9112 3.2: Host MUST
    C("asterisk-form-options", req(b"OPTIONS * HTTP/1.1"), [200], 1, backend_target_is("*")),
    C("asterisk-form-get", req(b"GET * HTTP/1.1"), [400], 0),                # 9112 3.2.4
    C("authority-form-get", req(b"GET a.test:80 HTTP/1.1"), [400], 0),       # 9112 3.2.3: CONNECT only
    C("connect", req(b"CONNECT a.test:443 HTTP/1.1", b"Host: a.test:443", host=False), [501], 0),
    C("lowercase-method", req(b"get / HTTP/1.1"), [501], 0),                 # 9110 9.1: case-sensitive, unknown
    C("unknown-method", req(b"FROB / HTTP/1.1"), [501], 0),                  # 9110 9.1: 501
    C("method-non-token", req(b"G(T / HTTP/1.1"), [400], 0),
    C("method-with-nul", req(b"G\x00T / HTTP/1.1"), [400], 0),
    C("http09-simple-request", b"GET /\r\n\r\n", [400], 0),                  # 9112 3: no version
    C("missing-version", b"GET / \r\nHost: a.test\r\n\r\n", [400], 0),
    C("http20", req(b"GET / HTTP/2.0"), [505], 0),
    C("http30", req(b"GET / HTTP/3.0"), [505], 0),
    C("http12-strict", req(b"GET / HTTP/1.2"), [505], 0),  # 9110 2.5 SHOULD treat as 1.1; strict: 505
    C("http110", req(b"GET / HTTP/1.10"), [400], 0),                          # 9112 2.3: one digit
    C("http-lowercase", req(b"GET / http/1.1"), [400], 0),                   # 9112 2.3: case-sensitive
    C("version-trailing-space", req(b"GET / HTTP/1.1 "), [400], 0),
    C("tab-separator", req(b"GET\t/ HTTP/1.1"), [400], 0),
    C("tab-before-version", req(b"GET / \tHTTP/1.1"), [400], 0),
    C("leading-space-before-method", b" " + get(), [400], 0),
    # 9112 3: recipients MAY parse on whitespace boundaries. Accepted (not strict)
    # on purpose: llhttp cannot report it, and it is harmless here because the node
    # re-generates the request line, so no second recipient ever sees the spaces.
    C("double-space-after-method", req(b"GET  / HTTP/1.1"), [200], 1, backend_target_is("/")),
    C("double-space-before-version", req(b"GET /  HTTP/1.1"), [200], 1, backend_target_is("/")),
    C("space-in-target", req(b"GET /a b HTTP/1.1"), [400], 0),
    C("fragment-in-target", req(b"GET /a#frag HTTP/1.1"), [400], 0),         # 9112 3.2: no fragment
    C("nul-in-target", req(b"GET /a\x00b HTTP/1.1"), [400], 0),
    C("ctl-in-target", req(b"GET /a\x01b HTTP/1.1"), [400], 0),
    C("del-in-target", req(b"GET /a\x7fb HTTP/1.1"), [400], 0),
    C("non-ascii-in-target", req(b"GET /caf\xc3\xa9 HTTP/1.1"), [400], 0),    # 3986: must be pct-encoded
    C("backslash-in-target", req(b"GET /a\\b HTTP/1.1"), [400], 0),           # not a URI character
    C("bad-pct-encoding", req(b"GET /a%zzb HTTP/1.1"), [400], 0),             # 3986 2.1
    C("cr-in-request-line", req(b"GET /\r HTTP/1.1"), [400], 0),
    C("lf-only-request-line", b"GET / HTTP/1.1\nHost: a.test\r\n\r\n", [400], 0),  # strict (9112 2.2 MAY)
    C("lf-only-everywhere", b"GET / HTTP/1.1\nHost: a.test\n\n", [400], 0),         # strict
    C("overlong-target", get(b"/" + b"a" * 9000), [414], 0),                  # 9112 3: 414; limit 8 KiB
    C("target-at-limit-is-fine", get(b"/" + b"a" * 8000), [200], 1),
    # ------------------------------------------------------------------
    # header fields (9112 5, 9110 5)
    # ------------------------------------------------------------------
    C("space-before-colon", get(b"/", b"X-A : b"), [400], 0),                 # 9112 5.1 MUST 400
    C("space-before-colon-host", req(b"GET / HTTP/1.1", b"Host : a.test", host=False), [400], 0),
    C("tab-before-colon", get(b"/", b"X-A\t: b"), [400], 0),
    C("empty-name", get(b"/", b": b"), [400], 0),
    C("name-with-space", get(b"/", b"X A: b"), [400], 0),
    C("name-non-token", get(b"/", b"X@A: b"), [400], 0),
    C("name-non-ascii", get(b"/", b"X\xe9: b"), [400], 0),
    C("line-without-colon", get(b"/", b"Foo"), [400], 0),
    C("obs-fold-space", get(b"/", b"X-A: a", b" b"), [400], 0),              # 9112 5.2: strict reject
    C("obs-fold-tab", get(b"/", b"X-A: a", b"\tb"), [400], 0),
    C("whitespace-before-first-header", b"GET / HTTP/1.1\r\n Host: a.test\r\n\r\n", [400], 0),  # 9112 2.2
    C("bare-cr-in-value", get(b"/", b"X-A: a\rb"), [400], 0),                # 9112 2.2 MUST reject/replace
    C("bare-lf-in-headers", b"GET / HTTP/1.1\r\nHost: a.test\nX-A: b\r\n\r\n", [400], 0),
    C("lf-only-end-of-head", b"GET / HTTP/1.1\r\nHost: a.test\r\n\n" + SMUGGLED, [400], 0),
    C("nul-in-value", get(b"/", b"X-A: a\x00b"), [400], 0),                  # 9110 5.5 MUST reject/replace
    C("del-in-value", get(b"/", b"X-A: a\x7fb"), [400], 0),
    C("ctl-in-value", get(b"/", b"X-A: a\x01b"), [400], 0),
    C("vtab-in-value", get(b"/", b"X-A: a\x0bb"), [400], 0),
    C("formfeed-in-value", get(b"/", b"X-A: a\x0cb"), [400], 0),
    C("too-many-headers", get(b"/", *[b"X-H%d: v" % i for i in range(101)]), [431], 0),   # limit 100
    C("headers-at-count-limit", get(b"/", *[b"X-H%d: v" % i for i in range(98)]), [200], 1),
    C("one-huge-header", get(b"/", b"X-A: " + b"v" * 40000), [431], 0),       # limit 32 KiB
    C("header-block-too-large", get(b"/", *[b"X-H%d: %s" % (i, b"v" * 1000) for i in range(40)]),
      [431], 0),
    C("missing-host", req(b"GET / HTTP/1.1", host=False), [400], 0),           # 9112 3.2 MUST 400
    C("duplicate-host-same", get(b"/", b"Host: a.test"), [400], 0),            # 9112 3.2 MUST 400
    C("duplicate-host-different", get(b"/", b"Host: b.test"), [400], 0),
    C("host-list", req(b"GET / HTTP/1.1", b"Host: a.test, b.test", host=False), [400], 0),
    C("host-userinfo", req(b"GET / HTTP/1.1", b"Host: u@a.test", host=False), [400], 0),  # 9110 4.2.4
    C("host-with-path", req(b"GET / HTTP/1.1", b"Host: a.test/x", host=False), [400], 0),
    C("host-empty", req(b"GET / HTTP/1.1", b"Host:", host=False), [400], 0),  # 9110 4.2.1: http needs a host
    C("host-bad-port", req(b"GET / HTTP/1.1", b"Host: a.test:8o", host=False), [400], 0),
    C("host-port-too-big", req(b"GET / HTTP/1.1", b"Host: a.test:99999", host=False), [400], 0),
    C("host-two-ports", req(b"GET / HTTP/1.1", b"Host: a.test:80:80", host=False), [400], 0),
    C("host-unclosed-ipv6", req(b"GET / HTTP/1.1", b"Host: [::1", host=False), [400], 0),
    C("host-nul", req(b"GET / HTTP/1.1", b"Host: a\x00.test", host=False), [400], 0),
    C("expect-unknown", post(b"Content-Length: 1", b"Expect: teapot", body=b"x"), [417], 0),  # 9110 10.1.1
    # Fields whose name differs from a framing field only by "_": a backend that
    # maps "_" to "-" (CGI style) would see framing the node did not use. Strict: 400.
    C("underscore-transfer-encoding", post(b"Content-Length: 5", b"Transfer_Encoding: chunked",
                                           body=b"hello"), [400], 0),
    C("underscore-content-length", post(b"Content_Length: 5", body=b""), [400], 0),
    C("underscore-other-is-fine", get(b"/", b"X_Custom: 1"), [200], 1),
    # Connection may not remove end-to-end fields the node relies on (hop-by-hop abuse).
    C("connection-names-host", get(b"/", b"Connection: Host"), [200], 1, backend_host_is("a.test")),
    C("connection-names-content-length",
      post(b"Content-Length: 40", b"Connection: Content-Length", body=SMUGGLED[:40]), [200], 1,
      backend_body_len(40)),
    C("connection-names-x-forwarded-for", get(b"/", b"Connection: X-Forwarded-For"), [200], 1,
      lambda heads: None if header_of(heads[0], "x-forwarded-for") else pytest.fail("XFF dropped")),
    C("hop-by-hop-stripped", get(b"/", b"Connection: keep-alive, X-Secret", b"X-Secret: 1",
                                 b"Keep-Alive: timeout=5", b"TE: trailers", b"Proxy-Authorization: x",
                                 b"Upgrade: foo"),
      [200], 1, backend_lacks("x-secret", "keep-alive", "te", "proxy-authorization", "upgrade")),
    # ------------------------------------------------------------------
    # Content-Length (9110 8.6, 9112 6.3)
    # ------------------------------------------------------------------
    C("cl-plus", post(b"Content-Length: +5", body=b"hello"), [400], 0),
    C("cl-negative", post(b"Content-Length: -1", body=b"hello"), [400], 0),
    C("cl-decimal", post(b"Content-Length: 1.0", body=b"h"), [400], 0),
    C("cl-hex", post(b"Content-Length: 0x5", body=b"hello"), [400], 0),
    C("cl-empty", post(b"Content-Length:", body=b""), [400], 0),
    C("cl-inner-space", post(b"Content-Length: 5 5", body=b"hello"), [400], 0),
    C("cl-list-same", post(b"Content-Length: 5, 5", body=b"hello"), [400], 0),   # 9110 8.6 MAY; strict
    C("cl-list-different", post(b"Content-Length: 5, 6", body=b"hello!"), [400], 0),
    C("cl-duplicate-same", post(b"Content-Length: 5", b"Content-Length: 5", body=b"hello"), [400], 0),
    C("cl-duplicate-different", post(b"Content-Length: 5", b"Content-Length: 41", body=b"hello" + SMUGGLED),
      [400], 0),
    C("cl-overflow", post(b"Content-Length: 99999999999999999999999", body=b"x"), [400], 0),
    C("cl-over-route-limit", post(b"Content-Length: 10000000000", body=b"x"), [413], 0),
    C("cl-with-nul", post(b"Content-Length: 5\x00", body=b"hello"), [400], 0),
    C("cl-0-body-is-next-request", post(b"Content-Length: 0", body=get(b"/second")), [200, 200], 2),
    # ------------------------------------------------------------------
    # Transfer-Encoding (9112 6.1, 6.3, 7)
    # ------------------------------------------------------------------
    C("cl-te", te(b"0\r\n\r\n" + SMUGGLED, b"Content-Length: 5", CHUNKED), [400], 0),   # 9112 6.3 (3)
    C("te-cl", te(b"0\r\n\r\n" + SMUGGLED, CHUNKED, b"Content-Length: 44"), [400], 0),
    C("te-cl-zero", te(b"0\r\n\r\n", CHUNKED, b"Content-Length: 0"), [400], 0),
    C("te-xchunked", te(b"0\r\n\r\n", b"Transfer-Encoding: xchunked"), [400], 0),  # 6.3 (4): not final
    C("te-chunked-identity", te(b"0\r\n\r\n", b"Transfer-Encoding: chunked, identity"), [400], 0),
    C("te-identity", te(b"", b"Transfer-Encoding: identity", b"Content-Length: 0"), [400], 0),
    C("te-quoted", te(b"0\r\n\r\n", b'Transfer-Encoding: "chunked"'), [400], 0),
    C("te-chunked-param", te(b"0\r\n\r\n", b"Transfer-Encoding: chunked;q=1"), [400], 0),
    C("te-chunked-twice-list", te(b"0\r\n\r\n", b"Transfer-Encoding: chunked, chunked"), [400], 0),  # 9112 6.1
    C("te-chunked-twice-fields", te(b"0\r\n\r\n", CHUNKED, CHUNKED), [400], 0),
    C("te-chunked-then-x", te(b"0\r\n\r\n", CHUNKED, b"Transfer-encoding: x"), [400], 0),
    C("te-gzip-chunked", te(b"0\r\n\r\n", b"Transfer-Encoding: gzip, chunked"), [501], 0),  # 9112 6.1 SHOULD 501
    C("te-leading-space", te(b"5\r\nhello\r\n0\r\n\r\n", b"Transfer-Encoding:  chunked"), [200], 1),
    C("te-tab", te(b"5\r\nhello\r\n0\r\n\r\n", b"Transfer-Encoding:\tchunked"), [200], 1),
    C("te-trailing-space", te(b"5\r\nhello\r\n0\r\n\r\n", b"Transfer-Encoding: chunked "), [200], 1),
    C("te-uppercase", te(b"5\r\nhello\r\n0\r\n\r\n", b"Transfer-Encoding: CHUNKED"), [200], 1),  # 9112 7
    C("te-empty-list-element", te(b"5\r\nhello\r\n0\r\n\r\n", b"Transfer-Encoding: ,chunked"),
      [200], 1),                                                             # 9110 5.6.1 MUST ignore empty
    C("te-vtab", te(b"0\r\n\r\n" + SMUGGLED, b"Transfer-Encoding:\x0bchunked"), [400], 0),
    C("te-space-before-colon", te(b"0\r\n\r\n" + SMUGGLED, b"Transfer-Encoding : chunked",
                                  b"Content-Length: 5"), [400], 0),
    C("te-obs-fold", te(b"0\r\n\r\n" + SMUGGLED, b"X-A: a", b" Transfer-Encoding: chunked",
                        b"Content-Length: 5"), [400], 0),
    C("te-http10", req(b"POST / HTTP/1.0", CHUNKED, body=b"0\r\n\r\n" + SMUGGLED), [400], 0),  # 9112 6.1
    C("te-http10-with-cl", req(b"POST / HTTP/1.0", CHUNKED, b"Content-Length: 5", body=b"hello"),
      [400], 0),
    # 9110 6.5.1: framing fields MUST NOT be sent as trailers; strict: the message is refused.
    C("te-in-trailer", te(b"5\r\nhello\r\n0\r\nTransfer-Encoding: chunked\r\n\r\n", CHUNKED), [400], 0),
    C("cl-in-trailer", te(b"5\r\nhello\r\n0\r\nContent-Length: 99\r\n\r\n", CHUNKED), [400], 0),
    # 9110 6.5.1: a trailer field is never merged into the head (nor forwarded as a header).
    C("trailer-fields-dropped", te(b"5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n", CHUNKED), [200], 1,
      backend_lacks("x-t")),
    C("trailer-too-large", te(b"5\r\nhello\r\n0\r\n" + b"".join(b"X-T%d: v\r\n" % i for i in range(101))
                              + b"\r\n", CHUNKED), [431], 0),
    # ------------------------------------------------------------------
    # chunk sizes and extensions (9112 7.1)
    # ------------------------------------------------------------------
    C("chunk-ext", te(b"5;name=value\r\nhello\r\n0\r\n\r\n", CHUNKED), [200], 1),
    C("chunk-ext-quoted", te(b'5;n="v ; x"\r\nhello\r\n0\r\n\r\n', CHUNKED), [200], 1),
    C("chunk-ext-no-value", te(b"5;flag\r\nhello\r\n0\r\n\r\n", CHUNKED), [200], 1),
    C("chunk-uppercase-hex", te(b"A\r\n0123456789\r\n0\r\n\r\n", CHUNKED), [200], 1),
    C("chunk-leading-zeros", te(b"00005\r\nhello\r\n000\r\n\r\n", CHUNKED), [200], 1),
    C("chunk-many-small", te(b"".join(b"1\r\n%c\r\n" % c for c in b"abcdefghij") + b"0\r\n\r\n", CHUNKED),
      [200], 1),
    C("chunk-negative", te(b"-5\r\nhello\r\n0\r\n\r\n", CHUNKED), [400], 0),
    C("chunk-hex-overflow", te(b"ffffffffffffffffff\r\nhello\r\n0\r\n\r\n", CHUNKED), [400], 0),
    C("chunk-0x-prefix", te(b"0x5\r\nhello\r\n0\r\n\r\n", CHUNKED), [400], 0),
    C("chunk-non-hex", te(b"zz\r\nhello\r\n0\r\n\r\n", CHUNKED), [400], 0),
    C("chunk-empty-size", te(b"\r\nhello\r\n0\r\n\r\n", CHUNKED), [400], 0),
    C("chunk-leading-space", te(b" 5\r\nhello\r\n0\r\n\r\n", CHUNKED), [400], 0),
    C("chunk-trailing-space", te(b"5 \r\nhello\r\n0\r\n\r\n", CHUNKED), [400], 0),
    C("chunk-bws-before-ext", te(b"5 ;e\r\nhello\r\n0\r\n\r\n", CHUNKED), [400], 0),  # 9112 7.1.1 BWS; strict
    C("chunk-tab", te(b"5\t\r\nhello\r\n0\r\n\r\n", CHUNKED), [400], 0),
    C("chunk-size-lf-only", te(b"5\nhello\r\n0\r\n\r\n", CHUNKED), [400], 0),        # strict, "TERM" desync
    C("chunk-data-lf-only", te(b"5\r\nhello\n0\r\n\r\n", CHUNKED), [400], 0),
    C("chunk-data-no-crlf", te(b"5\r\nhello0\r\n\r\n", CHUNKED), [400], 0),
    C("chunk-data-too-long", te(b"3\r\nhello\r\n0\r\n\r\n", CHUNKED), [400], 0),
    C("chunk-last-lf-only", te(b"5\r\nhello\r\n0\n\n" + SMUGGLED, CHUNKED), [400], 0),
    C("chunk-ext-lf", te(b"5;e\nhello\r\n0\r\n\r\n", CHUNKED), [400], 0),             # chunk-ext "TERM.EXT"
    C("chunk-ext-bare-cr", te(b"5;e\rx\r\nhello\r\n0\r\n\r\n", CHUNKED), [400], 0),
    C("chunk-ext-quoted-crlf", te(b'5;e="a\r\nb"\r\nhello\r\n0\r\n\r\n', CHUNKED), [400], 0),
    C("chunk-ext-nul", te(b"5;e=\x00\r\nhello\r\n0\r\n\r\n", CHUNKED), [400], 0),
    # 9112 7.1.1: a server ought to limit chunk extensions and answer 4xx beyond.
    C("chunk-ext-oversized", te(b"5;e=" + b"x" * 100_000 + b"\r\nhello\r\n0\r\n\r\n", CHUNKED), [400], 0),
    C("chunk-in-get", get(b"/", CHUNKED, body=b"3\r\nabc\r\n0\r\n\r\n"), [200], 1),
    # ------------------------------------------------------------------
    # desync probes: a second request hidden where a misframing hop would see it
    # ------------------------------------------------------------------
    C("cl-body-looks-like-request", post(b"Content-Length: %d" % len(SMUGGLED), body=SMUGGLED), [200], 1),
    C("chunked-body-looks-like-request",
      te(b"%x\r\n%b\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED), CHUNKED), [200], 1),
    C("cl-te-classic", te(b"0\r\n\r\nG", b"Content-Length: 6", CHUNKED), [400], 0),
    C("te-cl-classic", te(b"5c\r\n" + SMUGGLED + b"\r\n0\r\n\r\n", CHUNKED, b"Content-Length: 4"), [400], 0),
    C("get-with-cl-hiding-request", get(b"/", b"Content-Length: %d" % len(SMUGGLED), body=SMUGGLED),
      [200], 1),                                                             # CL.0 probe
    C("h2c-upgrade-not-forwarded",
      get(b"/", b"Connection: Upgrade, HTTP2-Settings", b"Upgrade: h2c", b"HTTP2-Settings: AAMAAABkAAQAAP__"),
      [200], 1, backend_lacks("upgrade", "http2-settings")),
    C("h2c-upgrade-then-pipelined", get(b"/", b"Connection: Upgrade", b"Upgrade: h2c") + get(b"/second"),
      [200, 200], 2),
    C("websocket-upgrade-with-body", get(b"/ws", b"Connection: Upgrade", b"Upgrade: websocket",
                                         b"Content-Length: %d" % len(SMUGGLED), body=SMUGGLED),
      [400], 0),                                                            # strict: no body on an upgrade
    C("pipelined-bad-second", get() + get(b"/", b"Content-Length: 5", CHUNKED, body=b"0\r\n\r\n"),
      [200, 400], 1),                                                       # first answered first, in order
    C("pipelined-bad-third", get() + get(b"/second") + b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",
      [200, 200, 400], 2),
    C("pipelined-after-close", get(b"/", b"Connection: close") + SMUGGLED, [200], 1),  # 9112 9.6
    C("http10-default-close", req(b"GET / HTTP/1.0") + SMUGGLED, [200], 1),
    C("cl-te-pipelined-after-good", get() + te(b"0\r\n\r\n" + SMUGGLED, b"Content-Length: 50", CHUNKED),
      [200, 400], 1),
    C("te-te-dup-obfuscated", te(b"0\r\n\r\n" + SMUGGLED, CHUNKED, b"Transfer-Encoding: cow"), [400], 0),
    C("te-newline-obfuscated", te(b"0\r\n\r\n" + SMUGGLED, b"Foo: bar\nTransfer-Encoding: chunked",
                                  b"Content-Length: 5"), [400], 0),
]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def h() -> AsyncIterator[Harness]:
    async with harness(1, limits={"body_idle_timeout_s": 1.0, "header_timeout_s": 2.0}) as hh:
        yield hh


def test_case_count() -> None:
    assert len(CASES) > 100
    assert len({c.id for c in CASES}) == len(CASES), "case ids must be unique"


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_conformance(h: Harness, case: Case) -> None:
    b = h.backend
    before_paths = len(b.stats.paths)
    before_heads = len(b.stats.heads)
    methods = case.methods or ["GET"] * len(case.statuses)
    resps, raw, closed = await exchange(h.port, case.raw, expect=len(case.statuses), methods=methods,
                                        timeout=case.timeout, settle=0.03)
    got = [r.status for r in resps]
    assert got == case.statuses, f"statuses {got}, expected {case.statuses}; raw reply {raw[:400]!r}"
    new_paths = b.stats.paths[before_paths:]
    assert "/smuggled" not in new_paths, f"a smuggled request reached the backend: {new_paths}"
    assert len(new_paths) == case.upstream, f"backend saw {new_paths}, expected {case.upstream} requests"
    for r in resps:
        assert r.header("x-request-id"), r
        if r.status >= 400:
            assert r.header("x-novaedge-error"), r
            assert r.body.startswith(str(r.status).encode()), r.body
    if resps and resps[-1].status >= 400 and resps[-1].status not in (404,):
        assert closed, "the node must close the connection after a protocol error"
    if case.check is not None:
        case.check(b.stats.heads[before_heads:])
