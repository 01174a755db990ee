"""Protection engine through its public API, with a fake clock (`now`)."""
from __future__ import annotations

import logging
from typing import Any

import pytest

from geodb.record import GeoRecord
from proxy.context import RequestContext
from proxy.protect import AclConfig, Protection, ProtectionConfig, SharedState


class Route:
    def __init__(self, name: str) -> None:
        self.name = name


API, WEB = Route("api"), Route("web")


def ctx(ip: str = "198.51.100.7", route: Route | None = WEB, geo: Any = None,
        headers: list[tuple[bytes, bytes]] | None = None,
        listener: str = "127.0.0.1:8080") -> RequestContext:
    c = RequestContext("r", 0.0, "GET", "example.com", "/", "", "1.1", ip, 40000, geo,
                       headers or [(b"host", b"example.com")], listener)
    c.route = route
    return c


def prot(data: dict[str, Any], route_acls: dict[str, AclConfig] | None = None,
         shared: SharedState | None = None) -> Protection:
    p = Protection(shared)
    p.apply_config(ProtectionConfig.model_validate({"table_size": 4096, **data}), route_acls)
    return p


def admitted(p: Protection, n: int, now: float = 0.0, **kw: Any) -> int:
    return sum(p.check(ctx(**kw), now) is None for _ in range(n))


# ---- ACLs ------------------------------------------------------------------

def test_listener_acl_denies_with_403_and_per_listener_override() -> None:
    p = prot({"acl": {"deny": ["198.51.100.0/24"]},
              "listeners": {"10.0.0.1:443": {"allow": ["198.51.100.0/24"]}}})
    c = ctx()
    rej = p.check(c, 0.0)
    assert rej is not None and rej.status == 403 and rej.reason == "forbidden by listener acl"
    assert c.verdicts == ["acl:listener:deny"]
    assert p.check(ctx(ip="192.0.2.1"), 0.0) is None
    assert p.check(ctx(listener="10.0.0.1:443"), 0.0) is None       # override allows
    assert p.check(ctx(ip="192.0.2.1", listener="10.0.0.1:443"), 0.0) is not None
    assert not p.permits_connection("127.0.0.1:8080", "198.51.100.9")
    assert p.permits_connection("127.0.0.1:8080", "::ffff:192.0.2.1")
    assert p.counters()[("acl:listener", "deny")] == 3


def test_route_acl_is_memoized_per_connection_and_recompiled_on_reload() -> None:
    acls = {"api": AclConfig(allow=["10.0.0.0/8"])}
    p = prot({}, acls)
    inside = p.client("10.1.2.3")
    outside = p.client("198.51.100.7")
    assert p.check(ctx(ip="10.1.2.3", route=API), 0.0, inside) is None
    rej = p.check(ctx(route=API), 0.0, outside)
    assert rej is not None and rej.status == 403 and rej.reason == "forbidden by route acl"
    assert p.check(ctx(route=WEB), 0.0, outside) is None            # other route: no ACL
    assert list(outside.acl_memo.values()) == [False]
    # Reload with the ACL reversed: the same connection's memo must not answer.
    p.apply_config(ProtectionConfig(table_size=4096), {"api": AclConfig(deny=["10.0.0.0/8"])})
    assert p.check(ctx(ip="10.1.2.3", route=API), 0.0, inside) is not None
    assert p.check(ctx(route=API), 0.0, outside) is None


# ---- rate limits -----------------------------------------------------------

PER_IP = {"name": "per-ip", "key": "ip", "rate": 10, "burst": 5}


def test_429_with_retry_after_and_ratelimit_headers() -> None:
    p = prot({"rate_limits": [PER_IP]})
    assert admitted(p, 5) == 5
    c = ctx()
    rej = p.check(c, 0.0)
    assert rej is not None and rej.status == 429
    assert rej.reason == "rate limit per-ip exceeded"
    assert dict(rej.headers) == {b"retry-after": b"1",
                                 b"ratelimit-policy": b'"per-ip";q=10;w=1',
                                 b"ratelimit": b'"per-ip";r=0;t=1'}
    assert c.verdicts == ["ratelimit:per-ip:reject"]
    assert admitted(p, 5, now=0.3) == 3                       # 10 req/s refill
    assert p.counters()[("per-ip", "reject")] == 3


def test_slow_rule_retry_after_and_policy_window() -> None:
    p = prot({"rate_limits": [{"name": "slow", "key": "ip", "rate": 0.1, "burst": 1}]})
    assert admitted(p, 1) == 1
    rej = p.check(ctx(), 0.0)
    assert rej is not None
    assert dict(rej.headers)[b"retry-after"] == b"10"
    assert dict(rej.headers)[b"ratelimit-policy"] == b'"slow";q=1;w=10'


def test_shadow_rule_counts_and_logs_but_admits(caplog: pytest.LogCaptureFixture) -> None:
    p = prot({"rate_limits": [{**PER_IP, "shadow": True}]})
    caplog.set_level(logging.INFO, "novaedge.protect")
    verdicts = []
    for _ in range(8):
        c = ctx()
        assert p.check(c, 0.0) is None
        verdicts += c.verdicts
    assert verdicts == ["ratelimit:per-ip:shadow"] * 3
    assert p.counters()[("per-ip", "shadow")] == 3
    lines = [r.getMessage() for r in caplog.records if "ratelimit shadow" in r.getMessage()]
    assert len(lines) == 3 and '"rule":"per-ip"' in lines[0] and '"rate":10' in lines[0]


def test_ipv4_mapped_and_plain_share_a_bucket() -> None:
    p = prot({"rate_limits": [PER_IP]})
    assert admitted(p, 3, ip="192.0.2.1") == 3
    assert admitted(p, 5, ip="::ffff:192.0.2.1") == 2


def test_prefix_rule_groups_a_24() -> None:
    p = prot({"rate_limits": [{"name": "net", "key": "prefix", "rate": 1, "burst": 4}]})
    assert sum(p.check(ctx(ip=f"203.0.113.{i}"), 0.0) is None for i in range(10)) == 4
    assert p.check(ctx(ip="203.0.114.1"), 0.0) is None


def test_header_key_rule_and_missing_header() -> None:
    p = prot({"rate_limits": [{"name": "key", "key": "header", "header": "X-API-Key",
                               "rate": 1, "burst": 2}]})
    a = [(b"x-api-key", b"alpha")]
    b = [(b"x-api-key", b"beta")]
    assert admitted(p, 5, headers=a) == 2
    assert admitted(p, 5, headers=b) == 2
    assert admitted(p, 5) == 5                                # no key: rule does not apply


def test_country_and_asn_rules_use_geo_and_skip_unknown() -> None:
    de = GeoRecord(country="DE", asn=3320)
    fr = GeoRecord(country="FR", asn=3320)
    p = prot({"rate_limits": [{"name": "cc", "key": "country", "rate": 1, "burst": 3},
                              {"name": "as", "key": "asn", "rate": 1, "burst": 5}]})
    assert sum(p.check(ctx(ip=f"192.0.2.{i}", geo=de), 0.0) is None for i in range(6)) == 3
    # FR has its own country bucket but shares AS3320 (2 of 5 left).
    assert sum(p.check(ctx(ip=f"192.0.2.{i}", geo=fr), 0.0) is None for i in range(6)) == 2
    assert admitted(p, 10, geo=GeoRecord()) == 10             # unknown: not keyed
    assert admitted(p, 10, geo=None) == 10


def test_route_scope_and_route_key() -> None:
    p = prot({"rate_limits": [
        {"name": "api-ip", "key": "ip", "rate": 1, "burst": 2, "routes": ["api"]},
        {"name": "per-route", "key": "route", "rate": 1, "burst": 4}]})
    assert admitted(p, 5, route=API) == 2
    assert admitted(p, 5, route=WEB, ip="192.0.2.50") == 4    # per-route bucket of web
    assert admitted(p, 3, route=None) == 3                    # no route: neither applies


def test_refused_request_is_refunded_to_earlier_rules() -> None:
    # Rule order: per-ip (burst 3) then api-key (burst 1). Requests refused
    # by api-key must not use up per-ip.
    p = prot({"rate_limits": [
        {"name": "per-ip", "key": "ip", "rate": 0.001, "burst": 3},
        {"name": "key", "key": "header", "header": "x-api-key", "rate": 0.001, "burst": 1}]})
    k = [(b"x-api-key", b"k1")]
    assert admitted(p, 1, headers=k) == 1
    assert admitted(p, 10, headers=k) == 0                    # refused by "key"
    assert admitted(p, 5) == 2                                # per-ip still has 2 of 3


def test_check_before_routing_then_check_route() -> None:
    p = prot({"rate_limits": [
        {"name": "per-ip", "key": "ip", "rate": 1, "burst": 10},
        {"name": "api-ip", "key": "ip", "rate": 1, "burst": 2, "routes": ["api"]}]},
        {"api": AclConfig(deny=["198.51.100.0/24"])})
    c = ctx(route=None)
    client = p.client(c.client_ip)
    assert p.check(c, 0.0, client) is None                    # pre-route part only
    c.route = API
    rej = p.check_route(c, 0.0, client)
    assert rej is not None and rej.status == 403
    ok = ctx(ip="192.0.2.1", route=None)
    results = []
    for _ in range(4):
        assert p.check(ok, 0.0) is None
        ok.route = API
        results.append(p.check_route(ok, 0.0))
        ok.route = None
    assert [r is None for r in results] == [True, True, False, False]
    # The two requests refused by api-ip were refunded to per-ip: 8 of 10 left.
    assert admitted(p, 20, ip="192.0.2.1", route=None) == 8


def test_odd_client_addresses_never_raise() -> None:
    p = prot({"acl": {"deny": ["10.0.0.0/8"]},
              "rate_limits": [PER_IP, {"name": "net", "key": "prefix", "rate": 1, "burst": 1}],
              "detector": {"enabled": True}})
    for ip in ("", "unix:/run/sock", "not-an-ip", "::ffff:999.1.1.1"):
        rej = p.check(ctx(ip=ip), 0.0)
        assert rej is not None and rej.status == 403          # ACL present: fail closed
    p = prot({"rate_limits": [PER_IP], "detector": {"enabled": True}})
    assert admitted(p, 10, ip="unix:/run/sock") == 5           # keyed on the raw text
    p.tick(1.0)
    p.tick(2.0)


def test_request_logs_are_budgeted_per_rule_per_second(
        caplog: pytest.LogCaptureFixture) -> None:
    p = prot({"rate_limits": [{"name": "one", "key": "ip", "rate": 0.001, "burst": 1}]})
    caplog.set_level(logging.INFO, "novaedge.protect")
    assert admitted(p, 1000) == 1
    assert sum("ratelimit reject" in r.getMessage() for r in caplog.records) == 20
    p.tick(1.0)
    assert any("log lines suppressed" in r.getMessage() and '"lines":979' in r.getMessage()
               for r in caplog.records)
    assert p.counters()[("one", "reject")] == 999


def test_reload_keeps_buckets_of_unchanged_rules_only() -> None:
    base = {"rate_limits": [PER_IP, {"name": "per-route", "key": "route", "rate": 1,
                                     "burst": 3}]}
    p = prot(base)
    # per-route (burst 3) refuses 2 of 5; they are refunded to per-ip: 3 of 5 used.
    assert admitted(p, 5) == 3
    assert admitted(p, 10, ip="192.0.2.9", route=API) == 3
    # Reload: per-ip unchanged, per-route changed (burst 3 -> 4), a rule added.
    changed = {"rate_limits": [{**PER_IP, "shadow": False},
                               {"name": "per-route", "key": "route", "rate": 1, "burst": 4},
                               {"name": "other", "key": "prefix", "rate": 100, "burst": 100}]}
    p.apply_config(ProtectionConfig.model_validate({"table_size": 4096, **changed}))
    # per-ip kept its state: 3 of 5 used at t=0, so 2 more for 198.51.100.7.
    assert admitted(p, 5, route=Route("fresh")) == 2
    # per-route restarted: api has a fresh burst of 4.
    assert admitted(p, 10, ip="192.0.2.10", route=API) == 4


def test_shared_state_across_protection_objects() -> None:
    # Two Protection objects on one SharedState = two workers of one node.
    shared = SharedState(4096, workers=2)
    a = prot({"rate_limits": [PER_IP]}, shared=shared)
    b = prot({"rate_limits": [PER_IP]}, shared=shared)
    assert admitted(a, 3) + admitted(b, 5) == 5


def test_the_node_s_sweeps_roll_the_detector_over_every_second() -> None:
    # The node calls hooks.tick at every 0.25 s sweep. Gated by the integer
    # second as well as by the engine's own "a full second has passed", a sweep
    # 0.999 s after the last tick was skipped and the next came a second later:
    # a 2 s detector period, and mitigations a second late (the flaky
    # tests/integration/test_protect_traffic.py attacker test).
    from proxy.config import parse_config
    from proxy.features import build_hooks
    cfg = parse_config({"protection": {"detector": {"enabled": True, "keys": ["ip"]}}})
    hooks = build_hooks(cfg, 0)
    det = hooks.protection._det
    assert det is not None
    node = object()
    seen = []
    t = 100.25
    while t < 110:
        hooks.tick(node, t)  # type: ignore[arg-type]
        seen.append(det.last_tick)
        t = round(t + 0.2499, 4)   # sweeps drift a little against the integer second
    ticks = sorted(set(x for x in seen if x is not None))
    gaps = [b - a for a, b in zip(ticks, ticks[1:])]
    assert len(ticks) >= 8 and max(gaps) < 1.25, gaps
