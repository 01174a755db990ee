"""Broadcast queue with a bounded retransmit count (memberlist's queue.go).

Every update (alive/suspect/dead, a node's state row) is queued once, under a
key naming what it is about. A newer update with the same key replaces the
queued one, so the queue never holds two opinions about one thing. Each time
an update rides on an outgoing packet its transmit count grows; after
``retransmit_mult * ceil(log10(n + 1))`` transmissions it is dropped: in an
epidemic, that many sends by every node that learnt it reach all n nodes with
high probability. Updates sent the fewest times go first, newest first among
equals, so fresh news overtakes old news.
"""

from __future__ import annotations

import math

_MIN_ITEM_BYTES = 16  # smaller than any encoded message: stop scanning below it
_MAX_MISSES = 16  # after this many items that do not fit, send what we have


def retransmit_limit(retransmit_mult: int, n_nodes: int) -> int:
    return retransmit_mult * max(1, math.ceil(math.log10(n_nodes + 1)))


class _Item:
    __slots__ = ("key", "data", "transmits")

    def __init__(self, key: tuple[str, str], data: bytes) -> None:
        self.key = key
        self.data = data
        self.transmits = 0


class TransmitLimitedQueue:
    def __init__(self, retransmit_mult: int) -> None:
        self.retransmit_mult = retransmit_mult
        # bucket t holds the items sent t times, oldest first (dicts keep order)
        self._buckets: list[dict[tuple[str, str], _Item]] = [{}]
        self._where: dict[tuple[str, str], _Item] = {}

    def __len__(self) -> int:
        return len(self._where)

    def queue(self, key: tuple[str, str], data: bytes) -> None:
        """Queue ``data`` (one encoded message), replacing what ``key`` had."""
        self.invalidate(key)
        item = _Item(key, data)
        self._where[key] = item
        self._buckets[0][key] = item

    def invalidate(self, key: tuple[str, str]) -> None:
        old = self._where.pop(key, None)
        if old is not None:
            del self._buckets[old.transmits][key]

    def has(self, key: tuple[str, str]) -> bool:
        return key in self._where

    def take(self, budget: int, n_nodes: int) -> list[bytes]:
        """Messages to piggyback within ``budget`` bytes (1 byte of separator each)."""
        if not self._where or budget < _MIN_ITEM_BYTES:
            return []
        limit = retransmit_limit(self.retransmit_mult, n_nodes)
        chosen: list[_Item] = []
        misses = 0  # items too big for what is left; a long queue is not scanned to the end
        for bucket in self._buckets:
            for item in reversed(bucket.values()):
                cost = len(item.data) + 1
                if cost <= budget:
                    chosen.append(item)
                    budget -= cost
                    if budget < _MIN_ITEM_BYTES:
                        break
                else:
                    misses += 1
                    if misses > _MAX_MISSES:
                        break
            if budget < _MIN_ITEM_BYTES or misses > _MAX_MISSES:
                break
        for item in chosen:
            del self._buckets[item.transmits][item.key]
            item.transmits += 1
            if item.transmits >= limit:
                del self._where[item.key]
                continue
            while len(self._buckets) <= item.transmits:
                self._buckets.append({})
            self._buckets[item.transmits][item.key] = item
        return [item.data for item in chosen]

    def prune(self, keep: int) -> None:
        """Drop all but the ``keep`` least-sent items (bounds memory in storms)."""
        excess = len(self._where) - keep
        for bucket in reversed(self._buckets):
            if excess <= 0:
                return
            for key in list(bucket)[: min(excess, len(bucket))]:
                del bucket[key]
                del self._where[key]
                excess -= 1
