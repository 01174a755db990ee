"""Backend DNS names: resolve, re-resolve when the TTL runs out, keep the
last good answer when resolution fails.

- `DnsCache`: the pure core. Which names are due, what their addresses are,
  TTLs clamped to [min_ttl_s, max_ttl_s], failures retried with a backoff
  (retry_s doubling up to max_ttl_s) while the last good addresses stay.
- `Lookup`: the I/O boundary, `resolve(name) -> [(address, ttl_s)]`.
  `AiodnsLookup` is the real one (c-ares getaddrinfo: /etc/hosts, then DNS,
  with TTLs); `FakeLookup` answers from a dict, for tests.
- `Resolver`: the asyncio loop that asks the cache what is due, resolves it
  concurrently and reports changed address sets to `on_change(name, addrs)`
  (the control plane hands them to `Cluster.update_dns`).
"""
from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

import aiodns


class DnsCache:
    def __init__(self, min_ttl_s: float = 5.0, max_ttl_s: float = 300.0,
                 retry_s: float = 2.0) -> None:
        self.min_ttl_s = min_ttl_s
        self.max_ttl_s = max_ttl_s
        self.retry_s = retry_s
        self._addrs: dict[str, tuple[str, ...]] = {}
        self._due: dict[str, float] = {}
        self._failures: dict[str, int] = {}

    def track(self, names: Iterable[str], now: float) -> None:
        """Set the names to keep resolved; new ones are due at once."""
        want = {n.rstrip(".").lower() for n in names}
        for n in list(self._due):
            if n not in want:
                del self._due[n]
                self._addrs.pop(n, None)
                self._failures.pop(n, None)
        for n in want:
            self._due.setdefault(n, now)

    def due(self, now: float) -> list[str]:
        return sorted(n for n, t in self._due.items() if t <= now)

    def next_due(self) -> float:
        return min(self._due.values(), default=float("inf"))

    def addresses(self, name: str) -> tuple[str, ...]:
        return self._addrs.get(name.rstrip(".").lower(), ())

    def on_answer(self, name: str, answer: Iterable[tuple[str, float]],
                  now: float) -> tuple[str, ...] | None:
        """Store an answer; returns the new address set when it changed.
        An empty answer counts as a failure (keep what we had)."""
        answer = list(answer)
        if not answer:
            self.on_failure(name, now)
            return None
        if name not in self._due:
            return None                  # no longer tracked
        ttl = min(t for _, t in answer)
        self._due[name] = now + min(max(ttl, self.min_ttl_s), self.max_ttl_s)
        self._failures.pop(name, None)
        addrs = tuple(sorted({a for a, _ in answer}))
        if self._addrs.get(name) == addrs:
            return None
        self._addrs[name] = addrs
        return addrs

    def on_failure(self, name: str, now: float) -> None:
        if name not in self._due:
            return
        n = self._failures.get(name, 0) + 1
        self._failures[name] = n
        self._due[name] = now + min(self.retry_s * 2 ** (n - 1), self.max_ttl_s)


class Lookup(Protocol):
    async def resolve(self, name: str) -> list[tuple[str, float]]: ...


class AiodnsLookup:
    """c-ares through aiodns. getaddrinfo (not the deprecated query/
    gethostbyname) so /etc/hosts names resolve too; TTLs come with the nodes
    (0 for hosts-file answers, which the cache floors to min_ttl_s)."""

    def __init__(self, nameservers: list[str] | None = None, timeout_s: float = 2.0) -> None:
        self._resolver = aiodns.DNSResolver(nameservers=nameservers, timeout=timeout_s, tries=2)

    async def resolve(self, name: str) -> list[tuple[str, float]]:
        res = await self._resolver.getaddrinfo(name, family=socket.AF_UNSPEC,
                                               type=socket.SOCK_STREAM)
        out = []
        for node in res.nodes:
            addr = node.addr[0]
            out.append((addr.decode() if isinstance(addr, bytes) else str(addr),
                        float(node.ttl)))
        return out

    async def close(self) -> None:
        await self._resolver.close()


class FakeLookup:
    """Answers from `answers` (name -> [(addr, ttl)] or an exception to raise)."""

    def __init__(self, answers: Mapping[str, list[tuple[str, float]] | Exception] | None = None
                 ) -> None:
        self.answers: dict[str, list[tuple[str, float]] | Exception] = dict(answers or {})
        self.calls: list[str] = []

    async def resolve(self, name: str) -> list[tuple[str, float]]:
        self.calls.append(name)
        ans = self.answers.get(name)
        if ans is None:
            raise LookupError(f"{name}: not found")
        if isinstance(ans, Exception):
            raise ans
        return list(ans)


class Resolver:
    def __init__(self, lookup: Lookup, on_change: Callable[[str, tuple[str, ...]], None],
                 cache: DnsCache | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        self.lookup = lookup
        self.cache = cache or DnsCache()
        self.on_change = on_change
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    def now(self) -> float:
        return self._clock() if self._clock else asyncio.get_running_loop().time()

    def track(self, names: Iterable[str]) -> None:
        self.cache.track(names, self.now())
        self._wake.set()

    async def refresh_due(self, now: float) -> int:
        """Resolve every due name concurrently; returns how many were asked."""
        names = self.cache.due(now)
        results = await asyncio.gather(*(self.lookup.resolve(n) for n in names),
                                       return_exceptions=True)
        for name, res in zip(names, results):
            if isinstance(res, BaseException):
                if isinstance(res, asyncio.CancelledError):
                    raise res
                self.cache.on_failure(name, now)
                continue
            changed = self.cache.on_answer(name, res, now)
            if changed is not None:
                self.on_change(name, changed)
        return len(names)

    async def run(self) -> None:
        while True:
            await self.refresh_due(self.now())
            delay = min(max(self.cache.next_due() - self.now(), 0.05), 60.0)
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except asyncio.TimeoutError:
                pass

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run(), name="dns-resolver")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
