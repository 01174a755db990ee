"""The hooks that plug GeoIP, protection, metrics and logs into the hot path.

`build_hooks` reads the config and returns hooks with only the features that
are configured, so an unconfigured feature costs next to nothing per request.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import Config
from .geo import GeoPhase
from .node import NodeHooks

if TYPE_CHECKING:
    from .context import RequestContext
    from .downstream import Downstream
    from .node import Node
    from .snapshot import Snapshot


class FeatureHooks(NodeHooks):
    def __init__(self, config: Config, worker_id: int) -> None:
        self.worker_id = worker_id
        self.geo = GeoPhase(config)
        self.strip_request_headers = self.geo.strip

    # identify
    def geo_lookup(self, ip: str) -> Any:
        return self.geo.lookup(ip)

    def forward_headers(self, node: "Node", ctx: "RequestContext") -> list[tuple[bytes, bytes]]:
        return self.geo.forward_headers(ctx.geo)

    # protect
    def protect(self, node: "Node", conn: "Downstream",
                ctx: "RequestContext") -> tuple[int, str, list[tuple[bytes, bytes]]] | None:
        geo = ctx.geo
        if self.geo.deny and geo is not None and geo.country in self.geo.deny:
            ctx.verdicts.append("geo:deny:" + geo.country)
            return (self.geo.deny_status, f"not available in {geo.country}", [])
        return None

    def allowed_regions(self, ctx: "RequestContext") -> tuple[str, frozenset[str]] | None:
        return self.geo.allowed_regions(ctx.geo)

    def reconfigured(self, node: "Node", snapshot: "Snapshot") -> None:
        self.geo.configure(snapshot.config)
        self.strip_request_headers = self.geo.strip
        self.geo.start_watching()

    def started(self, node: "Node") -> None:
        self.geo.start_watching()

    def stopped(self, node: "Node") -> None:
        self.geo.stop()


def build_hooks(config: Config, worker_id: int) -> NodeHooks:
    return FeatureHooks(config, worker_id)
