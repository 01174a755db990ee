"""Detector -> mitigation -> enforcement through the engine, on a fake clock."""
from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from proxy.context import RequestContext
from proxy.protect import Protection, ProtectionConfig


class Route:
    name = "web"


def ctx(ip: str) -> RequestContext:
    c = RequestContext("r", 0.0, "GET", "example.com", "/", "", "1.1", ip, 40000, None,
                       [], "l")
    c.route = Route()
    return c


NORMAL = [f"198.51.100.{i}" for i in range(1, 21)]
ATTACKER = "203.0.113.66"


def engine(action: str = "limit", shadow: bool = False, escalate_after_s: float = 3,
           keys: tuple[str, ...] = ("ip",)) -> Protection:
    p = Protection()
    p.apply_config(ProtectionConfig.model_validate({
        "table_size": 4096,
        "detector": {"enabled": True, "keys": keys, "warmup_s": 10,
                     "min_rate": 20, "shadow": shadow,
                     "mitigation": {"action": action, "ttl_s": 5,
                                    "escalate_after_s": escalate_after_s},
                     "global": {"enabled": False}}}))
    return p


def run(p: Protection, t0: int, t1: int, rate_of: dict[str, int],
        out: dict[str, list[tuple[float, RequestContext, Any]]] | None = None) -> None:
    """Each second: every client sends rate_of[ip] requests evenly, in four
    quarters with a tick after each (the node's sweep runs every 0.25 s)."""
    for sec in range(t0, t1):
        for q in range(4):
            for ip, n in rate_of.items():
                for i in range(q * n // 4, (q + 1) * n // 4):
                    now = sec + i / n
                    c = ctx(ip)
                    rej = p.check(c, now)
                    if out is not None:
                        out.setdefault(ip, []).append((now, c, rej))
            p.tick(sec + (q + 1) / 4)


def test_attacker_is_limited_within_2s_normal_clients_untouched(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "novaedge.protect")
    p = engine(escalate_after_s=60)
    steady = {ip: 10 for ip in NORMAL + [ATTACKER]}
    run(p, 0, 20, steady)                                    # warm up: 10 req/s each
    out: dict[str, list[tuple[float, RequestContext, Any]]] = {}
    run(p, 20, 25, {**steady, ATTACKER: 100}, out)            # 10x step at t=20
    refused = [(t, c) for t, c, rej in out[ATTACKER] if rej is not None]
    assert refused and refused[0][0] < 22.0
    assert refused[0][1].verdicts == ["anomaly:limit:ip"]
    rej = next(r for _, _, r in out[ATTACKER] if r is not None)
    assert rej.status == 429 and (b"retry-after", b"1") in rej.headers
    # Limited to about its own baseline threshold (10 + 3*sqrt(10) ~ 19.5/s).
    late = [r for t, _, r in out[ATTACKER] if t >= 22.0]
    assert 18 * 3 <= sum(r is None for r in late) <= 21 * 3
    for ip in NORMAL:
        assert all(r is None and not c.verdicts for _, c, r in out[ip]), ip
    (m,) = p.mitigations(24.0)
    assert m["kind"] == "ip" and m["key"] == ATTACKER and m["rate"] == 100.0
    msgs = [r.getMessage() for r in caplog.records]
    start = json.loads(next(s for s in msgs if s.startswith("anomaly ")
                            and '"event":"start"' in s)[len("anomaly "):])
    # The first roll after the step covers part of it: 0.75 s at 10/s + 0.25 s at 100/s.
    assert start["key"] == ATTACKER and start["action"] == "limit" and start["level"] == 1
    assert start["rate"] == 33.0 and start["mean"] == 10.0 and start["sigma"] == 0.0
    assert start["threshold"] == pytest.approx(10 + 3 * 10 ** 0.5, abs=1e-3)
    assert p.counters()[("anomaly:ip", "start")] == 1
    assert p.counters()[("anomaly:ip", "limit")] > 100


def test_persisting_attack_escalates_to_block_and_mitigation_expires() -> None:
    p = engine()
    steady = {ip: 10 for ip in NORMAL + [ATTACKER]}
    run(p, 0, 20, steady)
    out: dict[str, list[tuple[float, RequestContext, Any]]] = {}
    run(p, 20, 25, {**steady, ATTACKER: 100}, out)
    verdicts = {v for _, c, _ in out[ATTACKER] for v in c.verdicts}
    assert verdicts == {"anomaly:limit:ip", "anomaly:block:ip"}
    (m,) = p.mitigations(25.0)
    assert m["action"] == "block" and m["level"] == 2
    assert p.counters()[("anomaly:ip", "escalate")] == 1
    # The attack stops: the block lapses after its (doubled) ttl, 10 s after
    # the last anomalous roll (25.25, which still saw 0.75 s of attack).
    run(p, 25, 35, steady)
    assert len(p.mitigations(35.0)) == 1
    run(p, 35, 40, steady)
    assert p.mitigations(40.0) == []
    assert p.counters()[("anomaly:ip", "expire")] == 1
    assert p.check(ctx(ATTACKER), 40.5) is None


def test_detector_shadow_mode_only_marks_requests() -> None:
    p = engine(action="block", shadow=True)
    steady = {ip: 10 for ip in NORMAL + [ATTACKER]}
    run(p, 0, 20, steady)
    out: dict[str, list[tuple[float, RequestContext, Any]]] = {}
    run(p, 20, 23, {**steady, ATTACKER: 100}, out)
    assert all(r is None for _, _, r in out[ATTACKER])
    assert any(c.verdicts == ["anomaly:block:ip:shadow"] for _, c, _ in out[ATTACKER])
    assert p.mitigations(23.0)[0]["shadow"] is True
    assert p.counters()[("anomaly:ip", "shadow")] > 0


def test_global_anomaly_turns_on_strict_per_ip_limits() -> None:
    p = Protection()
    p.apply_config(ProtectionConfig.model_validate({
        "table_size": 4096,
        "detector": {"enabled": True, "keys": ["ip"], "warmup_s": 10, "min_rate": 1e6,
                     "global": {"min_rate": 50, "strict_per_ip_rate": 5,
                                "strict_per_ip_burst": 5, "ttl_s": 3}}}))
    clients = [f"192.0.2.{i}" for i in range(1, 101)]
    run(p, 0, 20, {ip: 1 for ip in clients})                 # 100 req/s node baseline
    out: dict[str, list[tuple[float, RequestContext, Any]]] = {}
    # A botnet: every client x10. No single key is anomalous (floor 1e6).
    run(p, 20, 24, {ip: 10 for ip in clients}, out)
    (m,) = p.mitigations(24.0)
    assert m["kind"] == "global"
    late = [(c, r) for ip in clients for t, c, r in out[ip] if t >= 22.0]
    refused = [c for c, r in late if r is not None]
    # strict: 5 req/s per IP (+ burst) of the 10 each sends.
    assert 0.35 * len(late) < len(refused) < 0.6 * len(late)
    assert refused[0].verdicts == ["anomaly:strict-per-ip:global"]
    run(p, 24, 30, {ip: 1 for ip in clients})               # back to normal
    assert p.mitigations(30.0) == []


def test_prefix_anomaly_limits_the_whole_prefix() -> None:
    p = engine(keys=("prefix",), escalate_after_s=60)
    steady = {ip: 10 for ip in NORMAL}                      # 198.51.100.0/24: 200 req/s
    botnet = {f"203.0.113.{i}": 1 for i in range(1, 11)}    # 203.0.113.0/24: 10 req/s
    run(p, 0, 20, {**steady, **botnet})
    out: dict[str, list[tuple[float, RequestContext, Any]]] = {}
    run(p, 20, 23, {**steady, **{ip: 10 for ip in botnet}}, out)
    (m,) = p.mitigations(23.0)
    assert m["kind"] == "prefix" and m["key"] == "203.0.113.0/24"
    assert any(c.verdicts == ["anomaly:limit:prefix"] for ip in botnet for _, c, _ in out[ip])
    assert all(r is None for ip in NORMAL for _, _, r in out[ip])


def test_detector_state_survives_reload() -> None:
    p = engine()
    steady = {ip: 10 for ip in NORMAL + [ATTACKER]}
    run(p, 0, 20, steady)
    # Reload with a changed detector config (k) but the same key kinds.
    p.apply_config(ProtectionConfig.model_validate({
        "table_size": 4096,
        "detector": {"enabled": True, "keys": ["ip"], "warmup_s": 10, "k": 3.5,
                     "min_rate": 20, "global": {"enabled": False}}}))
    out: dict[str, list[tuple[float, RequestContext, Any]]] = {}
    run(p, 20, 22, {**steady, ATTACKER: 100}, out)           # no new warm-up needed
    assert any(r is not None for _, _, r in out[ATTACKER])
