"""Factories for balance tests: a cluster over the real region catalogue,
driven with explicit `now` values (no sockets, no sleeping)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from balance_world import MakeWorld, pool_config

from proxy.balance import Cluster, RegionInfo, RegionView, Selector, load_catalogue

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def catalogue() -> dict[str, RegionInfo]:
    return load_catalogue(ROOT / "config" / "regions.yaml")


@pytest.fixture
def world(catalogue: dict[str, RegionInfo]) -> MakeWorld:
    def make(regions: dict[str, int | list[Any]], local: str = "eu-west-1",
             matrix: dict[str, dict[str, float]] | None = None, now: float = 0.0,
             pool: str = "api", **kw: Any) -> tuple[Selector, Cluster, RegionView]:
        cluster = Cluster()
        cluster.apply({pool: pool_config(regions, **kw)}, now)
        view = RegionView(local, catalogue, matrix)
        return Selector(cluster, view), cluster, view
    return make
