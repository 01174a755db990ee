import math

import pytest

from proxy.balance import RegionInfo, RegionView, great_circle_km


def test_catalogue_has_thirteen_regions(catalogue: dict[str, RegionInfo]) -> None:
    assert len(catalogue) == 13
    assert catalogue["eu-west-2"].area == "uk"


def test_great_circle() -> None:
    assert great_circle_km(51.51, -0.13, 48.85, 2.35) == pytest.approx(343, abs=3)
    assert great_circle_km(0, 0, 0, 180) == pytest.approx(math.pi * 6371, rel=1e-6)


def test_latency_matrix_lookup_and_estimate(catalogue: dict[str, RegionInfo]) -> None:
    view = RegionView("eu-west-1", catalogue, {"eu-west-1": {"us-east-1": 70.0}})
    assert view.latency_ms("eu-west-1", "eu-west-1") == 0.0
    assert view.latency_ms("eu-west-1", "us-east-1") == 70.0
    assert view.latency_ms("us-east-1", "eu-west-1") == 70.0      # either direction
    est = view.latency_ms("eu-west-1", "ap-southeast-2")          # unknown: from distance
    assert 150 < est < 260                                       # real RTT is ~250 ms
    gen = view.gen
    view.update_matrix({"eu-west-1": {"ap-southeast-2": 240.0}})
    assert view.latency_ms("eu-west-1", "ap-southeast-2") == 240.0 and view.gen > gen
    with pytest.raises(ValueError):
        view.update_matrix({"a": {"b": float("nan")}})


def test_remote_health_bumps_generation_only_on_change(catalogue: dict[str, RegionInfo]) -> None:
    view = RegionView("eu-west-1", catalogue)
    gen = view.gen
    view.update_remote_health({"us-east-1": True})
    assert view.gen == gen                                       # no news
    view.update_remote_health({"us-east-1": False})
    assert view.gen == gen + 1 and not view.remote_ok("us-east-1")
    assert view.remote_ok("eu-west-1")


def test_jurisdiction_helper(catalogue: dict[str, RegionInfo]) -> None:
    view = RegionView("eu-west-1", catalogue)
    assert view.regions_in_areas({"eu"}) == {"eu-west-1", "eu-central-1"}


def test_unknown_local_region(catalogue: dict[str, RegionInfo]) -> None:
    with pytest.raises(ValueError):
        RegionView("mars-1", catalogue)
