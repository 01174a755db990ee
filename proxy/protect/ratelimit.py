"""GCRA (generic cell rate algorithm) over a fixed-size, node-wide table.

One float per key: the theoretical arrival time (TAT). For a rule of `rate`
req/s and `burst`, emission interval T = 1/rate and tolerance tau = burst*T:

    new = max(TAT, now) + T
    admit iff new - now <= tau     (then TAT = new)

Keys are non-zero 64-bit hashes (0 marks a never-used slot); the bucket is
the key's low bits, so the table has a power-of-two number of buckets.

Over any window [0, t] starting full this admits burst + floor(rate*t).

Table layout: `slots` slots of (u64 key hash, f64 TAT), grouped in buckets
of 8 (one 128-byte stretch, two cache lines); a key lives only in its bucket.
For the node-wide table the buffer is an anonymous shared mmap, created by
the supervisor BEFORE it forks the workers, so every worker maps the same
pages; each bucket is guarded by one of 64 striped multiprocessing.Locks
(also created before fork). An uncontended acquire+release of a SemLock
costs ~55 ns (~70 ns with a timeout); one admission costs ~210 ns on a
process-local table and ~300-350 ns on the shared one (bench `gcra`).

Bounding without a sweeper: a slot whose TAT <= now is indistinguishable
from an absent key, so it is free. A key absent from a full bucket replaces
the slot with the smallest TAT: an expired slot if any, else the
least-indebted live key. A spoofed one-request key has TAT = now + T, a heavy
client's TAT runs up to now + tau ahead, so floods evict each other first.

`now` must be time.monotonic(): CLOCK_MONOTONIC is one clock for all
processes of the host, so TATs written by one worker mean the same to another.
"""
from __future__ import annotations

import logging
import mmap
import multiprocessing
from collections.abc import Callable
from typing import Any

_BUCKET = 8                     # slots per bucket
_WORDS = 2 * _BUCKET            # u64 words per bucket (key, tat) * 8
_LOCKS = 64                     # lock stripes (power of two)
EPS = 1e-9                      # float slack (0.1 * 3 != 0.3): callers add it to tau
_LOCK_TIMEOUT = 0.25            # see admit_shared: a worker SIGKILLed inside the section

log = logging.getLogger("novaedge.protect")


def _pow2_at_least(n: int) -> int:
    p = _BUCKET
    while p < n:
        p <<= 1
    return p


class GcraTable:
    """Bounded GCRA state. `shared=True`: allocate in shared memory, usable
    by every process forked after construction. `shared=False`: process-local
    (single-process mode and unit tests); same code without the locks."""

    def __init__(self, slots: int, *, shared: bool = False,
                 lock_timeout: float = _LOCK_TIMEOUT) -> None:
        self.lock_timeout = lock_timeout
        self.slots = _pow2_at_least(max(slots, _BUCKET))
        self.nbytes = self.slots * 16
        self.shared = shared
        buf: Any
        if shared:
            buf = mmap.mmap(-1, self.nbytes)        # MAP_SHARED | MAP_ANONYMOUS
            ctx = multiprocessing.get_context("fork")
            self._locks: list[Any] | None = [ctx.Lock() for _ in range(_LOCKS)]
        else:
            buf = bytearray(self.nbytes)
            self._locks = None
        self._buf = buf
        self._q = memoryview(buf).cast("Q")          # even words: key hash
        self._d = memoryview(buf).cast("d")          # odd words: TAT
        self._nbuckets = self.slots // _BUCKET
        # Per-process counters (plain ints: exported through Protection.counters).
        self.evictions = 0          # live keys displaced from a full bucket
        self.lock_timeouts = 0

        self.admit = self._make_admit()

    def _make_admit(self) -> Callable[[int, float, float, float], float]:
        """admit(key, now, interval, tau) -> 0.0 if admitted, else the seconds
        until a request would be. `key` is a non-zero 64-bit hash; `tau` is
        burst * interval (callers add the float slack EPS once, see Rule).

        A closure over the views, the bucket mask and the bound lock methods,
        with the hit in the bucket's first slot inlined: in CPython a
        memoryview item costs ~60 ns, an operation on a 64-bit int ~40 ns and
        an attribute load ~15 ns, so this path does 3 of the first, 2 of the
        second and none of the last."""
        q, d, mask, table = self._q, self._d, self._nbuckets - 1, self
        locks = self._locks
        acquire = [lk.acquire for lk in locks] if locks is not None else []
        release = [lk.release for lk in locks] if locks is not None else []

        def search(key: int, i: int, now: float, interval: float, tau: float) -> float:
            end = i + _WORDS
            victim = -1
            vtat = 0.0
            while i < end:
                k = q[i]
                if k == key:
                    tat = d[i + 1]
                    new = (tat if tat > now else now) + interval
                    if new - now > tau:
                        return new - now - tau
                    d[i + 1] = new
                    return 0.0
                if k == 0:                           # never used: key is absent
                    victim = i
                    break
                t = d[i + 1]
                if victim < 0 or t < vtat:
                    victim = i
                    vtat = t
                i += 2
            else:
                if vtat > now:
                    table.evictions += 1
            # Absent key: a fresh bucket admits (interval <= tau since burst >= 1).
            if interval > tau:
                return interval - tau
            q[victim] = key
            d[victim + 1] = now + interval
            return 0.0

        if locks is None:
            def admit_local(key: int, now: float, interval: float, tau: float) -> float:
                i = (key & mask) << 4
                if q[i] == key:                      # the common case, inlined
                    tat = d[i + 1]
                    new = (tat if tat > now else now) + interval
                    if new - now > tau:
                        return new - now - tau
                    d[i + 1] = new
                    return 0.0
                return search(key, i, now, interval, tau)
            return admit_local

        # Per stripe: how long to wait for its lock. A worker SIGKILLed inside
        # the section leaves its stripe locked for good; after one timeout
        # this process stops waiting on that stripe and only try-locks it,
        # going on without the lock when it is held (correct if the holder
        # is dead; racy, but never stalling, if it was merely slow).
        waits = [self.lock_timeout] * _LOCKS

        def admit_shared(key: int, now: float, interval: float, tau: float) -> float:
            b = key & mask
            s = b & (_LOCKS - 1)
            w = waits[s]
            got = acquire[s](True, w) if w else acquire[s](False)
            if not got and w:
                waits[s] = 0.0
                table.lock_timeouts += 1
                log.error("gcra lock stripe %d held for %.2f s (dead worker?): "
                          "no longer waiting for it", s, w)
            try:
                i = b << 4
                if q[i] == key:
                    tat = d[i + 1]
                    new = (tat if tat > now else now) + interval
                    if new - now > tau:
                        return new - now - tau
                    d[i + 1] = new
                    return 0.0
                return search(key, i, now, interval, tau)
            finally:
                if got:
                    release[s]()
        return admit_shared

    def refund(self, key: int, interval: float) -> None:
        """Give back one request charged by `admit` (the request was refused
        by a later rule, so it should not use this rule's quota)."""
        b = key & (self._nbuckets - 1)
        locks = self._locks
        if locks is not None:
            lock = locks[b & (_LOCKS - 1)]
            if not lock.acquire(True, self.lock_timeout):
                self.lock_timeouts += 1
                return
        try:
            q = self._q
            i = b * _WORDS
            for i in range(i, i + _WORDS, 2):
                if q[i] == key:
                    self._d[i + 1] -= interval
                    return
        finally:
            if locks is not None:
                lock.release()

    def tat(self, key: int) -> float | None:
        """The stored TAT of a key (None if absent); for tests and the admin API."""
        i = (key & (self._nbuckets - 1)) * _WORDS
        for j in range(i, i + _WORDS, 2):
            if self._q[j] == key:
                return float(self._d[j + 1])
        return None

    def live(self, now: float) -> int:
        """Slots holding a key whose TAT is still ahead of `now` (O(slots))."""
        d = self._d
        return sum(1 for j in range(1, 2 * self.slots, 2) if d[j] > now)
