"""RegionView: what this node believes about every region, apart from its own
backends: where regions are, the latency between them, and what other
regions report about their health and service time (fed by gossip).

Plain data with a generation counter; the selector re-ranks regions when the
counter moves, so updates cost nothing on the request path.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import yaml

from .config import RegionInfo, check_region_name

EARTH_RADIUS_KM = 6371.0
# Round trip over fibre: light at ~200 km/ms, paths ~1.5x the great circle
# (typical inter-region RTT/distance in public cloud latency tables).
_KM_PER_RTT_MS = 200.0 / 2 / 1.5


def load_catalogue(path: str | Path) -> dict[str, RegionInfo]:
    """Read config/regions.yaml into validated RegionInfo objects."""
    with open(path, encoding="utf-8") as f:
        raw = yaml.safe_load(f)
    if not isinstance(raw, dict) or not isinstance(raw.get("regions"), dict):
        raise ValueError(f"{path}: expected a 'regions' mapping")
    return {check_region_name(k): RegionInfo.model_validate(v)
            for k, v in raw["regions"].items()}


def great_circle_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Haversine distance."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp = p2 - p1
    dl = math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


class RegionView:
    def __init__(self, local_region: str, catalogue: Mapping[str, RegionInfo],
                 latency_matrix: Mapping[str, Mapping[str, float]] | None = None) -> None:
        if local_region not in catalogue:
            raise ValueError(f"local region {local_region!r} is not in the catalogue")
        self.local = local_region
        self.catalogue = dict(catalogue)
        self.gen = 0
        self._matrix: dict[str, dict[str, float]] = {}
        self._remote: dict[tuple[str, str], bool] = {}     # (pool or "*", region)
        self._service: dict[str, float] = {}
        if latency_matrix:
            self.update_matrix(latency_matrix)

    # -- latency --------------------------------------------------------------
    def latency_ms(self, from_region: str, to_region: str) -> float:
        """Round-trip time; measured/seeded if known (either direction),
        else estimated from the distance between the regions."""
        if from_region == to_region:
            return 0.0
        v = self._matrix.get(from_region, {}).get(to_region)
        if v is None:
            v = self._matrix.get(to_region, {}).get(from_region)
        if v is None:
            a = self.catalogue.get(from_region)
            b = self.catalogue.get(to_region)
            if a is None or b is None:
                return math.inf
            v = great_circle_km(a.lat, a.lon, b.lat, b.lon) / _KM_PER_RTT_MS
        return v

    def update_matrix(self, matrix: Mapping[str, Mapping[str, float]]) -> None:
        """Merge measured RTTs (ms): seed from config, later from gossip."""
        for src, row in matrix.items():
            for dst, ms in row.items():
                if not (ms >= 0 and math.isfinite(ms)):
                    raise ValueError(f"latency {src}->{dst} must be a finite ms >= 0")
                self._matrix.setdefault(src, {})[dst] = float(ms)
        self.gen += 1

    # -- remote reports -------------------------------------------------------------
    def update_remote_health(self, reports: Mapping[str, bool], pool: str | None = None) -> None:
        """Health reported by other regions' nodes: region -> healthy, either
        region-wide (pool=None) or for one pool. Unreported means healthy;
        the gossip layer drops (reports True for) regions whose news expired."""
        key = pool or "*"
        changed = False
        for region, ok in reports.items():
            if self._remote.get((key, region), True) != bool(ok):
                changed = True
            self._remote[(key, region)] = bool(ok)
        if changed:
            self.gen += 1

    def remote_ok(self, region: str, pool: str | None = None) -> bool:
        r = self._remote
        if not r.get(("*", region), True):
            return False
        return pool is None or r.get((pool, region), True)

    def update_service_times(self, service_ms: Mapping[str, float]) -> None:
        """Regions' own recent service time (ms), as they report it."""
        self._service.update({k: float(v) for k, v in service_ms.items()})
        self.gen += 1

    def reported_service_ms(self, region: str) -> float | None:
        return self._service.get(region)

    # -- geography --------------------------------------------------------------
    def distance_km(self, latlon: tuple[float, float], region: str) -> float:
        info = self.catalogue.get(region)
        if info is None:
            return math.inf
        return great_circle_km(latlon[0], latlon[1], info.lat, info.lon)

    def regions_in_areas(self, areas: set[str]) -> frozenset[str]:
        """Helper for the caller's jurisdiction sets (areas from the catalogue)."""
        return frozenset(r for r, info in self.catalogue.items() if info.area in areas)
