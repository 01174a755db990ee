"""PROXY protocol v1 (text) and v2 (binary) headers, from trusted L4 tiers only.

A pure function of the bytes received so far: returns None while incomplete,
((client_ip, client_port) | None, bytes_consumed) when complete, and raises
ProxyHeaderError on anything malformed. A LOCAL command or UNKNOWN family
yields None for the address: the socket peer stands (haproxy's spec, 2.1/2.2).
"""
from __future__ import annotations

import ipaddress
import struct

V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"
V1_MAX = 107


class ProxyHeaderError(Exception):
    pass


def parse_proxy_header(buf: bytes) -> tuple[tuple[str, int] | None, int] | None:
    if buf[:1] == b"P":
        if not b"PROXY "[: len(buf)] == buf[:6]:
            raise ProxyHeaderError("not a PROXY header")
        return _v1(buf)
    if buf[:1] == b"\r":
        if V2_SIG[: len(buf)] != buf[:12]:
            raise ProxyHeaderError("bad v2 signature")
        return _v2(buf)
    if buf:
        raise ProxyHeaderError("missing PROXY header")
    return None


def _v1(buf: bytes) -> tuple[tuple[str, int] | None, int] | None:
    end = buf.find(b"\r\n")
    if end < 0:
        if len(buf) >= V1_MAX:
            raise ProxyHeaderError("v1 line too long")
        return None
    if end + 2 > V1_MAX:
        raise ProxyHeaderError("v1 line too long")
    parts = buf[:end].split(b" ")
    if len(parts) >= 2 and parts[1] == b"UNKNOWN":
        return None, end + 2
    if len(parts) != 6 or parts[1] not in (b"TCP4", b"TCP6"):
        raise ProxyHeaderError("bad v1 line")
    try:
        src = ipaddress.ip_address(parts[2].decode("ascii"))
        dst = ipaddress.ip_address(parts[3].decode("ascii"))
        sport, dport = int(parts[4]), int(parts[5])
    except ValueError:
        raise ProxyHeaderError("bad v1 address") from None
    v4 = parts[1] == b"TCP4"
    if (src.version == 4) != v4 or (dst.version == 4) != v4 \
            or not (0 <= sport < 65536 and 0 <= dport < 65536) \
            or parts[4] != str(sport).encode() or parts[5] != str(dport).encode():
        raise ProxyHeaderError("bad v1 address")
    return (str(src), sport), end + 2


def _v2(buf: bytes) -> tuple[tuple[str, int] | None, int] | None:
    if len(buf) < 16:
        return None
    ver_cmd, fam, length = buf[12], buf[13], struct.unpack("!H", buf[14:16])[0]
    if ver_cmd >> 4 != 2:
        raise ProxyHeaderError("bad v2 version")
    if len(buf) < 16 + length:
        return None
    total = 16 + length
    cmd = ver_cmd & 0x0F
    if cmd == 0:   # LOCAL: health check from the proxy itself
        return None, total
    if cmd != 1:
        raise ProxyHeaderError("bad v2 command")
    body = buf[16:total]
    if fam == 0x11:     # TCP over IPv4
        if length < 12:
            raise ProxyHeaderError("short v2 IPv4 block")
        src = ipaddress.IPv4Address(body[0:4])
        sport = struct.unpack("!H", body[8:10])[0]
        return (str(src), sport), total
    if fam == 0x21:     # TCP over IPv6
        if length < 36:
            raise ProxyHeaderError("short v2 IPv6 block")
        src6 = ipaddress.IPv6Address(body[0:16])
        sport = struct.unpack("!H", body[32:34])[0]
        mapped = src6.ipv4_mapped
        return (str(mapped) if mapped else str(src6), sport), total
    if fam in (0x00, 0x31):
        # UNSPEC, or a UNIX socket on the far side: no IP to believe, the socket peer stands.
        return None, total
    raise ProxyHeaderError("unsupported v2 address family")
