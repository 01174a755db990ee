"""Known answers from MaxMind's own test databases (../shared/geodb, from
maxmind/MaxMind-DB test-data). Skipped when that folder is absent."""

from __future__ import annotations

from pathlib import Path

import pytest

from geodb import UNKNOWN, GeoDB, GeoRecord


@pytest.fixture
def city(shared_geodb: Path) -> GeoDB:
    return GeoDB.open(city=shared_geodb / "GeoIP2-City-Test.mmdb")


def test_london(city: GeoDB) -> None:
    assert city.lookup("81.2.69.142") == GeoRecord(
        country="GB", continent="EU", lat=51.5142, lon=-0.0931, subdivision="ENG", city="London"
    )


@pytest.mark.parametrize(
    ("ip", "country", "continent", "city_name"),
    [
        ("89.160.20.112", "SE", "EU", "Linköping"),
        ("216.160.83.56", "US", "NA", "Milton"),
        ("175.16.199.1", "CN", "AS", "Changchun"),
        ("214.0.1.1", "AU", "OC", "Melbourne"),
        ("2001:218::1", "JP", "AS", None),
        ("2a02:d000::1", "CH", "EU", None),
    ],
)
def test_city_known_answers(city: GeoDB, ip: str, country: str, continent: str, city_name: str | None) -> None:
    rec = city.lookup(ip)
    assert (rec.country, rec.continent, rec.city) == (country, continent, city_name)
    assert rec.lat is not None and rec.lon is not None


def test_jp_location(city: GeoDB) -> None:
    rec = city.lookup("2001:218::1")
    assert (rec.lat, rec.lon) == (35.68536, 139.75309)


@pytest.mark.parametrize("ip", ["1.1.1.1", "10.0.0.1", "2001:db8::1"])
def test_absent(city: GeoDB, ip: str) -> None:
    assert city.lookup(ip) is UNKNOWN


def test_ipv4_mapped(city: GeoDB) -> None:
    assert city.lookup("::ffff:81.2.69.142") == city.lookup("81.2.69.142")
    assert city.cache_len == 1


def test_geolite2_city_and_country_databases(shared_geodb: Path) -> None:
    lite = GeoDB.open(city=shared_geodb / "GeoLite2-City-Test.mmdb")
    assert lite.lookup("216.160.83.56")[:6] == ("US", "NA", 47.2513, -122.3149, "WA", "Milton")
    country = GeoDB.open(city=shared_geodb / "GeoIP2-Country-Test.mmdb")
    assert country.lookup("81.2.69.142") == GeoRecord(country="GB", continent="EU")
    assert country.database_types == {"city": "GeoIP2-Country"}


def test_asn(shared_geodb: Path) -> None:
    # GeoLite2-ASN-Test.json: 1.0.0.0/24 -> 15169 Google Inc.; 2003::/19 -> 3320 Deutsche Telekom AG
    asn = GeoDB.open(asn=shared_geodb / "GeoLite2-ASN-Test.mmdb")
    assert asn.lookup("1.0.0.1") == GeoRecord(asn=15169, as_org="Google Inc.")
    assert asn.lookup("2003::1") == GeoRecord(asn=3320, as_org="Deutsche Telekom AG")
    assert asn.lookup("10.0.0.1") is UNKNOWN


def test_anonymous(shared_geodb: Path) -> None:
    # GeoIP2-Anonymous-IP-Test.json
    anon = GeoDB.open(anonymous=shared_geodb / "GeoIP2-Anonymous-IP-Test.mmdb")
    assert anon.lookup("1.124.213.1") == GeoRecord(is_anonymous=True, is_anonymous_vpn=True, is_tor_exit_node=True)
    assert anon.lookup("6.1.0.2") == GeoRecord(is_anonymous=True, is_hosting_provider=True)
    assert anon.lookup("abcd:1000::1") == GeoRecord(is_anonymous=True, is_public_proxy=True)
    assert anon.lookup("1.1.1.1") is UNKNOWN


def test_all_three_merged(shared_geodb: Path) -> None:
    geo = GeoDB.open(
        city=shared_geodb / "GeoIP2-City-Test.mmdb",
        asn=shared_geodb / "GeoLite2-ASN-Test.mmdb",
        anonymous=shared_geodb / "GeoIP2-Anonymous-IP-Test.mmdb",
    )
    rec = geo.lookup("89.160.20.112")
    assert (rec.country, rec.city, rec.asn, rec.as_org) == ("SE", "Linköping", 29518, "Bredband2 AB")
    london = geo.lookup("::ffff:81.2.69.142")
    assert london.city == "London"
    assert london[8:] == (True, True, True, True, True)
    assert set(geo.build_epochs) == {"city", "asn", "anonymous"}
