"""Health state machines, without I/O.

- `RiseFall`: active-check hysteresis (HAProxy's rise/fall): `fall` failed
  checks in a row take a backend down, `rise` good ones bring it back.
- `OutlierDetector`: passive ejection from live traffic (Envoy's outlier
  detection, simplified): consecutive 5xx or consecutive connect failures eject
  a backend for base_ejection_s * times_ejected (capped at max_ejection_s), never
  more than max_ejection_percent of a pool at once.

Both are driven by explicit `now` values so tests use a fake clock; the asyncio
checker in checker.py and the pool in pool.py feed them.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

from .backend import CONNECT_ERROR, HTTP_5XX, OK, TIMEOUT, BackendState
from .config import OutlierConfig


class RiseFall:
    """Counts consecutive results; `record` returns the new state on a change."""

    __slots__ = ("rise", "fall", "healthy", "_good", "_bad")

    def __init__(self, rise: int, fall: int, healthy: bool = True) -> None:
        self.rise = rise
        self.fall = fall
        self.healthy = healthy
        self._good = 0
        self._bad = 0

    def record(self, ok: bool) -> bool | None:
        if ok:
            self._bad = 0
            self._good += 1
            if not self.healthy and self._good >= self.rise:
                self.healthy = True
                return True
        else:
            self._good = 0
            self._bad += 1
            if self.healthy and self._bad >= self.fall:
                self.healthy = False
                return False
        return None


class OutlierDetector:
    """Passive ejection decisions for one pool's backends."""

    __slots__ = ("cfg",)

    def __init__(self, cfg: OutlierConfig) -> None:
        self.cfg = cfg

    def record(self, b: BackendState, outcome: str) -> bool:
        """Count a failed outcome; True when a threshold is crossed (the caller
        then asks `try_eject`). Successes are reset inline by the data path."""
        if outcome == OK:
            b.consecutive_5xx = 0
            b.consecutive_conn = 0
            return False
        cfg = self.cfg
        if outcome == HTTP_5XX:
            b.consecutive_5xx += 1
        elif outcome in (CONNECT_ERROR, TIMEOUT):
            # A gateway failure is also a 5xx as the client sees it.
            b.consecutive_conn += 1
            b.consecutive_5xx += 1
        else:
            raise ValueError(f"unknown outcome {outcome!r}")
        if not cfg.enabled or b.ejected_until:
            return False
        return (b.consecutive_5xx >= cfg.consecutive_5xx
                or b.consecutive_conn >= cfg.consecutive_connect_failures)

    def max_ejected(self, pool_size: int) -> int:
        """How many of a pool may be ejected at once. At least one when the
        percent is above zero, so a single-backend region can still be
        ejected and fail over to another region."""
        pct = self.cfg.max_ejection_percent
        if pct <= 0:
            return 0
        return max(1, math.floor(pool_size * pct / 100.0))

    def try_eject(self, b: BackendState, members: Sequence[BackendState], now: float) -> bool:
        """Eject `b` unless the pool's ejection cap is reached."""
        if b.ejected_until:
            return False
        ejected = sum(1 for m in members if m.ejected_until)
        if ejected >= self.max_ejected(len(members)):
            return False
        cfg = self.cfg
        # Forgive old history: a backend well-behaved for max_ejection_s
        # starts its backoff again from base_ejection_s.
        if now - b.last_return > cfg.max_ejection_s:
            b.times_ejected = 0
        b.times_ejected += 1
        b.ejected_until = now + min(cfg.base_ejection_s * b.times_ejected, cfg.max_ejection_s)
        b.consecutive_5xx = 0
        b.consecutive_conn = 0
        return True

    @staticmethod
    def release_due(b: BackendState, now: float) -> bool:
        """End an ejection whose time is over; True when released."""
        if b.ejected_until and now >= b.ejected_until:
            b.ejected_until = 0.0
            b.last_return = now
            return True
        return False
