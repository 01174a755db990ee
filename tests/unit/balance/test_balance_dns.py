"""DNS cache core and the Resolver loop, through FakeLookup (no sockets)."""
import asyncio

from proxy.balance.dns import DnsCache, FakeLookup, Resolver


def test_ttl_is_clamped_and_due_times_follow() -> None:
    c = DnsCache(min_ttl_s=5, max_ttl_s=60)
    c.track(["a.internal", "B.internal."], 0.0)
    assert c.due(0.0) == ["a.internal", "b.internal"]
    assert c.on_answer("a.internal", [("10.0.0.1", 1)], 0.0) == ("10.0.0.1",)
    assert c.on_answer("b.internal", [("10.0.0.2", 3600), ("10.0.0.3", 30)], 0.0) \
        == ("10.0.0.2", "10.0.0.3")
    assert c.due(4.9) == [] and c.due(5.0) == ["a.internal"]   # floor 5 s
    assert c.due(30.0) == ["a.internal", "b.internal"]         # min TTL of the set
    assert c.on_answer("a.internal", [("10.0.0.1", 10)], 5.0) is None  # unchanged


def test_failure_keeps_last_good_and_backs_off() -> None:
    c = DnsCache(min_ttl_s=5, max_ttl_s=60, retry_s=2)
    c.track(["a.internal"], 0.0)
    c.on_answer("a.internal", [("10.0.0.1", 5)], 0.0)
    c.on_failure("a.internal", 5.0)
    assert c.addresses("a.internal") == ("10.0.0.1",)
    assert c.next_due() == 7.0
    c.on_failure("a.internal", 7.0)
    assert c.next_due() == 11.0                                 # 2, 4, 8 ... capped at 60
    assert c.on_answer("a.internal", [], 11.0) is None           # empty answer = failure
    assert c.addresses("a.internal") == ("10.0.0.1",) and c.next_due() == 19.0
    c.track([], 20.0)
    assert c.addresses("a.internal") == () and c.due(100.0) == []


async def test_resolver_reports_changes_only() -> None:
    fake = FakeLookup({"a.internal": [("10.0.0.1", 30)], "b.internal": LookupError("SERVFAIL")})
    changes: list[tuple[str, tuple[str, ...]]] = []
    clock = [0.0]
    r = Resolver(fake, lambda n, a: changes.append((n, a)), DnsCache(min_ttl_s=1),
                 clock=lambda: clock[0])
    r.track(["a.internal", "b.internal"])
    assert await r.refresh_due(0.0) == 2
    assert changes == [("a.internal", ("10.0.0.1",))]
    assert await r.refresh_due(10.0) == 1                       # b retries, a not due
    fake.answers["a.internal"] = [("10.0.0.1", 30), ("10.0.0.2", 30)]
    fake.answers["b.internal"] = [("10.0.1.1", 30)]
    await r.refresh_due(31.0)
    assert changes[1:] == [("a.internal", ("10.0.0.1", "10.0.0.2")),
                           ("b.internal", ("10.0.1.1",))]
    fake.answers["a.internal"] = LookupError("timeout")
    await r.refresh_due(62.0)
    assert r.cache.addresses("a.internal") == ("10.0.0.1", "10.0.0.2")
    assert len(changes) == 3


async def test_resolver_task_starts_and_stops() -> None:
    fake = FakeLookup({"a.internal": [("10.0.0.1", 30)]})
    got = asyncio.Event()
    r = Resolver(fake, lambda n, a: got.set())
    r.start()
    r.track(["a.internal"])
    await asyncio.wait_for(got.wait(), 1.0)
    await r.stop()
    assert fake.calls == ["a.internal"]
