"""GeoIP in the hot path: geo headers (unspoofable), country deny, data residency.

Clients bind to 127.x addresses that the test's own database maps to countries.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from geodb import build_city_db
from tests.support.backend import TestBackend
from tests.support.node import node_config, raw_exchange, run_node, statuses

ENTRIES = [
    {"network": "127.0.0.0/8", "country": "ZA"},
    {"network": "127.2.0.0/16", "country": "DE", "lat": 50.1, "lon": 8.7},
    {"network": "127.3.0.0/16", "country": "US", "lat": 38.9, "lon": -77.0, "asn": 64500},
    {"network": "127.4.0.0/16", "country": "KP"},
]


@pytest.fixture
def geodb_path(tmp_path: Path) -> str:
    return str(build_city_db(ENTRIES, tmp_path / "city.mmdb"))


async def get(port: int, src: str, path: str = "/", extra: bytes = b"") -> tuple[int, dict | None, bytes]:
    raw = await raw_exchange(port, b"GET " + path.encode() + b" HTTP/1.1\r\nHost: app\r\n" + extra +
                             b"Connection: close\r\n\r\n", local_addr=(src, 0))
    st = statuses(raw)
    body = raw.partition(b"\r\n\r\n")[2]
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    return (st[0] if st else 0), doc, raw


def hdr(doc: dict, name: str) -> list[str]:
    return [v for n, v in doc["headers"] if n.lower() == name.lower()]


async def test_geo_headers_replace_client_copies(geodb_path: str) -> None:
    us = await TestBackend.start("us")
    try:
        cfg = node_config([us.address], geoip={"city": geodb_path})
        async with run_node(cfg) as node:
            port = node.listeners[0].port
            status, doc, _ = await get(port, "127.2.0.9", extra=b"X-Client-Country: US\r\n")
            assert status == 200 and doc is not None
            assert hdr(doc, "X-Client-Country") == ["DE"]   # the spoofed US copy is gone
            assert hdr(doc, "X-Client-Continent") == ["EU"]
            assert hdr(doc, "X-Edge-Region") == ["us-east-1"]
            status, doc, _ = await get(port, "127.3.0.9")
            assert doc is not None and hdr(doc, "X-Client-Country") == ["US"]
            assert hdr(doc, "X-Client-ASN") == ["64500"]
    finally:
        await us.stop()


async def test_country_deny_answers_451(geodb_path: str) -> None:
    us = await TestBackend.start("us")
    try:
        cfg = node_config([us.address], geoip={"city": geodb_path, "deny_countries": ["KP"]})
        async with run_node(cfg) as node:
            status, _, raw = await get(node.listeners[0].port, "127.4.0.1")
            assert status == 451 and b"not available in KP" in raw
            assert us.stats.requests == 0
            status, _, _ = await get(node.listeners[0].port, "127.3.0.1")
            assert status == 200
    finally:
        await us.stop()


async def test_routes_match_on_country(geodb_path: str) -> None:
    us, eu = await TestBackend.start("us"), await TestBackend.start("eu")
    try:
        cfg = node_config([us.address], geoip={"city": geodb_path},
                          pools={"default": {"regions": {"us-east-1": [us.address]}},
                                 "eu": {"regions": {"eu-west-1": [eu.address]}}},
                          routes=[{"name": "eu-only", "pool": "eu", "match": {"continents": ["EU"]}},
                                  {"name": "default", "pool": "default"}])
        async with run_node(cfg) as node:
            _, doc, _ = await get(node.listeners[0].port, "127.2.0.1")
            assert doc is not None and doc["backend"] == "eu"
            _, doc, _ = await get(node.listeners[0].port, "127.3.0.1")
            assert doc is not None and doc["backend"] == "us"
    finally:
        await us.stop()
        await eu.stop()


async def test_residency_never_leaves_the_jurisdiction(geodb_path: str) -> None:
    """EU clients go only to EU regions, even when the local (US) region is the
    preferred one and when every EU region is down: then a clear 503."""
    us, eu = await TestBackend.start("us"), await TestBackend.start("eu")
    try:
        cfg = node_config({"us-east-1": [us.address], "eu-west-1": [eu.address]},
                          geoip={"city": geodb_path},
                          jurisdictions={"gdpr": {"countries": ["DE", "FR"],
                                                  "regions": ["eu-west-1", "eu-central-1"]}})
        async with run_node(cfg) as node:
            port = node.listeners[0].port
            for _ in range(5):
                _, doc, _ = await get(port, "127.2.0.7")
                assert doc is not None and doc["backend"] == "eu"
                _, doc, _ = await get(port, "127.3.0.7")
                assert doc is not None and doc["backend"] == "us"
            await eu.stop()
            served_us = us.stats.requests
            seen = []
            for _ in range(6):
                status, _, raw = await get(port, "127.2.0.7")
                seen.append(status)
                # The requests that find the EU backend dead get its 502; once it is
                # known down, the answer is the jurisdiction's 503.
                assert status in (502, 503), raw
            assert seen[-1] == 503 and b"jurisdiction gdpr" in raw
            assert us.stats.requests == served_us   # never a silent violation
    finally:
        await us.stop()
        await eu.stop()


async def test_unknown_clients_get_the_configured_default(tmp_path: Path) -> None:
    db = str(build_city_db([{"network": "127.2.0.0/16", "country": "DE"}], tmp_path / "c.mmdb"))
    us = await TestBackend.start("us")
    try:
        cfg = node_config([us.address], geoip={"city": db, "unknown_country": "US"})
        async with run_node(cfg) as node:
            _, doc, _ = await get(node.listeners[0].port, "127.9.0.1")
            assert doc is not None and hdr(doc, "X-Client-Country") == ["US"]
            assert hdr(doc, "X-Client-Continent") == ["NA"]
    finally:
        await us.stop()
