"""HTTP/1.1 wire constants and the short error responses the node sends itself."""
from __future__ import annotations

import re

# RFC 9110 7.6.1 and the de-facto ones: never forwarded, whatever Connection says.
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
    b"transfer-encoding", b"upgrade", b"proxy-authenticate", b"proxy-authorization",
})

# Request headers the node sets itself: a client's copy is dropped, never merged.
NODE_SET_REQUEST = frozenset({b"x-forwarded-proto", b"x-forwarded-host", b"x-real-ip",
                              b"x-request-id", b"forwarded"})

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})

REASONS = {
    100: "Continue", 101: "Switching Protocols", 200: "OK", 204: "No Content",
    304: "Not Modified", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 408: "Request Timeout", 411: "Length Required",
    413: "Content Too Large", 414: "URI Too Long", 417: "Expectation Failed",
    421: "Misdirected Request", 429: "Too Many Requests", 431: "Request Header Fields Too Large",
    451: "Unavailable For Legal Reasons", 500: "Internal Server Error", 501: "Not Implemented",
    502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}

CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"


def error_response(status: int, reason: str, request_id: str, *, close: bool,
                   head_only: bool = False,
                   extra: list[tuple[bytes, bytes]] | None = None) -> bytes:
    """A short text/plain answer that says which error it is.

    The body is one line: ``<status> <phrase>: <reason>``; the same reason is in
    the ``X-NovaEdge-Error`` header for machines.
    """
    phrase = REASONS.get(status, "Error")
    body = f"{status} {phrase}: {reason}\n".encode()
    lines = [
        f"HTTP/1.1 {status} {phrase}".encode(),
        b"Content-Type: text/plain; charset=utf-8",
        b"Content-Length: " + str(len(body)).encode(),
        b"X-Request-Id: " + request_id.encode(),
        b"X-NovaEdge-Error: " + reason.encode("ascii", "replace"),
        b"Cache-Control: no-store",
    ]
    if extra:
        lines.extend(n + b": " + v for n, v in extra)
    if close:
        lines.append(b"Connection: close")
    head = b"\r\n".join(lines) + b"\r\n\r\n"
    return head if head_only else head + body


def connection_tokens(value: bytes) -> set[bytes]:
    return {t.strip().lower() for t in value.split(b",") if t.strip()}


# RFC 9110 5.6.2 tchar, for token checks llhttp does not do for us (bytes: for translate()).
TCHAR = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
# RFC 3986 characters of an origin-form target: pchar / "/" / "?" (pct-encoded checked apart).
URI_CHARS = (b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
             b"-._~!$&'()*+,;=:@/?%")
_PCT = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_HOST_OK = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=%:[]"


def valid_host(value: bytes) -> bool:
    """RFC 3986 authority without userinfo: reg-name/IPv4/[IPv6] and an optional port."""
    if not value or len(value) > 255:
        return False
    if value.translate(None, _HOST_OK):
        return False
    if value.startswith(b"["):
        end = value.find(b"]")
        if end < 0:
            return False
        rest = value[end + 1:]
        port = rest[1:]
        return not rest or (rest[:1] == b":" and (not port or (port.isdigit() and int(port) <= 65535)))
    host, _, port = value.partition(b":")
    if b"[" in value or b"]" in value or not host:
        return False
    return not port or (port.isdigit() and int(port) <= 65535)


def split_host(value: bytes) -> str:
    """Host header -> lower-case host without port."""
    v = value.decode("latin-1").lower()
    if v.startswith("["):
        return v[: v.find("]") + 1]
    return v.partition(":")[0]


def valid_target(target: bytes) -> bool:
    """An origin-form path and query made only of RFC 3986 characters, with
    well-formed percent-encoding (llhttp lets through "\\" and "%zz", which
    backends normalize differently: a path-ACL bypass)."""
    return not target.translate(None, URI_CHARS) and (b"%" not in target or not _PCT.search(target))
