"""Mitigations: what the detector's anomalies turn into, with a time to live.

Lifecycle of one key (driven by `Protection.tick`, once a second):
  anomaly, no mitigation   -> start at level 1 with the configured action
                              ("limit": a node-wide GCRA limit for the key;
                              "block": refuse it), until = now + ttl
  anomaly, mitigated       -> refresh until; once the anomaly has lasted
                              escalate_after_s at this level, escalate:
                              level+1, action "block", ttl doubled per level,
                              up to max_level
  no anomaly               -> nothing; the mitigation lapses at `until`
The detector keeps counting refused requests (offered load), so a client
that keeps hammering through a block stays anomalous and stays blocked.

A global anomaly (the node far above its own baseline) starts the
"global" mitigation, during which every client IP gets the strict per-IP
limit; it is refreshed and lapses the same way (no escalation).

Pure: state in, decisions out. The engine logs and counts the events.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from proxy.protect.config import DetectorConfig
from proxy.protect.detector import Anomaly


@dataclass(slots=True)
class Mitigation:
    kind: str             # "ip" | "prefix" | "country" | "route" | "global"
    key: str
    action: str           # "limit" | "block"
    level: int
    since: float          # first detection
    level_since: float    # when this level started
    until: float          # lapses at (monotonic seconds)
    limit_rate: float     # node-wide req/s when action == "limit"
    shadow: bool
    rate: float           # numbers of the latest anomaly
    mean: float
    sigma: float

    def as_dict(self, now: float) -> dict[str, Any]:
        return {"kind": self.kind, "key": self.key, "action": self.action,
                "level": self.level, "ttl_s": round(max(0.0, self.until - now), 3),
                "age_s": round(now - self.since, 3), "since_monotonic": self.since,
                "limit_rate": self.limit_rate,
                "shadow": self.shadow, "rate": round(self.rate, 3),
                "mean": round(self.mean, 3), "sigma": round(self.sigma, 3)}


class MitigationBook:
    def __init__(self, cfg: DetectorConfig, workers: int = 1) -> None:
        self.m = cfg.mitigation
        self.g = cfg.global_
        self.shadow = cfg.shadow
        self.workers = workers
        self.active: dict[str, dict[str, Mitigation]] = {}
        self.count = 0                      # active mitigations, for a cheap hot-path test

    def get(self, kind: str, key: str) -> Mitigation | None:
        by_key = self.active.get(kind)
        return None if by_key is None else by_key.get(key)

    def on_anomaly(self, a: Anomaly, now: float) -> tuple[str, Mitigation]:
        """Returns ("start" | "refresh" | "escalate", mitigation)."""
        if a.kind == "global":
            return self._on_global(a, now)
        cfg = self.m
        by_key = self.active.setdefault(a.kind, {})
        mit = by_key.get(a.key)
        if mit is None or mit.until <= now:
            # The detector's rates are this worker's share: scale to the node.
            rate = cfg.limit_rate or max(1.0, a.threshold * self.workers)
            mit = Mitigation(a.kind, a.key, cfg.action, 1, now, now, now + cfg.ttl_s,
                             rate, self.shadow, a.rate, a.mean, a.sigma)
            if a.key not in by_key:
                self.count += 1
            by_key[a.key] = mit
            return "start", mit
        mit.rate, mit.mean, mit.sigma = a.rate, a.mean, a.sigma
        event = "refresh"
        if mit.level < cfg.max_level and now - mit.level_since >= cfg.escalate_after_s:
            mit.level += 1
            mit.level_since = now
            mit.action = "block"
            event = "escalate"
        mit.until = max(mit.until, now + cfg.ttl_s * 2 ** (mit.level - 1))
        return event, mit

    def _on_global(self, a: Anomaly, now: float) -> tuple[str, Mitigation]:
        by_key = self.active.setdefault("global", {})
        mit = by_key.get("node")
        if mit is None or mit.until <= now:
            mit = Mitigation("global", "node", "limit", 1, now, now, now + self.g.ttl_s,
                             self.g.strict_per_ip_rate, self.shadow, a.rate, a.mean, a.sigma)
            if "node" not in by_key:
                self.count += 1
            by_key["node"] = mit
            return "start", mit
        mit.rate, mit.mean, mit.sigma = a.rate, a.mean, a.sigma
        mit.until = now + self.g.ttl_s
        return "refresh", mit

    def expire(self, now: float) -> list[Mitigation]:
        gone: list[Mitigation] = []
        for by_key in self.active.values():
            for key in [k for k, m in by_key.items() if m.until <= now]:
                gone.append(by_key.pop(key))
        self.count -= len(gone)
        return gone

    def listing(self, now: float) -> list[dict[str, Any]]:
        return [m.as_dict(now) for by_key in self.active.values()
                for m in by_key.values() if m.until > now]


def limit_burst(rate: float) -> int:
    """Burst of a mitigation limit: one second's worth, at least 1."""
    return max(1, math.ceil(rate))
