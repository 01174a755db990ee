"""Fixtures for the geodb unit tests: small databases built into tmp_path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from geodb_testdata import CITY_ENTRIES, SHARED_GEODB, Build

from geodb import build_city_db

@pytest.fixture
def build(tmp_path: Path) -> Build:
    """build(entries, name="city.mmdb", **kw) -> path, via build_city_db."""

    def _build(entries: list[dict[str, Any]], name: str = "city.mmdb", **kw: Any) -> Path:
        return build_city_db(entries, tmp_path / name, **kw)

    return _build


@pytest.fixture
def city_db(build: Build) -> Path:
    return build(CITY_ENTRIES)


@pytest.fixture
def shared_geodb() -> Path:
    if not (SHARED_GEODB / "GeoIP2-City-Test.mmdb").is_file():
        pytest.skip(f"MaxMind test databases not found in {SHARED_GEODB}")
    return SHARED_GEODB
