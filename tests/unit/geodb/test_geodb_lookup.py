"""GeoDB.lookup against databases the tests build: known answers, merging,
address normalisation, bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mmdb_writer import MMDBWriter
from netaddr import IPSet  # type: ignore[import-untyped]

from geodb import UNKNOWN, GeoDB, GeoDBError, GeoRecord

from geodb_testdata import CITY_ENTRIES, Build


def test_known_answers_all_fields(city_db: Path) -> None:
    geo = GeoDB.open(city=city_db)
    assert geo.lookup("127.2.0.5") == GeoRecord(
        country="DE", continent="EU", lat=50.1, lon=8.7, subdivision="HE", city="Frankfurt"
    )
    # the most specific network wins, though it was listed after its supernet
    assert geo.lookup("127.2.3.4") == GeoRecord(country="FR", continent="EU", city="Paris")
    assert geo.lookup("127.9.9.9") == GeoRecord(country="ZA", continent="AF")
    assert geo.lookup("2001:db8:1::77") == GeoRecord(country="CH", continent="EU", city="Bern")


def test_asn_and_anonymous_fields_of_a_city_record(city_db: Path) -> None:
    geo = GeoDB.open(city=city_db)
    us = geo.lookup("127.3.0.1")
    assert (us.country, us.continent, us.lat, us.lon, us.asn, us.as_org) == ("US", "NA", 38.9, -77.0, 64500, "Example")
    jp = geo.lookup("127.4.0.1")
    assert jp.is_anonymous and jp.is_tor_exit_node
    assert not (jp.is_anonymous_vpn or jp.is_hosting_provider or jp.is_public_proxy)


def test_ipv6_that_only_looks_mapped_is_looked_up_as_ipv6(build: Build) -> None:
    geo = GeoDB.open(city=build([{"network": "::ffff:0:0:0/96", "country": "SE"}, *CITY_ENTRIES]))
    assert geo.lookup("::ffff:0:127.2.0.5").country == "SE"  # IPv4-translated, not IPv4-mapped
    assert geo.lookup("::ffff:127.2.0.5").country == "DE"
    assert geo.lookup("::ffff:::127.2.0.5") is UNKNOWN  # not an address at all


def test_absent_address_is_the_unknown_object(city_db: Path) -> None:
    geo = GeoDB.open(city=city_db)
    for ip in ("10.0.0.1", "8.8.8.8", "2001:db8:2::1", "::1"):
        assert geo.lookup(ip) is UNKNOWN


def test_unknown_is_all_empty() -> None:
    assert all(value is None for value in UNKNOWN[:8])
    assert all(value is False for value in UNKNOWN[8:])
    assert len(UNKNOWN) == 13


@pytest.mark.parametrize(
    "spelling",
    ["::ffff:127.2.0.5", "::FFFF:127.2.0.5", "0:0:0:0:0:ffff:127.2.0.5", "::ffff:7f02:5"],
)
def test_ipv4_mapped_resolves_as_ipv4_and_caches_under_ipv4(build: Build, spelling: str) -> None:
    # without the ::ffff:0:0/96 alias in the file, only normalisation can find it
    db = build(CITY_ENTRIES, ipv4_mapped_alias=False)
    geo = GeoDB.open(city=db)
    rec = geo.lookup(spelling)
    assert rec.country == "DE" and rec.city == "Frankfurt"
    assert geo.lookup("127.2.0.5") is rec  # one cache entry, keyed by the IPv4 form
    assert geo.cache_len == 1


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "garbage",
        "127.2.0",
        "127.2.0.5.1",
        "256.1.1.1",
        "0127.2.0.5",
        " 127.2.0.5",
        "127.2.0.5 ",
        "127.2.0.5/32",
        "127.2.0.5:80",
        "fe80::1%eth0",
        "2001:db8:1::1::1",
        "127.2.0.5\x00",
        None,
        5,
        b"127.2.0.5",
        ["127.2.0.5"],
        object(),
    ],
)
def test_invalid_input_is_unknown_and_not_cached(city_db: Path, bad: Any) -> None:
    geo = GeoDB.open(city=city_db)
    assert geo.lookup(bad) is UNKNOWN
    assert geo.cache_len == 0


def test_merge_city_asn_anonymous(build: Build, city_db: Path) -> None:
    asn = build(
        [{"network": "127.2.0.0/16", "asn": 64501, "as_org": "Main ASN"}, {"network": "127.3.0.0/16", "asn": 64502}],
        "asn.mmdb",
        database_type="GeoLite2-ASN",
    )
    anon = build(
        [{"network": "127.2.0.0/24", "is_anonymous": True, "is_anonymous_vpn": True, "is_public_proxy": True}],
        "anon.mmdb",
        database_type="GeoIP2-Anonymous-IP",
    )
    geo = GeoDB.open(city=city_db, asn=asn, anonymous=anon)
    assert geo.database_types == {"city": "GeoIP2-City", "asn": "GeoLite2-ASN", "anonymous": "GeoIP2-Anonymous-IP"}
    assert geo.lookup("127.2.0.9") == GeoRecord(
        country="DE",
        continent="EU",
        lat=50.1,
        lon=8.7,
        subdivision="HE",
        city="Frankfurt",
        asn=64501,
        as_org="Main ASN",
        is_anonymous=True,
        is_anonymous_vpn=True,
        is_public_proxy=True,
    )
    # the ASN database wins over ASN fields found in the City record
    assert geo.lookup("127.3.0.1").asn == 64502
    # found only in the ASN database
    assert GeoDB.open(asn=asn).lookup("127.2.1.1") == GeoRecord(asn=64501, as_org="Main ASN")


def test_no_database_answers_unknown() -> None:
    geo = GeoDB.open()
    assert geo.lookup("127.2.0.5") is UNKNOWN
    assert geo.build_epochs == {}


def test_ipv6_lookup_in_ipv4_only_database_is_unknown(tmp_path: Path) -> None:
    writer = MMDBWriter(ip_version=4, database_type="GeoIP2-Country", languages=["en"], description="v4")
    writer.insert_network(IPSet(["127.2.0.0/16"]), {"country": {"iso_code": "DE"}})
    writer.to_db_file(str(tmp_path / "v4.mmdb"))
    geo = GeoDB.open(city=tmp_path / "v4.mmdb")
    assert geo.lookup("127.2.0.1").country == "DE"
    assert geo.lookup("::ffff:127.2.0.1").country == "DE"
    assert geo.lookup("2001:db8:1::1") is UNKNOWN
    assert geo.lookup_errors == 0


def test_open_refuses_wrong_kind_and_bad_files(build: Build, city_db: Path, tmp_path: Path) -> None:
    asn = build([{"network": "127.2.0.0/16", "asn": 1}], "asn.mmdb", database_type="GeoLite2-ASN")
    with pytest.raises(GeoDBError, match="not a city database"):
        GeoDB.open(city=asn)
    with pytest.raises(GeoDBError, match="not a asn database"):
        GeoDB.open(asn=city_db)
    with pytest.raises(GeoDBError, match="not a anonymous database"):
        GeoDB.open(anonymous=city_db)
    with pytest.raises(GeoDBError, match="cannot open"):
        GeoDB.open(city=tmp_path / "missing.mmdb")
    garbage = tmp_path / "garbage.mmdb"
    garbage.write_bytes(b"\x00\x01not a database" * 100)
    with pytest.raises(GeoDBError, match="cannot open"):
        GeoDB.open(city=garbage)


def test_corrupt_record_beyond_validation_counts_an_error_and_never_raises(build: Build) -> None:
    # 20 networks; validation decodes only the first 16, so a broken 20th passes it
    entries = [{"network": f"127.{10 + i}.0.0/16", "country": "DE", "city": f"Town{10 + i}"} for i in range(20)]
    path = build(entries)
    raw = bytearray(path.read_bytes())
    at = raw.index(b"\x46Town29")  # control byte: string (2 << 5) of 6 bytes
    raw[at] = 0x06  # "extended type" whose next byte ('T') names no type
    path.write_bytes(bytes(raw))
    geo = GeoDB.open(city=path)
    assert geo.lookup("127.10.0.1").city == "Town10"
    assert geo.lookup("127.29.0.1") is UNKNOWN
    assert geo.lookup_errors == 1
