"""The real aiodns path, offline: /etc/hosts answers, and a failing server
keeps the last good addresses. The only DNS server configured is 127.0.0.1
(nothing listens there), so no query leaves the machine. Runtime: < 0.1 s."""
from __future__ import annotations

from proxy.balance.dns import AiodnsLookup, DnsCache, Resolver


async def test_localhost_resolves_through_aiodns() -> None:
    lookup = AiodnsLookup(nameservers=["127.0.0.1"], timeout_s=0.3)
    try:
        answer = await lookup.resolve("localhost")
    finally:
        await lookup.close()
    addrs = {a for a, _ in answer}
    assert addrs & {"127.0.0.1", "::1"}


async def test_unresolvable_name_keeps_last_good() -> None:
    lookup = AiodnsLookup(nameservers=["127.0.0.1"], timeout_s=0.3)
    changes: list[tuple[str, tuple[str, ...]]] = []
    r = Resolver(lookup, lambda n, a: changes.append((n, a)), DnsCache(min_ttl_s=1),
                 clock=lambda: 0.0)
    try:
        r.track(["localhost", "api.novaedge.invalid"])
        await r.refresh_due(0.0)
        assert [n for n, _ in changes] == ["localhost"]
        assert r.cache.addresses("api.novaedge.invalid") == ()
        # Suppose the name had resolved once: a failing re-resolution keeps it.
        r.cache.on_answer("api.novaedge.invalid", [("10.0.0.1", 5)], 0.0)
        await r.refresh_due(100.0)
        assert r.cache.addresses("api.novaedge.invalid") == ("10.0.0.1",)
    finally:
        await lookup.close()
