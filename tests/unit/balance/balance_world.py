"""Shared builders for the balance unit tests (imported by conftest and tests)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from proxy.balance import Cluster, PoolConfig, RegionView, Selector

MakeWorld = Callable[..., tuple[Selector, Cluster, RegionView]]


def pool_config(regions: dict[str, int | list[Any]], **kw: Any) -> PoolConfig:
    """regions: name -> backend count (10.<i>.0.<j>:80) or explicit specs."""
    spec: dict[str, list[Any]] = {}
    for i, (name, v) in enumerate(regions.items()):
        spec[name] = [f"10.{i}.0.{j}:80" for j in range(v)] if isinstance(v, int) else v
    kw.setdefault("health_check", None)
    return PoolConfig.model_validate({"regions": spec, **kw})
