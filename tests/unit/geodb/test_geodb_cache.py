"""The lookup cache: hits skip the readers, the cache is bounded LRU, and
cache_size=0 turns it off. The reader is wrapped in a counting fake, so
each test sees exactly which lookups reached the database."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from geodb import UNKNOWN, GeoDB
from geodb.database import open_database


class CountingReader:
    """Wraps a real reader; records every address that reaches it."""

    def __init__(self, reader: Any) -> None:
        self._reader = reader
        self.asked: list[str] = []

    def get(self, ip: str) -> Any:
        self.asked.append(ip)
        return self._reader.get(ip)


def counting_geodb(path: Path, cache_size: int) -> tuple[GeoDB, CountingReader]:
    db = open_database("city", path)
    spy = CountingReader(db.reader)
    return GeoDB({"city": dataclasses.replace(db, reader=spy)}, cache_size=cache_size), spy


def test_hit_skips_the_reader_and_returns_the_same_record(city_db: Path) -> None:
    geo, spy = counting_geodb(city_db, cache_size=16)
    first = geo.lookup("127.2.0.5")
    again = geo.lookup("127.2.0.5")
    assert again is first
    assert spy.asked == ["127.2.0.5"]


def test_absent_addresses_are_cached_too(city_db: Path) -> None:
    geo, spy = counting_geodb(city_db, cache_size=16)
    assert geo.lookup("10.1.2.3") is UNKNOWN
    assert geo.lookup("10.1.2.3") is UNKNOWN
    assert spy.asked == ["10.1.2.3"]


def test_cache_is_bounded(city_db: Path) -> None:
    geo, spy = counting_geodb(city_db, cache_size=4)
    for i in range(50):
        geo.lookup(f"127.2.0.{i}")
        assert geo.cache_len <= 4
    assert geo.cache_len == 4
    assert len(spy.asked) == 50


def test_cache_evicts_least_recently_used(city_db: Path) -> None:
    geo, spy = counting_geodb(city_db, cache_size=3)
    for ip in ("127.2.0.1", "127.2.0.2", "127.2.0.3"):
        geo.lookup(ip)
    geo.lookup("127.2.0.1")  # now most recently used
    geo.lookup("127.2.0.4")  # evicts .2, the least recently used
    spy.asked.clear()
    geo.lookup("127.2.0.1")
    geo.lookup("127.2.0.3")
    geo.lookup("127.2.0.4")
    assert spy.asked == []
    geo.lookup("127.2.0.2")
    assert spy.asked == ["127.2.0.2"]


def test_cache_size_zero_disables_caching(city_db: Path) -> None:
    geo, spy = counting_geodb(city_db, cache_size=0)
    for _ in range(3):
        assert geo.lookup("127.2.0.5").country == "DE"
    assert spy.asked == ["127.2.0.5"] * 3
    assert geo.cache_len == 0


def test_mapped_and_plain_share_one_entry(city_db: Path) -> None:
    geo, spy = counting_geodb(city_db, cache_size=16)
    geo.lookup("::ffff:127.3.0.9")
    geo.lookup("127.3.0.9")
    geo.lookup("::ffff:127.3.0.9")
    assert spy.asked == ["127.3.0.9"]  # the reader only ever sees the IPv4 form
    assert geo.cache_len == 1
