"""Node state rows and the cluster views assembled from them.

Every node owns one row: its region, software version, load, its region's
backend health summary, its smoothed RTT to every region, and the replication
lag its region reports. Rows carry a version; the higher version wins
everywhere, so rows can arrive in any order, twice, or through push-pull.

Publishing policy (why: an RTT estimate moves a little on every probe, and
re-broadcasting a 400-byte row on each would cost every node several KB/s at
26 nodes): a health change is published at once; other changes are published
when they pass a threshold (RTT 10 % and 1 ms, load 0.05, lag 10 % and 100 ms),
at most once per ``min_publish_interval_s``.
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from .wire import MessageType


@dataclass(frozen=True, slots=True)
class NodeStateRow:
    node: str
    version: int
    region: str
    app_version: str = ""
    load: float = 0.0
    healthy_backends: int = 0
    total_backends: int = 0
    health_changed_ms: int = 0  # origin's wall clock; 0 = never reported
    rtt_ms: dict[str, float] = field(default_factory=dict)
    replication_lag_s: float | None = None

    TYPE = MessageType.STATE

    def payload(self) -> dict[str, Any]:
        p: dict[str, Any] = {
            "n": self.node, "v": self.version, "r": self.region, "av": self.app_version,
            "ld": round(self.load, 3), "hb": self.healthy_backends, "tb": self.total_backends,
            "hc": self.health_changed_ms, "rt": {k: round(v, 1) for k, v in self.rtt_ms.items()},
        }
        if self.replication_lag_s is not None:
            p["lg"] = round(self.replication_lag_s, 3)
        return p

    @classmethod
    def parse(cls, p: dict[str, Any]) -> NodeStateRow:
        lag = p.get("lg")
        return cls(
            node=str(p["n"]), version=int(p["v"]), region=str(p["r"]), app_version=str(p.get("av", "")),
            load=float(p.get("ld", 0.0)), healthy_backends=int(p.get("hb", 0)),
            total_backends=int(p.get("tb", 0)), health_changed_ms=int(p.get("hc", 0)),
            rtt_ms={str(k): float(v) for k, v in dict(p.get("rt", {})).items()},
            replication_lag_s=None if lag is None else float(lag),
        )


@dataclass(frozen=True, slots=True)
class RegionHealth:
    region: str
    healthy: bool  # at least one healthy backend, per the freshest report
    healthy_backends: int
    total_backends: int
    updated_at: float  # wall-clock seconds of that report at its origin; 0.0: none
    alive_nodes: int  # gossip nodes alive in the region (0: nobody reports, healthy is False)


class RttEstimator:
    """Smoothed probe round trip per destination region, in ms.

    A sample is the path's delay plus whatever queueing and event-loop latency
    it met on the way, never less; so each sample first goes through a moving
    minimum over the region's last ``window`` samples (TCP's and BBR's min-RTT
    filter; Serf filters its coordinate samples the same way), and the minima
    feed an EWMA. Measured on the e2e test's 20 ms path on a busy 2-core host:
    raw samples run 2-4 ms high (10-20 %), the filtered estimate within 1 ms.
    A longer path shows up after ``window`` samples, a shorter one at once.
    """

    def __init__(self, alpha: float = 0.2, max_age_s: float = 60.0, window: int = 8) -> None:
        self.alpha = alpha
        self.max_age_s = max_age_s
        self.window = window
        self._est: dict[str, tuple[float, float]] = {}  # region -> (ms, last sample time)
        self._recent: dict[str, deque[float]] = {}

    def sample(self, region: str, rtt_s: float, now: float) -> None:
        recent = self._recent.get(region)
        if recent is None:
            recent = self._recent[region] = deque(maxlen=self.window)
        recent.append(rtt_s * 1000.0)
        floor = min(recent)
        old = self._est.get(region)
        self._est[region] = (floor if old is None else old[0] + self.alpha * (floor - old[0]), now)

    def row(self, now: float) -> dict[str, float]:
        """Estimates sampled within ``max_age_s`` (a region nobody answers from goes stale)."""
        horizon = now - self.max_age_s
        return {r: round(ms, 1) for r, (ms, t) in self._est.items() if t >= horizon}


def _rtt_moved(old: dict[str, float], new: dict[str, float]) -> bool:
    if old.keys() != new.keys():
        return True
    for region, ms in new.items():
        prev = old[region]
        if abs(ms - prev) > max(1.0, 0.1 * prev):
            return True
    return False


class ClusterState:
    """All rows this node knows, and the publishing of its own."""

    def __init__(self, name: str, region: str, app_version: str, version: int,
                 min_publish_interval_s: float = 1.0, rtt_alpha: float = 0.2) -> None:
        self.name = name
        self.min_publish_interval_s = min_publish_interval_s
        self.rtt = RttEstimator(rtt_alpha)
        self.local = NodeStateRow(name, version, region, app_version)
        self.rows: dict[str, NodeStateRow] = {name: self.local}
        # each row's wire payload, kept so push-pull and re-broadcasts never re-derive it
        self.payloads: dict[str, dict[str, Any]] = {name: self.local.payload()}
        self.changes = 0  # bumped whenever a row changes: views cache on it
        self._published = self.local
        self._dirty = True
        self._urgent = True
        self._last_publish = float("-inf")

    # ---- local setters (the proxy calls these through GossipNode) ----

    def set_health(self, healthy_backends: int, total_backends: int, wall_ms: int) -> None:
        if (healthy_backends, total_backends) != (self.local.healthy_backends, self.local.total_backends) \
                or self.local.health_changed_ms == 0:
            self.local = replace(self.local, healthy_backends=healthy_backends,
                                 total_backends=total_backends, health_changed_ms=wall_ms)
            self._dirty = self._urgent = True

    def set_load(self, load: float) -> None:
        if abs(load - self._published.load) >= 0.05:
            self._dirty = True
        self.local = replace(self.local, load=load)

    def set_replication_lag(self, lag_s: float) -> None:
        old = self._published.replication_lag_s
        if old is None or abs(lag_s - old) > max(0.1, 0.1 * old):
            self._dirty = True
        self.local = replace(self.local, replication_lag_s=lag_s)

    def observe_rtt(self, region: str, rtt_s: float, now: float) -> None:
        self.rtt.sample(region, rtt_s, now)

    def maybe_publish(self, now: float, n_nodes: int = 1) -> NodeStateRow | None:
        """A new version of our row when it is due, else None.

        Non-urgent changes wait ``min_publish_interval_s x max(1, n / 32)``:
        every broadcast costs each of the n nodes ``retransmit_limit`` sends,
        so the cluster-wide rate of row broadcasts must not grow with n.
        """
        rtt = self.rtt.row(now)
        if not self._dirty and _rtt_moved(self._published.rtt_ms, rtt):
            self._dirty = True
        if not self._dirty:
            return None
        if not self._urgent and now - self._last_publish < self.min_publish_interval_s * max(1.0, n_nodes / 32):
            return None
        self.local = replace(self.local, version=self.local.version + 1, rtt_ms=rtt)
        self.rows[self.name] = self._published = self.local
        self.payloads[self.name] = self.local.payload()
        self._dirty = self._urgent = False
        self._last_publish = now
        self.changes += 1
        return self.local

    # ---- remote rows ----

    def is_news(self, node: str, version: int) -> bool:
        """Cheap pre-check before parsing a row: most rows heard are repeats."""
        cur = self.rows.get(node)
        return cur is None or version > cur.version

    def merge(self, row: NodeStateRow, payload: dict[str, Any] | None = None) -> bool:
        """Keep ``row`` (whose wire form is ``payload``) if newer; True means it
        is news worth re-broadcasting."""
        if row.node == self.name:
            if row.version > self.local.version:
                # an older life of ours published further: jump past it
                self.local = replace(self.local, version=row.version)
                self._dirty = self._urgent = True
            return False
        cur = self.rows.get(row.node)
        if cur is not None and cur.version >= row.version:
            return False
        self.rows[row.node] = row
        self.payloads[row.node] = payload if payload is not None else row.payload()
        self.changes += 1
        return True

    def version_of(self, node: str) -> int:
        row = self.rows.get(node)
        return 0 if row is None else row.version

    def forget(self, node: str) -> None:
        if node != self.name and self.rows.pop(node, None) is not None:
            self.payloads.pop(node, None)
            self.changes += 1


# ---- views (pure functions of rows and the set of live nodes) ----


def latency_matrix(rows: Iterable[NodeStateRow]) -> dict[str, dict[str, float]]:
    """region -> region -> RTT ms: the median over the source region's live nodes."""
    samples: dict[str, dict[str, list[float]]] = {}
    for row in rows:
        dst_map = samples.setdefault(row.region, {})
        for dst, ms in row.rtt_ms.items():
            dst_map.setdefault(dst, []).append(ms)
    return {
        src: {dst: float(statistics.median(v)) for dst, v in sorted(dsts.items())}
        for src, dsts in sorted(samples.items())
    }


def region_health(rows: Iterable[NodeStateRow], regions: Iterable[str] = ()) -> dict[str, RegionHealth]:
    """Per region, the freshest health report among its live nodes.

    Every node of a region checks the same backends, so reports differ only in
    age; the newest wins. Regions in ``regions`` with no live node are listed
    as unhealthy with ``alive_nodes=0``.
    """
    best: dict[str, NodeStateRow] = {}
    alive: dict[str, int] = {}
    for row in rows:
        alive[row.region] = alive.get(row.region, 0) + 1
        cur = best.get(row.region)
        if cur is None or row.health_changed_ms > cur.health_changed_ms:
            best[row.region] = row
    out: dict[str, RegionHealth] = {}
    for region in sorted(set(regions) | set(best)):
        row = best.get(region)
        if row is None or row.health_changed_ms == 0:
            out[region] = RegionHealth(region, False, 0, 0, 0.0, alive.get(region, 0))
        else:
            out[region] = RegionHealth(region, row.healthy_backends > 0, row.healthy_backends,
                                       row.total_backends, row.health_changed_ms / 1000.0, alive[region])
    return out


def replication_lag(rows: Iterable[NodeStateRow]) -> dict[str, float]:
    """region -> the largest lag any live node of it reports (reads must assume the worst)."""
    out: dict[str, float] = {}
    for row in rows:
        if row.replication_lag_s is not None:
            out[row.region] = max(out.get(row.region, 0.0), row.replication_lag_s)
    return dict(sorted(out.items()))


@dataclass(frozen=True, slots=True)
class LatencyMatrix:
    """Region x region round-trip times in ms, as the routing layer reads them."""

    rtt_ms: dict[str, dict[str, float]]

    @classmethod
    def from_rows(cls, rows: Iterable[NodeStateRow]) -> LatencyMatrix:
        return cls(latency_matrix(rows))

    def get(self, src: str, dst: str) -> float | None:
        return self.rtt_ms.get(src, {}).get(dst)

    def regions(self) -> list[str]:
        return sorted(set(self.rtt_ms) | {d for row in self.rtt_ms.values() for d in row})
