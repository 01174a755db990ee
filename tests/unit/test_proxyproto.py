"""PROXY protocol v1/v2 header parsing (haproxy's proxy-protocol.txt), no sockets."""
from __future__ import annotations

import ipaddress
import socket
import struct

import pytest

from proxy.proxyproto import V2_SIG, ProxyHeaderError, parse_proxy_header


def v2(cmd: int = 1, fam: int = 0x11, body: bytes | None = None, version: int = 2) -> bytes:
    if body is None:
        body = (socket.inet_aton("203.0.113.9") + socket.inet_aton("10.0.0.1")
                + struct.pack("!HH", 51000, 443))
    return V2_SIG + bytes([(version << 4) | cmd, fam]) + struct.pack("!H", len(body)) + body


def v2_ipv6(src: str, dst: str = "2001:db8::1", sport: int = 4000) -> bytes:
    body = (ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address(dst).packed
            + struct.pack("!HH", sport, 443))
    return v2(fam=0x21, body=body)


@pytest.mark.parametrize("line,addr", [
    (b"PROXY TCP4 203.0.113.9 10.0.0.1 51000 443\r\n", ("203.0.113.9", 51000)),
    (b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 443\r\n", ("2001:db8::7", 4000)),
    (b"PROXY UNKNOWN\r\n", None),
    (b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", None),
])
def test_v1_valid(line: bytes, addr: tuple[str, int] | None) -> None:
    assert parse_proxy_header(line + b"GET / HTTP/1.1\r\n") == (addr, len(line))


@pytest.mark.parametrize("line", [
    b"PROXY TCP4 203.0.113.9 10.0.0.1 51000\r\n",          # missing a port
    b"PROXY TCP4 203.0.113.9 10.0.0.1 51000 443 x\r\n",    # extra field
    b"PROXY TCP5 203.0.113.9 10.0.0.1 51000 443\r\n",      # unknown protocol
    b"PROXY TCP4 2001:db8::7 10.0.0.1 51000 443\r\n",      # address family mismatch
    b"PROXY TCP4 203.0.113.9 2001:db8::1 51000 443\r\n",   # destination mismatch too
    b"PROXY TCP6 203.0.113.9 10.0.0.1 51000 443\r\n",
    b"PROXY TCP4 203.0.113.999 10.0.0.1 51000 443\r\n",    # not an address
    b"PROXY TCP4 203.0.113.09 10.0.0.1 51000 443\r\n",     # leading zero (ambiguous octal)
    b"PROXY TCP4 203.0.113.9 10.0.0.1 051000 443\r\n",     # leading zero port
    b"PROXY TCP4 203.0.113.9 10.0.0.1 70000 443\r\n",      # port out of range
    b"PROXY TCP4 203.0.113.9 10.0.0.1 -1 443\r\n",
    b"PROXY  TCP4 203.0.113.9 10.0.0.1 1 443\r\n",         # double space
    b"PROXY TCP4 203.0.113.9 10.0.0.1 1 443\n",            # LF only: not the end of the line
    b"PROXI TCP4 203.0.113.9 10.0.0.1 1 443\r\n",
    b"GET / HTTP/1.1\r\n",                                 # no PROXY header at all
])
def test_v1_invalid(line: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        parse_proxy_header(line + b"\r\n")


def test_v1_incomplete_then_too_long() -> None:
    assert parse_proxy_header(b"PRO") is None
    assert parse_proxy_header(b"PROXY TCP4 203.0.113.9") is None
    with pytest.raises(ProxyHeaderError):
        parse_proxy_header(b"PROXY TCP4 " + b"1" * 120)


def test_v2_ipv4_and_ipv6() -> None:
    h = v2()
    assert parse_proxy_header(h + b"GET") == (("203.0.113.9", 51000), len(h))
    h6 = v2_ipv6("2001:db8::7")
    assert parse_proxy_header(h6) == (("2001:db8::7", 4000), len(h6))
    mapped = v2_ipv6("::ffff:198.51.100.3")
    assert parse_proxy_header(mapped) == (("198.51.100.3", 4000), len(mapped))


def test_v2_tlvs_are_skipped() -> None:
    body = (socket.inet_aton("203.0.113.9") + socket.inet_aton("10.0.0.1") + struct.pack("!HH", 1, 2)
            + b"\x04\x00\x03abc")   # PP2_TYPE_NOOP with 3 bytes
    h = v2(body=body)
    assert parse_proxy_header(h + b"rest") == (("203.0.113.9", 1), len(h))


def test_v2_local_and_unspec_keep_the_socket_peer() -> None:
    local = v2(cmd=0, fam=0x00, body=b"")
    assert parse_proxy_header(local) == (None, 16)
    unspec = v2(cmd=1, fam=0x00, body=b"")
    assert parse_proxy_header(unspec) == (None, 16)
    unix = v2(cmd=1, fam=0x31, body=b"\x00" * 216)
    assert parse_proxy_header(unix) == (None, 16 + 216)


@pytest.mark.parametrize("n", [1, 5, 12, 13, 15, 16, 20, 27])
def test_v2_incomplete(n: int) -> None:
    assert parse_proxy_header(v2()[:n]) is None


@pytest.mark.parametrize("data", [
    v2(version=1),
    v2(version=3),
    v2(cmd=2),
    v2(fam=0x12),                          # UDP on a stream listener
    v2(fam=0x11, body=b"\x01" * 8),        # too short for IPv4 addresses and ports
    v2(fam=0x21, body=b"\x01" * 20),       # too short for IPv6
    v2(fam=0x41),                          # unknown family
    b"\r\n\r\n\x00\r\nQUIX\n" + b"\x21\x11\x00\x0c" + b"\x00" * 12,   # bad signature
])
def test_v2_invalid(data: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        parse_proxy_header(data)
