"""Suspicion timers and local health awareness (Lifeguard; memberlist's
suspicion.go and awareness.go).

A suspected node is declared dead when its suspicion times out. The timeout
starts at ``max`` and shrinks towards ``min`` as *independent* accusers confirm
it (log scale: the first confirmations count most), so a node that everybody
fails to reach is declared dead quickly while a lone, possibly slow, accuser
waits long enough for the suspect to refute.
"""

from __future__ import annotations

import math


def suspicion_timeout(suspicion_mult: int, n_nodes: int, probe_interval_s: float) -> float:
    """memberlist's suspicionTimeout: mult * max(1, log10(n)) * probe interval."""
    node_scale = max(1.0, math.log10(max(1, n_nodes)))
    return suspicion_mult * node_scale * probe_interval_s


class Suspicion:
    """One suspected node: when it is due to be declared dead."""

    __slots__ = ("start", "min_s", "max_s", "k", "_accusers", "_confirmations", "deadline")

    def __init__(self, accuser: str, k: int, min_s: float, max_s: float, now: float) -> None:
        self.start = now
        self.min_s = min_s
        self.max_s = max_s
        # k < 1: nobody could confirm (tiny cluster), so do not wait for them
        self.k = k
        self._accusers = {accuser}  # the first accuser is not a confirmation
        self._confirmations = 0
        self.deadline = now + (min_s if k < 1 else max_s)

    @property
    def confirmations(self) -> int:
        return self._confirmations

    def confirm(self, accuser: str) -> bool:
        """Record an independent accusation; True if it was new (re-broadcast it)."""
        if self._confirmations >= self.k or accuser in self._accusers:
            return False
        self._accusers.add(accuser)
        self._confirmations += 1
        frac = math.log(self._confirmations + 1) / math.log(self.k + 1)
        timeout = max(self.min_s, self.max_s - (self.max_s - self.min_s) * frac)
        self.deadline = self.start + timeout
        return True


class Awareness:
    """Local health multiplier: 0 is healthy; every point stretches timeouts.

    Raised when our own probes fail without the nacks that would show our
    peers can hear us, and when we must refute a suspicion about ourselves;
    lowered by every successful probe.
    """

    __slots__ = ("max_multiplier", "score")

    def __init__(self, max_multiplier: int) -> None:
        self.max_multiplier = max_multiplier
        self.score = 0

    def apply(self, delta: int) -> None:
        self.score = min(self.max_multiplier - 1, max(0, self.score + delta))

    def scale(self, timeout_s: float) -> float:
        return timeout_s * (self.score + 1)
