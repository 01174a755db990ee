"""The SWIM state machine alone: events in, actions out, time as an argument."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from proxy.gossip.membership import Membership, RttSample, SendPacket, StartPushPull, SwimConfig
from proxy.gossip.messages import (
    Ack,
    Alive,
    Dead,
    IndirectPing,
    MemberEntry,
    MemberState,
    Nack,
    Ping,
    Suspect,
)
from proxy.gossip.suspicion import suspicion_timeout
from proxy.gossip.wire import MessageType

CFG = SwimConfig(probe_interval_s=0.2, probe_timeout_s=0.5, pushpull_interval_s=1000, reconnect_interval_s=1000)


def addr(name: str) -> str:
    return f"10.0.0.{ord(name[0]) - 96}:7946"


def make(peers: str = "bcde", cfg: SwimConfig = CFG) -> Membership:
    m = Membership(cfg, "a", addr("a"), "r-a", 7946, 0.0, random.Random(4))
    for p in peers:
        m.on_alive(Alive(p, 1, addr(p), f"r-{p}", 7946), 0.0)
    m.drain()
    return m


def sent(actions: list[Any]) -> list[tuple[str, int, dict[str, Any]]]:
    """(addr, type, payload) of every message in the SendPacket actions."""
    out = []
    for a in actions:
        if isinstance(a, SendPacket):
            for raw in a.messages:
                t, p = json.loads(raw)
                out.append((a.addr, t, p))
    return out


def first_probe(m: Membership) -> tuple[str, int, float]:
    """Advance to the first probe; (target, seq, send time)."""
    t = 0.0
    while True:
        t += 0.01
        m.advance(t)
        pings = [(a, p) for a, ty, p in sent(m.drain()) if ty == MessageType.PING]
        if pings:
            target_addr, p = pings[0]
            return p["n"], p["q"], t


def test_ping_for_me_is_acked_to_its_reply_address() -> None:
    m = make()
    m.handle(Ping(9, "a", "10.9.9.9:1"), "b", 1.0)
    assert sent(m.drain()) == [("10.9.9.9:1", MessageType.ACK, {"q": 9})]


def test_ping_for_another_name_is_ignored() -> None:
    m = make()
    m.handle(Ping(9, "zz", "10.9.9.9:1"), "b", 1.0)
    assert m.drain() == []


def test_direct_ack_gives_an_rtt_sample_for_the_targets_region() -> None:
    m = make()
    target, seq, t = first_probe(m)
    m.handle(Ack(seq), target, t + 0.07)
    samples = [a for a in m.drain() if isinstance(a, RttSample)]
    assert len(samples) == 1 and samples[0].region == f"r-{target}"
    assert samples[0].rtt_s == pytest.approx(0.07)
    m.advance(t + 2.0)
    assert m.members[target].state == MemberState.ALIVE


def test_ack_from_a_helper_is_not_an_rtt_sample() -> None:
    m = make()
    target, seq, t = first_probe(m)
    helper = next(n for n in "bcde" if n != target)
    m.handle(Ack(seq), helper, t + 0.07)
    assert not [a for a in m.drain() if isinstance(a, RttSample)]


def test_unanswered_probe_goes_indirect_then_suspects() -> None:
    m = make()
    target, seq, t = first_probe(m)
    m.advance(t + 0.5)
    indirect = [(a, p) for a, ty, p in sent(m.drain()) if ty == MessageType.INDIRECT_PING]
    assert len(indirect) == 3
    assert {p["n"] for _, p in indirect} == {target}
    assert addr(target) not in {a for a, _ in indirect}
    assert m.members[target].state == MemberState.ALIVE
    m.advance(t + 1.5)
    assert m.members[target].state == MemberState.SUSPECT
    assert m.awareness.score == 3  # three helpers, no nack from any: probably our own fault too


def test_nacks_show_our_helpers_hear_us() -> None:
    m = make()
    target, seq, t = first_probe(m)
    m.advance(t + 0.5)
    for _ in range(3):
        m.handle(Nack(seq), "b", t + 0.8)
    m.advance(t + 1.5)
    assert m.members[target].state == MemberState.SUSPECT
    assert m.awareness.score == 0


def test_indirect_ack_within_the_deadline_saves_the_target() -> None:
    m = make()
    target, seq, t = first_probe(m)
    m.advance(t + 0.5)
    m.handle(Ack(seq), "c" if target != "c" else "b", t + 0.9)
    m.advance(t + 2.0)
    assert m.members[target].state == MemberState.ALIVE


def test_relay_pings_target_forwards_ack_and_nacks_when_silent() -> None:
    m = make()
    m.handle(IndirectPing(77, "c", addr("c"), addr("b"), True), "b", 1.0)
    (dst, ty, p), = sent(m.drain())
    assert (dst, ty, p["n"]) == (addr("c"), MessageType.PING, "c")
    m.handle(Ack(p["q"]), "c", 1.1)
    out = m.drain()
    assert (addr("b"), MessageType.ACK, {"q": 77}) in sent(out)
    assert any(isinstance(a, RttSample) and a.node == "c" for a in out)
    # a second request whose target stays silent gets a nack
    m.handle(IndirectPing(78, "d", addr("d"), addr("b"), True), "b", 2.0)
    m.drain()
    m.advance(2.6)
    nacks = [x for x in sent(m.drain()) if x[1] == MessageType.NACK]
    assert nacks == [(addr("b"), MessageType.NACK, {"q": 78})]


def test_probing_a_suspect_carries_the_accusation() -> None:
    m = make("b")
    m.on_suspect(Suspect("b", 1, "c"), 0.0)
    m.drain()
    t = 0.0
    msgs: list[Any] = []
    while not msgs:
        t += 0.01
        m.advance(t)
        msgs = [x for x in sent(m.drain()) if x[0] == addr("b")]
    assert {ty for _, ty, _ in msgs} == {MessageType.PING, MessageType.SUSPECT}


def test_suspicion_times_out_into_dead() -> None:
    m = make()
    m.on_suspect(Suspect("b", 1, "c"), 10.0)
    n = m.num_live()
    lo = suspicion_timeout(4, n, 0.2)
    hi = 6 * lo
    m.advance(10.0 + hi - 0.01)
    assert m.members["b"].state == MemberState.SUSPECT
    m.advance(10.0 + hi + 0.01)
    assert m.members["b"].state == MemberState.DEAD
    assert m.stats["declared_dead"] == 1


def test_independent_confirmations_shorten_the_suspicion() -> None:
    m = make()
    m.on_suspect(Suspect("b", 1, "c"), 10.0)
    m.on_suspect(Suspect("b", 1, "c"), 10.0)  # same accuser: no confirmation
    m.on_suspect(Suspect("b", 1, "d"), 10.1)
    m.on_suspect(Suspect("b", 1, "e"), 10.2)
    lo = suspicion_timeout(4, m.num_live(), 0.2)
    m.advance(10.0 + lo + 0.01)
    assert m.members["b"].state == MemberState.DEAD


def test_refutation_with_higher_incarnation_clears_suspicion() -> None:
    m = make()
    m.on_suspect(Suspect("b", 1, "c"), 10.0)
    m.on_alive(Alive("b", 2, addr("b"), "r-b", 7946), 10.5)
    assert m.members["b"].state == MemberState.ALIVE
    m.advance(100.0)
    assert m.members["b"].state == MemberState.ALIVE


def test_alive_with_the_same_incarnation_does_not_clear_suspicion() -> None:
    m = make()
    m.on_suspect(Suspect("b", 1, "c"), 10.0)
    m.on_alive(Alive("b", 1, addr("b"), "r-b", 7946), 10.5)
    assert m.members["b"].state == MemberState.SUSPECT


def test_accused_node_refutes_with_a_higher_incarnation() -> None:
    m = make()
    m.queue.take(10_000, 5)  # empty the queue of the join news
    m.on_suspect(Suspect("a", 0, "b"), 1.0)
    assert m.local.incarnation == 1
    assert m.awareness.score == 1
    news = [json.loads(x) for x in m.queue.take(10_000, 5)]
    assert [MessageType.ALIVE, {"n": "a", "i": 1, "a": addr("a"), "r": "r-a", "p": 7946}] in news
    m.on_dead(Dead("a", 5, "b"), 2.0)
    assert m.local.incarnation == 6 and m.local.state == MemberState.ALIVE


def test_stale_incarnations_are_ignored() -> None:
    m = make()
    m.on_alive(Alive("b", 5, addr("b"), "r-b", 7946), 1.0)
    m.on_suspect(Suspect("b", 4, "c"), 1.0)
    m.on_dead(Dead("b", 4, "c"), 1.0)
    assert m.members["b"].state == MemberState.ALIVE


def test_dead_node_rejoins_with_higher_incarnation() -> None:
    m = make()
    m.on_dead(Dead("b", 1, "c"), 1.0)
    assert m.members["b"].state == MemberState.DEAD and m.num_live() == 4
    m.on_alive(Alive("b", 1, addr("b"), "r-b", 7946), 2.0)
    assert m.members["b"].state == MemberState.DEAD
    m.on_alive(Alive("b", 2, addr("b"), "r-b", 7946), 2.0)
    assert m.members["b"].state == MemberState.ALIVE and m.num_live() == 5


def test_graceful_leave_is_left_not_dead() -> None:
    m = make()
    m.on_dead(Dead("b", 1, "b"), 1.0)
    assert m.members["b"].state == MemberState.LEFT
    leaver = make()
    leaver.leave(1.0)
    news = [json.loads(x) for x in leaver.queue.take(10_000, 5)]
    assert [MessageType.DEAD, {"n": "a", "i": 0, "f": "a"}] in news
    # a leaving node does not refute being declared dead
    leaver.on_dead(Dead("a", 0, "b"), 2.0)
    assert leaver.local.incarnation == 0


def test_merge_turns_hearsay_of_death_into_suspicion() -> None:
    m = make()
    entries = [
        MemberEntry("b", 1, addr("b"), "r-b", 7946, MemberState.DEAD),
        MemberEntry("f", 3, addr("f"), "r-f", 7946, MemberState.ALIVE),
        MemberEntry("g", 3, addr("g"), "r-g", 7946, MemberState.DEAD),  # unknown and dead: ignored
        MemberEntry("c", 1, addr("c"), "r-c", 7946, MemberState.LEFT),
    ]
    m.merge(entries, "e", 1.0)
    assert m.members["b"].state == MemberState.SUSPECT
    assert m.members["f"].state == MemberState.ALIVE
    assert "g" not in m.members
    assert m.members["c"].state == MemberState.LEFT


def test_alone_node_retries_its_seeds_and_dead_members_are_reconnected() -> None:
    cfg = SwimConfig(reconnect_interval_s=5.0, pushpull_interval_s=1000)
    m = Membership(cfg, "a", addr("a"), "r-a", 7946, 0.0, random.Random(1), seeds=(addr("a"), "10.0.0.9:7946"))
    m.join(0.0)
    assert m.drain() == [StartPushPull("10.0.0.9:7946", join=True)]  # never ourselves
    m.advance(1.1)
    assert StartPushPull("10.0.0.9:7946", join=True) in m.drain()
    m.on_alive(Alive("b", 1, addr("b"), "r-b", 7946), 1.2)
    m.on_alive(Alive("c", 1, addr("c"), "r-c", 7946), 1.2)
    m.on_dead(Dead("c", 1, "b"), 1.3)
    m.drain()
    m.advance(30.0)
    assert StartPushPull(addr("c"), join=False) in m.drain()


def test_gossip_goes_to_live_members_only_when_there_is_news() -> None:
    m = make()
    m.queue.take(100_000, 5)
    m.queue.take(100_000, 5)
    while len(m.queue):
        m.queue.take(100_000, 5)
    m.advance(5.0)
    assert not [a for a in m.drain() if isinstance(a, SendPacket) and not a.messages]
    m.on_suspect(Suspect("b", 1, "c"), 5.0)
    m.advance(5.5)
    gossip = [a for a in m.drain() if isinstance(a, SendPacket) and not a.messages]
    assert 1 <= len(gossip) <= 3 * 3
    assert addr("a") not in {a.addr for a in gossip}
