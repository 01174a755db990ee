"""Parse + identify: turn a parsed request head into a RequestContext and the
exact bytes of the head we send upstream. Pure functions of their inputs.

Contract: `check_head` raises Reject for anything a smuggling attack or a
confused backend could use; `build_upstream_head` re-frames the request
(Content-Length or chunked, never both), strips hop-by-hop fields (including
each field named in Connection) and sets the forwarding fields itself.
"""
from __future__ import annotations

import ipaddress
from typing import Callable

import httptools

from ._accel import attach
from .downstream import Reject
from .exchange import Exchange
from .http11 import HOP_BY_HOP, NODE_SET_REQUEST, URI_CHARS, valid_host, valid_target


def check_head(ex: Exchange, known_host: bytes | None = None) -> tuple[bytes, bytes]:
    """Validate the head. Returns (origin-form target, host header value).

    `known_host`: a Host value this connection already had validated (keep-alive
    clients repeat it; valid_host is ~1 us of Python)."""
    if ex.version == "0.9":
        raise Reject(400, "request line without an HTTP version")   # 9112 3
    if ex.version not in ("1.1", "1.0"):
        raise Reject(505, f"HTTP/{ex.version} is not supported")
    if ex.method == "CONNECT":
        raise Reject(501, "CONNECT is not supported by a reverse proxy")
    url = ex.url[0] if len(ex.url) == 1 else b"".join(ex.url)
    if b"#" in url:
        raise Reject(400, "fragment in request target")
    authority: bytes | None = None
    if url[:1] == b"/":
        target = url
    elif url == b"*":
        if ex.method != "OPTIONS":
            raise Reject(400, "asterisk-form is only for OPTIONS")
        target = url
    else:
        # absolute-form (RFC 9112 3.2.2): its authority wins over Host.
        try:
            parsed = httptools.parse_url(url)
        except httptools.HttpParserInvalidURLError:
            raise Reject(400, "invalid request target") from None
        if (parsed.schema or b"").lower() not in (b"http", b"https") or not parsed.host:
            raise Reject(400, "invalid request target")
        if parsed.userinfo:
            raise Reject(400, "userinfo in request target")   # 9110 4.2.4
        h = parsed.host
        if b":" in h:
            h = b"[" + h + b"]"   # httptools drops an IPv6 literal's brackets
        authority = h + (b":%d" % parsed.port if parsed.port else b"")
        target = (parsed.path or b"/") + (b"?" + parsed.query if parsed.query else b"")
    if target != b"*" and not valid_target(target):
        raise Reject(400, "invalid character in request target")
    if ex.host_count > 1:
        raise Reject(400, "multiple Host header fields")
    if ex.host_count == 0 and ex.version == "1.1":
        raise Reject(400, "missing Host header field")
    host = authority if authority is not None else (ex.host_value or b"")
    if ex.host_value is not None and ex.host_value != known_host and not valid_host(ex.host_value):
        raise Reject(400, "invalid Host header field")
    if authority is not None and not valid_host(authority):
        raise Reject(400, "invalid request target authority")
    if ex.te_value is not None:
        if ex.version == "1.0":
            raise Reject(400, "Transfer-Encoding in an HTTP/1.0 request")   # 9112 6.1
        # 9112 6.3 (4): chunked not final -> the length is unknowable: 400. Any
        # other coding would be lost in our re-chunking: 9112 6.1 says 501.
        codings = [c.strip().lower() for c in ex.te_value.split(b",") if c.strip()]
        if not codings or codings[-1] != b"chunked" or b"chunked" in codings[:-1]:
            raise Reject(400, "invalid Transfer-Encoding")
        if len(codings) > 1:
            raise Reject(501, "unsupported transfer coding")
        ex.chunked = True
    if ex.expect is not None:
        if ex.version == "1.0":
            ex.expect = None   # 9110 10.1.1: a 1.0 request's 100-continue MUST be ignored
        elif ex.expect != b"100-continue":
            raise Reject(417, "unsupported expectation")
    cl = -1
    if ex.has_cl:
        for ln, v in ex.headers:
            if ln == b"content-length":
                cl = int(v)   # llhttp checked digits-only and a single field
    ex.declared_len = cl
    if ex.upgrade is not None and b"upgrade" in ex.conn_tokens and ex.version == "1.1":
        protocols = [p.strip() for p in ex.upgrade.split(b",") if p.strip()]
        protocols = [p for p in protocols if p.lower() != b"h2c"]   # never forward h2c
        if protocols:
            ex.want_upgrade = True
            ex.upgrade = b", ".join(protocols)
    if ex.want_upgrade and (cl > 0 or ex.chunked):
        # Strict: a body before a protocol switch is legal but nothing needs it,
        # and after a 101 the backend and we could disagree on where it ends.
        raise Reject(400, "Upgrade request with a body")
    return target, host


# What build_upstream_head does with a client's field, by lower-case name:
# one dict lookup per field instead of a chain of set tests (measured: about
# half the cost with a dozen browser headers, loadtests/bench_nginx.py).
SKIP, XFF, VIA, HOST = 1, 2, 3, 4
HEADER_ACTIONS: dict[bytes, int] = {
    **dict.fromkeys(HOP_BY_HOP, SKIP), **dict.fromkeys(NODE_SET_REQUEST, SKIP),
    b"content-length": SKIP,        # re-framed by us
    b"expect": SKIP,                # we answer 100-continue ourselves
    b"x-forwarded-for": XFF, b"via": VIA, b"host": HOST,
}


def header_actions(strip: frozenset[bytes]) -> dict[bytes, int]:
    """HEADER_ACTIONS plus the fields the node sets itself (the geo headers)."""
    return {**dict.fromkeys(strip, SKIP), **HEADER_ACTIONS}


def build_upstream_head(ex: Exchange, target: bytes, host: bytes, client_ip: str,
                        trusted_peer: bool, peer_ip: str, scheme: bytes, via: bytes,
                        request_id: bytes, actions: dict[bytes, int],
                        extra: list[tuple[bytes, bytes]], memo: list[object] | None = None) -> bytes:
    """The head we send upstream. `memo`: a per-connection [key, block] pair
    that keeps the forwarding fields (X-Forwarded-*, X-Real-IP, Via and the
    `extra` ones), the same for every request of a connection that brings no
    X-Forwarded-For or Via of its own."""
    out = [ex.method.encode(), b" ", target, b" HTTP/1.1\r\n"]
    # Connection may name only hop-by-hop fields: it cannot remove the ones the
    # node relies on ("Connection: Host" must not strip Host: hop-by-hop abuse).
    drop = ex.conn_tokens - _KEEP if ex.conn_tokens else None
    xff_prior: list[bytes] = []
    via_prior: bytes | None = None
    get = actions.get
    for (ln, value), name in zip(ex.headers, ex.names):
        act = get(ln)
        if act is None:
            if drop and ln in drop:
                continue
            out += (name, b": ", value, b"\r\n")
        elif act == HOST:
            out += (b"Host: ", host, b"\r\n")
        elif act == XFF:
            if trusted_peer:
                xff_prior.append(value)
        elif act == VIA:
            via_prior = value if via_prior is None else via_prior + b", " + value
    if ex.host_count == 0 and host:
        out += (b"Host: ", host, b"\r\n")
    # An HTTP/1.0 request without Host: the exchange adds the backend's address.
    ex.host_missing = not host
    if xff_prior or via_prior is not None or memo is None:
        out.append(_forwarding(host, client_ip, peer_ip, scheme, via, xff_prior, via_prior, extra))
    else:
        key = (host, client_ip, extra)
        if memo[0] != key:
            memo[0] = key
            memo[1] = _forwarding(host, client_ip, peer_ip, scheme, via, xff_prior, None, extra)
        out.append(memo[1])  # type: ignore[arg-type]
    out += (b"X-Request-Id: ", request_id, b"\r\n")
    if ex.chunked:
        ex.body_chunked_out = True
        out.append(b"Transfer-Encoding: chunked\r\n")
    elif ex.declared_len >= 0:
        out.append(b"Content-Length: %d\r\n" % ex.declared_len)
    elif ex.method in ("POST", "PUT", "PATCH"):
        out.append(b"Content-Length: 0\r\n")
    if ex.want_upgrade and ex.upgrade is not None:
        out += (b"Connection: upgrade\r\nUpgrade: ", ex.upgrade, b"\r\n")
    out.append(b"\r\n")
    return b"".join(out)


def _forwarding(host: bytes, client_ip: str, peer_ip: str, scheme: bytes, via: bytes,
                xff_prior: list[bytes], via_prior: bytes | None,
                extra: list[tuple[bytes, bytes]]) -> bytes:
    """The fields the node sets: X-Forwarded-For/-Proto/-Host, X-Real-IP, Via, `extra`."""
    out = [b"X-Forwarded-For: ", b", ".join([*xff_prior, peer_ip.encode()]),
           b"\r\nX-Forwarded-Proto: ", scheme, b"\r\n"]
    if host:
        out += (b"X-Forwarded-Host: ", host, b"\r\n")
    out += (b"X-Real-IP: ", client_ip.encode(), b"\r\nVia: ")
    if via_prior:
        out += (via_prior, b", ")
    out += (via, b"\r\n")
    for name, value in extra:
        out += (name, b": ", value, b"\r\n")
    return b"".join(out)


_KEEP = frozenset({b"host", b"x-forwarded-for", b"via"})


def client_from_xff(ex: Exchange, peer_ip: str, is_trusted: Callable[[str], bool]) -> str:
    """The rightmost address in X-Forwarded-For that is not a trusted proxy.

    Walks right to left from the (trusted) peer; an entry that is not an IP
    address ends the walk at the last good hop: a broken or forged chain never
    becomes the client address (nor a GeoIP key)."""
    chain: list[str] = []
    for ln, v in ex.headers:
        if ln == b"x-forwarded-for":
            chain.extend(p.strip() for p in v.decode("latin-1").split(","))
    client = peer_ip
    for entry in reversed(chain):
        addr = _ip_of(entry)
        if addr is None:
            break
        client = addr
        if not is_trusted(addr):
            break
    return client


def _ip_of(entry: str) -> str | None:
    """'1.2.3.4', '1.2.3.4:80', '2001:db8::1', '[2001:db8::1]:80' -> the address."""
    if entry.startswith("["):
        entry = entry[1:entry.find("]")] if "]" in entry else ""
    elif entry.count(":") == 1:
        entry = entry.partition(":")[0]
    try:
        return str(ipaddress.ip_address(entry))
    except ValueError:
        return None


# build_upstream_head in C (proxy/_hotpath.c) when it was built: the same
# bytes and flags (tests/unit/test_upstream_head.py compares the two); it
# hands this file's version, the reference, what it does not do itself.
build_upstream_head_py = build_upstream_head
build_upstream_head = attach("proxy._hotpath", lambda c: c.setup_head(  # noqa: F811
    Exchange, build_upstream_head_py, _KEEP, (SKIP, XFF, VIA, HOST))) or build_upstream_head_py

# check_head's common case in C (the Python function, the reference, does the rest)
check_head_py = check_head
check_head = attach("proxy._hotpath", lambda c: c.setup_check(  # noqa: F811
    Exchange, check_head_py, URI_CHARS)) or check_head_py

__all__ = ["check_head", "build_upstream_head", "client_from_xff", "header_actions"]
