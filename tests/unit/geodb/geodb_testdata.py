"""Test data shared by the geodb unit tests (imported by name: the test
folders are not packages)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

# Where MaxMind's test databases live: ../shared/geodb beside the repo.
SHARED_GEODB = Path(__file__).resolve().parents[3] / ".." / "shared" / "geodb"

CITY_ENTRIES: list[dict[str, Any]] = [
    {"network": "127.0.0.0/8", "country": "ZA"},
    {"network": "127.2.0.0/16", "country": "DE", "lat": 50.1, "lon": 8.7, "city": "Frankfurt", "subdivision": "HE"},
    {"network": "127.2.3.0/24", "country": "FR", "continent": "EU", "city": "Paris"},
    {"network": "127.3.0.0/16", "country": "US", "lat": 38.9, "lon": -77.0, "asn": 64500, "as_org": "Example"},
    {"network": "127.4.0.0/16", "country": "JP", "is_anonymous": True, "is_tor_exit_node": True},
    {"network": "2001:db8:1::/48", "country": "CH", "city": "Bern"},
]

# the same addresses, other answers: what a database update looks like
NEW_CITY_ENTRIES: list[dict[str, Any]] = [
    {"network": "127.0.0.0/8", "country": "NO"},
    {"network": "127.2.0.0/16", "country": "AT", "city": "Wien"},
    {"network": "127.3.0.0/16", "country": "CA"},
]

Build = Callable[..., Path]
