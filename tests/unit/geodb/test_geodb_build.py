"""The database builder (Python API and spec files) and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import maxminddb
import pydantic
import pytest
from geodb_testdata import Build

from geodb import GeoDB, GeoRecord, build_city_db, continent_of, load_spec

REPO = Path(__file__).resolve().parents[3]


def raw_record(path: Path, ip: str) -> object:
    with maxminddb.open_database(str(path)) as reader:
        return reader.get(ip)


def test_record_follows_the_geoip2_city_schema(build: Build) -> None:
    path = build(
        [
            {
                "network": "127.2.0.0/16",
                "country": "DE",
                "lat": 50.1,
                "lon": 8.7,
                "city": "Frankfurt",
                "subdivision": "HE",
                "asn": 64500,
                "as_org": "Example",
                "is_anonymous_vpn": True,
            }
        ]
    )
    assert raw_record(path, "127.2.0.1") == {
        "country": {"iso_code": "DE"},
        "continent": {"code": "EU"},
        "location": {"latitude": 50.1, "longitude": 8.7},
        "city": {"names": {"en": "Frankfurt"}},
        "subdivisions": [{"iso_code": "HE"}],
        "autonomous_system_number": 64500,
        "autonomous_system_organization": "Example",
        "is_anonymous": True,  # set with any other flag, as MaxMind does
        "is_anonymous_vpn": True,
    }
    with maxminddb.open_database(str(path)) as reader:
        meta = reader.metadata()
    assert (meta.database_type, meta.ip_version, meta.languages) == ("GeoIP2-City", 6, ["en"])


def test_narrow_networks_listed_first_still_win(build: Build) -> None:
    path = build(
        [
            {"network": "127.2.3.128/25", "country": "IT"},
            {"network": "127.2.3.0/24", "country": "FR"},
            {"network": "2001:db8:1:2::/64", "country": "BE"},
            {"network": "127.0.0.0/8", "country": "ZA"},
            {"network": "2001:db8::/32", "country": "NL"},
        ]
    )
    geo = GeoDB.open(city=path)
    got = {ip: geo.lookup(ip).country for ip in ("127.2.3.200", "127.2.3.5", "127.9.0.1", "2001:db8:1:2::1", "2001:db8:5::1")}
    assert got == {"127.2.3.200": "IT", "127.2.3.5": "FR", "127.9.0.1": "ZA", "2001:db8:1:2::1": "BE", "2001:db8:5::1": "NL"}


def test_ipv4_is_aliased_under_ipv4_mapped_for_raw_readers(build: Build) -> None:
    aliased = build([{"network": "127.2.0.0/16", "country": "DE"}], "a.mmdb")
    plain = build([{"network": "127.2.0.0/16", "country": "DE"}], "p.mmdb", ipv4_mapped_alias=False)
    assert raw_record(aliased, "::ffff:127.2.0.1") == raw_record(aliased, "127.2.0.1")
    assert raw_record(plain, "::ffff:127.2.0.1") is None
    assert raw_record(plain, "127.2.0.1") is not None


def test_continent_derived_from_country_unless_given(build: Build) -> None:
    path = build(
        [
            {"network": "127.2.0.0/16", "country": "de"},  # lower case is accepted
            {"network": "127.3.0.0/16", "country": "TR", "continent": "EU"},  # explicit wins
            {"network": "127.4.0.0/16", "country": "ZZ"},  # unknown country: no continent
        ]
    )
    geo = GeoDB.open(city=path)
    assert geo.lookup("127.2.0.1") == GeoRecord(country="DE", continent="EU")
    assert geo.lookup("127.3.0.1") == GeoRecord(country="TR", continent="EU")
    assert geo.lookup("127.4.0.1") == GeoRecord(country="ZZ")


def test_continent_map_covers_the_demo_countries() -> None:
    eu_eea = "AT BE BG HR CY CZ DK EE FI FR DE GR HU IE IT LV LT LU MT NL PL PT RO SK SI ES SE IS LI NO"
    for country in eu_eea.split() + ["GB", "CH"]:
        assert continent_of(country) == "EU", country
    expected = {"US": "NA", "CA": "NA", "JP": "AS", "CN": "AS", "IN": "AS", "SG": "AS", "AE": "AS", "BH": "AS",
                "AU": "OC", "BR": "SA", "ZA": "AF"}  # fmt: skip
    assert {c: continent_of(c) for c in expected} == expected


@pytest.mark.parametrize(
    ("entry", "where"),
    [
        ({"network": "127.2.0.1/16", "country": "DE"}, "network"),  # host bits set
        ({"network": "not-a-net"}, "network"),
        ({"network": "127.2.0.0/16", "country": "DEU"}, "country"),
        ({"network": "127.2.0.0/16", "lat": 91.0, "lon": 0.0}, "lat"),
        ({"network": "127.2.0.0/16", "lat": 10.0}, ""),  # lat without lon
        ({"network": "127.2.0.0/16", "asn": -1}, "asn"),
        ({"network": "127.2.0.0/16", "continent": "XX"}, "continent"),
        ({"network": "127.2.0.0/16", "contry": "DE"}, "contry"),  # typo: extra keys are refused
    ],
)
def test_bad_entries_are_refused_with_their_place(tmp_path: Path, entry: dict[str, object], where: str) -> None:
    with pytest.raises(pydantic.ValidationError) as info:
        build_city_db([{"network": "127.9.0.0/16", "country": "ZA"}, entry], tmp_path / "x.mmdb")
    locs = [err["loc"] for err in info.value.errors()]
    assert any(loc[:2] == ("networks", 1) and (not where or where in loc) for loc in locs), locs
    assert not (tmp_path / "x.mmdb").exists()
    assert list(tmp_path.iterdir()) == []  # no temp file left behind


def test_duplicate_network_is_refused(tmp_path: Path) -> None:
    with pytest.raises(pydantic.ValidationError, match="appears twice"):
        build_city_db([{"network": "127.2.0.0/16"}, {"network": "127.2.0.0/16", "country": "DE"}], tmp_path / "x.mmdb")


def test_yaml_and_csv_specs(tmp_path: Path) -> None:
    yml = tmp_path / "ranges.yaml"
    yml.write_text(
        "database_type: GeoLite2-City\n"
        "networks:\n"
        "  - {network: 127.2.0.0/16, country: DE, continent: EU, lat: 50.1, lon: 8.7, city: Frankfurt}\n"
        '  - {network: 127.3.0.0/16, country: US, asn: 64500, as_org: "Example"}\n'
    )
    spec = load_spec(yml)
    assert spec.database_type == "GeoLite2-City"
    assert [str(e.network) for e in spec.networks] == ["127.2.0.0/16", "127.3.0.0/16"]

    csv = tmp_path / "ranges.csv"
    csv.write_text("network,country,lat,lon,city,asn,is_tor_exit_node\n127.2.0.0/16,DE,50.1,8.7,Frankfurt,,\n127.3.0.0/16,US,,,,64500,true\n")
    spec = load_spec(csv, database_type="GeoIP2-City")
    geo = GeoDB.open(city=build_city_db(spec, tmp_path / "csv.mmdb"))
    assert geo.lookup("127.2.0.1") == GeoRecord(country="DE", continent="EU", lat=50.1, lon=8.7, city="Frankfurt")
    assert geo.lookup("127.3.0.1") == GeoRecord(
        country="US", continent="NA", asn=64500, is_anonymous=True, is_tor_exit_node=True
    )


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, "-m", "geodb", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )


def test_cli_build_then_lookup(tmp_path: Path) -> None:
    spec = tmp_path / "ranges.yaml"
    spec.write_text(
        "networks:\n"
        "  - {network: 127.2.0.0/16, country: DE, lat: 50.1, lon: 8.7, city: Frankfurt}\n"
        "  - {network: 127.3.0.0/16, country: US, asn: 64500, as_org: Example}\n"
    )
    out = tmp_path / "out.mmdb"
    built = run_cli("build", str(spec), str(out))
    assert built.returncode == 0, built.stderr
    looked = run_cli("lookup", str(out), "127.2.0.5", "::ffff:127.3.0.1", "bogus")
    assert looked.returncode == 0, looked.stderr
    lines = [json.loads(line) for line in looked.stdout.splitlines()]
    assert [(d["ip"], d["country"], d["city"], d["asn"]) for d in lines] == [
        ("127.2.0.5", "DE", "Frankfurt", None),
        ("::ffff:127.3.0.1", "US", None, 64500),
        ("bogus", None, None, None),
    ]
    assert lines[0]["continent"] == "EU" and lines[0]["lat"] == 50.1
    info = run_cli("info", str(out))
    assert json.loads(info.stdout)["database_type"] == "GeoIP2-City"


def test_cli_reports_bad_spec_and_bad_database(tmp_path: Path) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text("networks:\n  - {network: 127.2.0.1/16, country: DE}\n")
    built = run_cli("build", str(spec), str(tmp_path / "out.mmdb"))
    assert built.returncode == 2
    assert "networks.0.network" in built.stderr
    garbage = tmp_path / "garbage.mmdb"
    garbage.write_bytes(b"nope" * 64)
    looked = run_cli("lookup", str(garbage), "127.0.0.1")
    assert looked.returncode == 2
    assert "cannot open" in looked.stderr
