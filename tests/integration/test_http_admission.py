"""Admission: PROXY protocol v1/v2 from the trusted L4 tier only, and TLS
termination with several certificates chosen by SNI."""
from __future__ import annotations

import datetime
import json
import socket
import ssl
import struct
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from proxy.proxyproto import V2_SIG
from tests.support.harness import harness
from tests.support.http import exchange, request

PP_LISTENER = {"bind": "127.0.0.1:0", "proxy_protocol": True, "proxy_protocol_from": ["127.0.0.1/32"]}


def xff(body: bytes) -> tuple[list[str], list[str]]:
    doc = json.loads(body)
    get = lambda name: [v for n, v in doc["headers"] if n.lower() == name]  # noqa: E731
    return get("x-forwarded-for"), get("x-real-ip")


def v2_header(src: str, sport: int, cmd: int = 1) -> bytes:
    body = socket.inet_aton(src) + socket.inet_aton("127.0.0.1") + struct.pack("!HH", sport, 80)
    if cmd == 0:
        body = b""
    return V2_SIG + bytes([0x20 | cmd, 0x11 if cmd else 0x00]) + struct.pack("!H", len(body)) + body


async def test_proxy_v1_sets_the_client_address() -> None:
    async with harness(listeners=[PP_LISTENER]) as h:
        pp = b"PROXY TCP4 203.0.113.9 127.0.0.1 51000 80\r\n"
        resps, _raw, _closed = await exchange(h.port, pp + request("GET", "/") + request("GET", "/"), expect=2)
        assert [r.status for r in resps] == [200, 200]
        for r in resps:
            assert xff(r.body) == (["203.0.113.9"], ["203.0.113.9"])


async def test_proxy_v2_sets_the_client_address_even_split() -> None:
    async with harness(listeners=[PP_LISTENER]) as h:
        hdr = v2_header("198.51.100.4", 40000)
        pieces = [hdr[:7], hdr[7:20], hdr[20:] + request("GET", "/")[:10], request("GET", "/")[10:]]
        resps, _raw, _closed = await exchange(h.port, pieces, gap=0.02)
        assert xff(resps[0].body) == (["198.51.100.4"], ["198.51.100.4"])


async def test_proxy_v2_local_keeps_the_socket_address() -> None:
    async with harness(listeners=[PP_LISTENER]) as h:
        resps, _raw, _closed = await exchange(h.port, v2_header("0.0.0.0", 0, cmd=0) + request("GET", "/"))
        assert xff(resps[0].body) == (["127.0.0.1"], ["127.0.0.1"])


async def test_proxy_header_refused_from_an_untrusted_peer() -> None:
    async with harness(listeners=[PP_LISTENER]) as h:
        pp = b"PROXY TCP4 203.0.113.9 127.0.0.1 51000 80\r\n"
        resps, raw, closed = await exchange(h.port, pp + request("GET", "/"), local_addr=("127.0.0.2", 0))
        assert resps == [] and raw == b"" and closed
        assert h.backend.stats.requests == 0


@pytest.mark.parametrize("data", [
    request("GET", "/"),                                        # no PROXY header at all
    b"PROXY TCP4 203.0.113.9 127.0.0.1 51000\r\n" + request("GET", "/"),
    b"PROXY TCP4 " + b"9" * 200,
])
async def test_missing_or_bad_proxy_header_is_400(data: bytes) -> None:
    async with harness(listeners=[PP_LISTENER]) as h:
        resps, _raw, closed = await exchange(h.port, data)
        assert [r.status for r in resps] == [400] and closed
        assert resps[0].header("x-novaedge-error", ).startswith("bad PROXY header")  # type: ignore[union-attr]
        assert h.backend.stats.requests == 0


async def test_proxy_header_not_expected_on_a_plain_listener() -> None:
    async with harness() as h:
        pp = b"PROXY TCP4 203.0.113.9 127.0.0.1 51000 80\r\n"
        resps, _raw, _closed = await exchange(h.port, pp + request("GET", "/"))
        assert [r.status for r in resps] == [501]   # "PROXY" parsed as an (unknown) method
        assert h.backend.stats.requests == 0


# ----------------------------------------------------------------------
# TLS with SNI
# ----------------------------------------------------------------------
def make_cert(tmp: Path, cn: str, names: list[str]) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
            .sign(key, hashes.SHA256()))
    cpath, kpath = tmp / f"{cn}.crt", tmp / f"{cn}.key"
    cpath.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    kpath.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()))
    return str(cpath), str(kpath)


def peer_cn(der: bytes) -> str:
    cert = x509.load_der_x509_certificate(der)
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


@pytest.fixture
def certs(tmp_path: Path) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for cn, names in [("default.test", []), ("a.test", ["a.test"]), ("b.test", ["b.test", "*.c.test"])]:
        c, k = make_cert(tmp_path, cn, names or [cn])
        out.append({"cert": c, "key": k, "server_names": names})
    return out


async def tls_get(port: int, sni: str | None, host: str = "a.test") -> tuple[str, int, bytes]:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    import asyncio
    r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=sni)
    try:
        sslobj = w.get_extra_info("ssl_object")
        cn = peer_cn(sslobj.getpeercert(binary_form=True))
        w.write(request("GET", "/", host=host, headers=[("Connection", "close")]))
        data = await asyncio.wait_for(r.read(), 5)
    finally:
        w.close()
    status = int(data.split(b" ", 2)[1]) if data else 0
    return cn, status, data.partition(b"\r\n\r\n")[2]


async def test_tls_certificate_chosen_by_sni(certs: list[dict[str, object]]) -> None:
    listener = {"bind": "127.0.0.1:0", "tls": certs}
    async with harness(listeners=[listener]) as h:
        for sni, want in [("a.test", "a.test"), ("b.test", "b.test"), ("B.TEST", "b.test"),
                          ("x.c.test", "b.test"), ("other.test", "default.test"), (None, "default.test")]:
            cn, status, body = await tls_get(h.port, sni)
            assert (cn, status) == (want, 200), sni
            doc = json.loads(body)
            assert ["https"] == [v for n, v in doc["headers"] if n.lower() == "x-forwarded-proto"]


async def test_plain_http_to_a_tls_listener_is_refused(certs: list[dict[str, object]]) -> None:
    async with harness(listeners=[{"bind": "127.0.0.1:0", "tls": certs}]) as h:
        resps, _raw, closed = await exchange(h.port, request("GET", "/"), timeout=3)
        assert resps == [] and closed
        assert h.backend.stats.requests == 0


async def test_proxy_protocol_before_tls_on_one_listener(certs: list[dict[str, object]]) -> None:
    """The L4 tier's clear-text PROXY header, then the client's TLS: the node
    starts TLS exactly after the header, and believes the address in it."""
    import asyncio
    listener = {"bind": "127.0.0.1:0", "tls": certs, "proxy_protocol": True,
                "proxy_protocol_from": ["127.0.0.0/8"]}
    async with harness(listeners=[listener]) as h:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        for header in (b"PROXY TCP4 203.0.113.7 127.0.0.1 51000 443\r\n",
                       b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11, 0, 12]) + bytes([203, 0, 113, 8])
                       + bytes([127, 0, 0, 1]) + (51000).to_bytes(2, "big") + (443).to_bytes(2, "big")):
            r, w = await asyncio.open_connection("127.0.0.1", h.port)
            w.write(header)
            await w.drain()
            await w.start_tls(ctx, server_hostname="a.test")
            cn = peer_cn(w.get_extra_info("ssl_object").getpeercert(binary_form=True))
            w.write(request("GET", "/", host="a.test", headers=[("Connection", "close")]))
            data = await asyncio.wait_for(r.read(), 5)
            w.close()
            assert cn == "a.test" and data.startswith(b"HTTP/1.1 200")
            doc = json.loads(data.partition(b"\r\n\r\n")[2])
            xff = [v for n, v in doc["headers"] if n.lower() == "x-forwarded-for"]
            assert xff == ["203.0.113.7" if header[:1] == b"P" else "203.0.113.8"]
        # No header, or not from the L4 tier's network: refused.
        resps, _raw, closed = await exchange(h.port, request("GET", "/"), timeout=3)
        assert resps == [] and closed
