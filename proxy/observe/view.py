"""What the admin API and the status page need from a node: `NodeView`.

The node implements it over its live state (reads are cheap and
synchronous: they run on the control plane's loop); `fake.FakeNodeView`
implements it for tests. Shapes (JSON-ready dicts, extra keys are passed
through to the API untouched):

status() ->
    {"node": "edge-euw1-a", "region": "eu-west-1", "version": "0.1.0",
     "uptime_s": 1234.5, "draining": false, "workers": 4,
     "config": {"generation": 7, "loaded_at": <epoch>, "last_error": null},
     "geoip": {"build_epoch": <epoch>, "reloads_ok": 3, "reloads_failed": 0}}

effective_config() -> the validated config as plain data, secrets included:
    the admin layer redacts (see redact.py), so a view never has to remember.

regions() -> [{"id": "eu-west-1", "name": "Ireland", "lat": 53.35, "lon": -6.26,
               "local": true, "health": "healthy" | "degraded" | "down" | "unknown"
               (optional: derived from the backends when absent),
               "backends": [{"id": "eu-west-1/10.1.0.5:8080", "address": "10.1.0.5:8080",
                             "healthy": true, "ejected": false, "inflight": 3,
                             "latency_ms": 12.5 | null}]}]

members() -> [{"node": "edge-use1-a", "region": "us-east-1", "address": "10.0.0.1:7946",
               "state": "alive" | "suspect" | "dead" | "left", "incarnation": 3,
               "last_seen_s": 0.4}]

latency_matrix() -> {from_region: {to_region: rtt_ms | None}}

mitigations() -> [{"id": "m-1", "kind": "anomaly" | "manual", "key": "prefix:203.0.113.0/24",
                   "rule": "burst-3sigma", "action": "block" | "ratelimit" | "shadow",
                   "reason": "...", "since": <epoch>, "expires_in_s": 240.0}]

metrics -> the node's MetricsAggregator (registry for /metrics, traffic() for rates)

Actions return a JSON-ready dict; eject/restore raise KeyError for an
unknown backend id. reload() returns {"ok": bool, ...}; a failed reload
keeps the old config (the API answers 422 with the dict).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from .aggregate import MetricsAggregator

JSON = dict[str, Any]


@runtime_checkable
class NodeView(Protocol):
    @property
    def metrics(self) -> MetricsAggregator: ...

    def status(self) -> Mapping[str, Any]: ...

    def effective_config(self) -> Mapping[str, Any]: ...

    def regions(self) -> Sequence[Mapping[str, Any]]: ...

    def members(self) -> Sequence[Mapping[str, Any]]: ...

    def latency_matrix(self) -> Mapping[str, Mapping[str, float | None]]: ...

    def mitigations(self) -> Sequence[Mapping[str, Any]]: ...

    async def reload(self) -> JSON: ...

    async def drain(self) -> JSON: ...

    async def eject(self, backend_id: str) -> JSON: ...

    async def restore(self, backend_id: str) -> JSON: ...
