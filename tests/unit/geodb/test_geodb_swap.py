"""Hot reload: a database file replaced by rename is validated and swapped
in with a fresh cache; a bad replacement is refused once and the old
database stays. watch() is driven with a fake sleep."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path

import maxminddb
import pytest
from geodb_testdata import NEW_CITY_ENTRIES, Build

from geodb import GeoDB, watch


def replace_with_bytes(path: Path, data: bytes) -> None:
    """geoipupdate style: write a new file, rename it over the old one."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def test_unchanged_file_is_not_reloaded(city_db: Path) -> None:
    geo = GeoDB.open(city=city_db)
    assert geo.reload_if_changed() is False
    assert (geo.reloads_ok, geo.reloads_failed) == (0, 0)


def test_replacement_is_swapped_in_and_the_cache_dropped(build: Build, city_db: Path) -> None:
    geo = GeoDB.open(city=city_db)
    assert geo.lookup("127.2.0.5").country == "DE"  # now cached
    assert geo.lookup("::ffff:127.3.0.1").country == "US"
    build(NEW_CITY_ENTRIES, city_db.name)  # renames over city_db
    assert geo.lookup("127.2.0.5").country == "DE"  # not noticed before the poll
    assert geo.reload_if_changed() is True
    assert geo.cache_len == 0
    assert geo.lookup("127.2.0.5").country == "AT"
    assert geo.lookup("::ffff:127.3.0.1").country == "CA"
    assert geo.lookup("127.4.0.1").country == "NO"  # 127.4/16 is gone in the new file
    assert (geo.reloads_ok, geo.reloads_failed) == (1, 0)
    assert geo.reload_if_changed() is False


def test_build_epoch_comes_from_metadata(build: Build, city_db: Path) -> None:
    asn = build([{"network": "127.2.0.0/16", "asn": 1}], "asn.mmdb", database_type="GeoLite2-ASN")
    geo = GeoDB.open(city=city_db, asn=asn)
    expected = {}
    for kind, path in (("city", city_db), ("asn", asn)):
        with maxminddb.open_database(str(path)) as reader:
            expected[kind] = reader.metadata().build_epoch
    assert geo.build_epochs == expected
    assert all(epoch > 1_700_000_000 for epoch in expected.values())


@pytest.mark.parametrize(
    "bad_kind",
    ["truncated", "garbage", "empty", "metadata_only_tail", "wrong_type"],
)
def test_bad_replacement_is_refused_once_and_old_kept(
    build: Build, city_db: Path, bad_kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    geo = GeoDB.open(city=city_db)
    assert geo.lookup("127.2.0.5").country == "DE"
    good_new = build(NEW_CITY_ENTRIES, "new.mmdb").read_bytes()
    if bad_kind == "truncated":
        data = good_new[: len(good_new) // 2]
    elif bad_kind == "garbage":
        data = os.urandom(4096)
    elif bad_kind == "empty":
        data = b""
    elif bad_kind == "metadata_only_tail":  # tree and data cut away, metadata kept
        data = good_new[good_new.index(b"\xab\xcd\xefMaxMind.com") :]
    else:
        data = build([{"network": "127.2.0.0/16", "asn": 1}], "asn.mmdb", database_type="GeoLite2-ASN").read_bytes()
    replace_with_bytes(city_db, data)

    with caplog.at_level(logging.ERROR, logger="novaedge.geodb"):
        for _ in range(3):  # polled again and again: refused, logged and counted once
            assert geo.reload_if_changed() is False
    assert (geo.reloads_ok, geo.reloads_failed) == (0, 1)
    refusals = [r for r in caplog.records if r.name == "novaedge.geodb" and "refused" in r.getMessage()]
    assert len(refusals) == 1
    assert geo.lookup("127.2.0.5").country == "DE"
    assert geo.lookup("127.2.0.77").country == "DE"  # uncached: the old reader still answers

    # the next good file is taken
    build(NEW_CITY_ENTRIES, city_db.name)
    assert geo.reload_if_changed() is True
    assert geo.lookup("127.2.0.5").country == "AT"
    assert (geo.reloads_ok, geo.reloads_failed) == (1, 1)


def test_missing_file_keeps_the_old_database(city_db: Path, caplog: pytest.LogCaptureFixture) -> None:
    geo = GeoDB.open(city=city_db)
    city_db.unlink()
    with caplog.at_level(logging.WARNING, logger="novaedge.geodb"):
        assert geo.reload_if_changed() is False
        assert geo.reload_if_changed() is False
    assert geo.reloads_failed == 1
    assert sum("gone" in r.getMessage() for r in caplog.records) == 1
    assert geo.lookup("127.2.0.5").country == "DE"


def test_only_the_replaced_database_is_reopened(build: Build, city_db: Path) -> None:
    asn = build([{"network": "127.2.0.0/16", "asn": 1}], "asn.mmdb", database_type="GeoLite2-ASN")
    geo = GeoDB.open(city=city_db, asn=asn)
    city_reader = geo._state.dbs["city"].reader
    assert geo.lookup("127.2.0.5").asn == 1
    build([{"network": "127.2.0.0/16", "asn": 2}], "asn.mmdb", database_type="GeoLite2-ASN")
    assert geo.reload_if_changed() is True
    assert geo._state.dbs["city"].reader is city_reader
    assert geo.lookup("127.2.0.5").asn == 2  # cached answer of the old ASN db dropped
    assert geo.lookup("127.2.0.5").country == "DE"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_swapped_out_file_is_unmapped(build: Build, city_db: Path) -> None:
    def mapped_deleted() -> int:
        maps = Path("/proc/self/maps").read_text()
        return sum(str(city_db) in line and "(deleted)" in line for line in maps.splitlines())

    geo = GeoDB.open(city=city_db)
    geo.lookup("127.2.0.5")
    for _ in range(3):
        build(NEW_CITY_ENTRIES, city_db.name)
        assert geo.reload_if_changed() is True
    assert mapped_deleted() == 0
    geo.close()


def test_close_answers_unknown(city_db: Path) -> None:
    geo = GeoDB.open(city=city_db)
    geo.lookup("127.2.0.5")
    geo.close()
    assert geo.lookup("127.2.0.5").country is None
    assert geo.reload_if_changed() is False


async def test_watch_polls_and_reloads(build: Build, city_db: Path) -> None:
    geo = GeoDB.open(city=city_db)
    polls: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        polls.append(seconds)
        if len(polls) == 2:
            build(NEW_CITY_ENTRIES, city_db.name)
        if len(polls) == 4:
            raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await watch(geo, interval=0.5, sleep=fake_sleep)
    assert polls == [0.5] * 4
    assert geo.reloads_ok == 1
    assert geo.lookup("127.2.0.5").country == "AT"


async def test_watch_survives_an_unexpected_error(city_db: Path, caplog: pytest.LogCaptureFixture) -> None:
    geo = GeoDB.open(city=city_db)
    calls = 0

    def flaky() -> bool:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        return False

    geo.reload_if_changed = flaky  # type: ignore[method-assign]
    sleeps = 0

    async def fake_sleep(seconds: float) -> None:
        nonlocal sleeps
        sleeps += 1
        if sleeps == 4:
            raise asyncio.CancelledError

    with caplog.at_level(logging.ERROR, logger="novaedge.geodb"), pytest.raises(asyncio.CancelledError):
        await watch(geo, interval=1.0, sleep=fake_sleep)
    assert calls == 3
    assert any("reload check failed" in r.getMessage() for r in caplog.records)


async def test_watch_rejects_a_nonpositive_interval(city_db: Path) -> None:
    with pytest.raises(ValueError):
        await watch(GeoDB.open(city=city_db), interval=0)



def test_file_renamed_over_while_opening_is_retried_not_refused(
    build: Build, city_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import geodb.database as database

    geo = GeoDB.open(city=city_db)
    build(NEW_CITY_ENTRIES, city_db.name)
    real = database.stat_signature
    calls = 0

    def racing_stat(path: object) -> tuple[int, int, int, int]:
        nonlocal calls
        calls += 1
        sig = real(path)  # type: ignore[arg-type]
        # the check after opening sees another file once (a rename mid-open)
        return (sig[0], sig[1] + 1, sig[2], sig[3]) if calls == 3 else sig

    monkeypatch.setattr(database, "stat_signature", racing_stat)
    assert geo.reload_if_changed() is False  # poll, stat before open, stat after open differs
    assert (geo.reloads_ok, geo.reloads_failed) == (0, 0)
    assert geo.lookup("127.2.0.5").country == "DE"
    assert geo.reload_if_changed() is True
    assert geo.lookup("127.2.0.5").country == "AT"
