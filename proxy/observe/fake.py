"""An in-memory `NodeView` for tests and for looking at the status page.

Three regions (us-east-1 healthy, eu-west-1 degraded with one ejected
backend, ap-northeast-1 down), a latency matrix with one pair not measured,
gossip members in every state, two mitigations, a config with secrets in
it, and ten seconds of synthetic traffic in the metrics. Actions change the
state as a node would and are recorded in `calls`.

    python -m proxy.observe.fake [port]   # serve it on 127.0.0.1 to look at
"""
from __future__ import annotations

import copy
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from .aggregate import MetricsAggregator
from .metrics import DELTA_VERSION, R_COUNT, R_LAT, R_LAT_SUM, RECORD_LEN

JSON = dict[str, Any]

SECRETS = ("s3cr3t-admin-token-0123456789", "hmac-key-current-abcdef", "hmac-key-previous-123456",
           "upstream-pass-xyz")


class ManualClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _backend(region: str, host: str, healthy: bool = True, ejected: bool = False,
             inflight: int = 0, latency_ms: float | None = 10.0) -> JSON:
    return {"id": f"{region}/{host}", "address": host, "healthy": healthy, "ejected": ejected,
            "inflight": inflight, "latency_ms": latency_ms}


class FakeNodeView:
    def __init__(self, *, traffic: bool = True, now: float | None = None) -> None:
        self.now = now = time.time() if now is None else now
        self.clock = ManualClock()
        self._metrics = MetricsAggregator(clock=self.clock)
        self.calls: list[tuple[str, str | None]] = []
        self.draining = False
        self.generation = 7
        self.reload_ok = True
        self._regions: list[JSON] = [
            {"id": "us-east-1", "name": "N. Virginia", "lat": 38.95, "lon": -77.45, "local": False,
             "backends": [_backend("us-east-1", "10.0.1.10:8080", inflight=4, latency_ms=8.2),
                          _backend("us-east-1", "10.0.1.11:8080", inflight=3, latency_ms=9.1),
                          _backend("us-east-1", "10.0.1.12:8080", inflight=5, latency_ms=7.7)]},
            {"id": "eu-west-1", "name": "Ireland", "lat": 53.35, "lon": -6.26, "local": True,
             "backends": [_backend("eu-west-1", "10.1.0.5:8080", inflight=6, latency_ms=11.4),
                          _backend("eu-west-1", "10.1.0.6:8080", healthy=False, ejected=True,
                                   latency_ms=None),
                          _backend("eu-west-1", "10.1.0.7:8080", inflight=2, latency_ms=13.0)]},
            {"id": "ap-northeast-1", "name": "Tokyo", "lat": 35.68, "lon": 139.69, "local": False,
             "backends": [_backend("ap-northeast-1", "10.2.0.5:8080", healthy=False, latency_ms=None),
                          _backend("ap-northeast-1", "10.2.0.6:8080", healthy=False, latency_ms=None)]},
        ]
        self._matrix: dict[str, dict[str, float | None]] = {
            "us-east-1": {"us-east-1": 1.2, "eu-west-1": 68.4, "ap-northeast-1": 146.9},
            "eu-west-1": {"us-east-1": 69.1, "eu-west-1": 0.9, "ap-northeast-1": 212.3},
            "ap-northeast-1": {"us-east-1": 148.2, "eu-west-1": None, "ap-northeast-1": 1.4},
        }
        self._members: list[JSON] = [
            {"node": "edge-use1-a", "region": "us-east-1", "address": "10.0.0.1:7946",
             "state": "alive", "incarnation": 4, "last_seen_s": 0.3},
            {"node": "edge-use1-b", "region": "us-east-1", "address": "10.0.0.2:7946",
             "state": "alive", "incarnation": 2, "last_seen_s": 0.8},
            {"node": "edge-euw1-a", "region": "eu-west-1", "address": "10.1.0.1:7946",
             "state": "alive", "incarnation": 9, "last_seen_s": 0.0},
            {"node": "edge-euw1-b", "region": "eu-west-1", "address": "10.1.0.2:7946",
             "state": "suspect", "incarnation": 3, "last_seen_s": 4.6},
            {"node": "edge-apne1-a", "region": "ap-northeast-1", "address": "10.2.0.1:7946",
             "state": "dead", "incarnation": 5, "last_seen_s": 41.0},
        ]
        self._mitigations: list[JSON] = [
            {"id": "m-17", "kind": "anomaly", "key": "prefix:203.0.113.0/24", "rule": "burst-3sigma",
             "action": "block", "reason": "412 req/s vs 38 +/- 9 expected (3 sigma)",
             "since": now - 75, "expires_in_s": 225.0},
            {"id": "m-18", "kind": "manual", "key": "asn:64496", "rule": "per-asn",
             "action": "ratelimit", "reason": "operator: scraping", "since": now - 600,
             "expires_in_s": 3000.0},
        ]
        self._config: JSON = {
            "node": {"name": "edge-euw1-a", "region": "eu-west-1"},
            "admin": {"listen": "127.0.0.1:9901", "token": SECRETS[0], "token_env": "NOVAEDGE_ADMIN_TOKEN"},
            "gossip": {"bind": "0.0.0.0:7946", "hmac_keys": [SECRETS[1], SECRETS[2]],
                       "seeds": ["10.0.0.1:7946"]},
            "pools": {"api": {"regions": {"eu-west-1": {"backends": ["10.1.0.5:8080"],
                                                        "health_url": f"http://probe:{SECRETS[3]}@10.1.0.5/healthz"}}}},
            "routes": [{"name": "api", "pool": "api", "match": {"path_prefix": "/api"}}],
        }
        self._metrics.set_latency_matrix({src: {dst: (ms / 1000 if ms is not None else None)
                                                for dst, ms in row.items()}
                                          for src, row in self._matrix.items()})
        self._metrics.set_gossip_members(self._member_counts())
        self._metrics.set_geoip(now - 86400 * 3, 3, 0)
        self._publish_health()
        if traffic:
            self.seed_traffic()

    # -- synthetic traffic -------------------------------------------------

    def seed_traffic(self, seconds: int = 10) -> None:
        """`seconds` of deltas as two workers would send them, one per second."""
        per_s = {("api", "us-east-1", "us-east-1/10.0.1.10:8080", "2xx"): 410,
                 ("api", "us-east-1", "us-east-1/10.0.1.11:8080", "2xx"): 395,
                 ("api", "us-east-1", "us-east-1/10.0.1.12:8080", "2xx"): 402,
                 ("api", "us-east-1", "us-east-1/10.0.1.12:8080", "5xx"): 3,
                 ("api", "eu-west-1", "eu-west-1/10.1.0.5:8080", "2xx"): 610,
                 ("api", "eu-west-1", "eu-west-1/10.1.0.7:8080", "2xx"): 590,
                 ("api", "eu-west-1", "eu-west-1/10.1.0.7:8080", "5xx"): 21,
                 ("static", "eu-west-1", "eu-west-1/10.1.0.5:8080", "3xx"): 120,
                 ("api", "ap-northeast-1", "ap-northeast-1/10.2.0.5:8080", "5xx"): 40,
                 ("api", "none", "none", "4xx"): 35}
        shape = (5, 40, 160, 320, 280, 110, 40, 10, 3, 1, 0, 0, 0, 0)   # latency, per 969 requests

        def record(n: int) -> list[float]:
            r: list[float] = [0] * RECORD_LEN
            r[R_COUNT] = n
            for i, share in enumerate(shape):
                r[R_LAT + i] = n * share // sum(shape)
            r[R_LAT_SUM] = n * 0.012
            return r

        for _ in range(seconds + 1):
            for worker in (1, 2):
                self._metrics.apply({
                    "v": DELTA_VERSION, "worker": worker, "inflight": 9 + worker,
                    "requests": {k: record(n // 2) for k, n in per_s.items()},
                    "clients": {("IE", "EU"): 700, ("US", "NA"): 600, ("JP", "AS"): 20, (None, None): 4},
                    "verdicts": {"anomaly:burst-3sigma:block": 12, "ratelimit:per-asn:ratelimit": 5},
                })
            self.clock.t += 1.0

    # -- NodeView ----------------------------------------------------------

    @property
    def metrics(self) -> MetricsAggregator:
        return self._metrics

    def status(self) -> Mapping[str, Any]:
        return {"node": "edge-euw1-a", "region": "eu-west-1", "version": "0.1.0",
                "uptime_s": 93784.0, "draining": self.draining, "workers": 2,
                "config": {"generation": self.generation, "loaded_at": self.now - 3600, "last_error": None},
                "geoip": {"build_epoch": self.now - 86400 * 3, "reloads_ok": 3, "reloads_failed": 0}}

    def effective_config(self) -> Mapping[str, Any]:
        return copy.deepcopy(self._config)

    def regions(self) -> Sequence[Mapping[str, Any]]:
        return copy.deepcopy(self._regions)

    def members(self) -> Sequence[Mapping[str, Any]]:
        return copy.deepcopy(self._members)

    def latency_matrix(self) -> Mapping[str, Mapping[str, float | None]]:
        return copy.deepcopy(self._matrix)

    def mitigations(self) -> Sequence[Mapping[str, Any]]:
        return copy.deepcopy(self._mitigations)

    async def reload(self) -> JSON:
        self.calls.append(("reload", None))
        self._metrics.config_reload(self.reload_ok)
        if not self.reload_ok:
            return {"ok": False, "error": "routes[0].pool: unknown pool 'apii'", "generation": self.generation}
        self.generation += 1
        return {"ok": True, "generation": self.generation}

    async def drain(self) -> JSON:
        self.calls.append(("drain", None))
        self.draining = True
        return {"ok": True, "draining": True}

    async def eject(self, backend_id: str) -> JSON:
        b = self._find(backend_id)
        self.calls.append(("eject", backend_id))
        b["ejected"] = True
        self._metrics.ejection(backend_id)
        self._publish_health()
        return {"ok": True, "backend": backend_id, "ejected": True}

    async def restore(self, backend_id: str) -> JSON:
        b = self._find(backend_id)
        self.calls.append(("restore", backend_id))
        b["ejected"] = False
        self._publish_health()
        return {"ok": True, "backend": backend_id, "ejected": False}

    # -- helpers -------------------------------------------------------------

    def _find(self, backend_id: str) -> JSON:
        for r in self._regions:
            for b in r["backends"]:
                if b["id"] == backend_id:
                    found: JSON = b
                    return found
        raise KeyError(backend_id)

    def _member_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for m in self._members:
            counts[m["state"]] = counts.get(m["state"], 0) + 1
        return counts

    def _publish_health(self) -> None:
        self._metrics.set_backend_health({b["id"]: b["healthy"] and not b["ejected"]
                                          for r in self._regions for b in r["backends"]})


def main(argv: list[str]) -> None:  # pragma: no cover - a manual look
    from aiohttp import web

    from .admin import build_admin_app
    port = int(argv[1]) if len(argv) > 1 else 9901
    web.run_app(build_admin_app(FakeNodeView(), token=None), host="127.0.0.1", port=port)


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv)
