"""SWIM membership as a pure state machine (memberlist's state.go, no I/O).

Events in, actions out, like h11: the driver feeds received messages and the
current time (``handle``, ``advance``), then takes the actions queued in
``outbox`` (packets to send, push-pull exchanges to start, RTT samples) and
asks ``next_deadline()`` when to call ``advance`` again. Time is a float in
seconds from an injected monotonic clock, so a unit test runs a minute of
cluster life in milliseconds.

Failure detection, per probe (several may overlap; each has its own timers)::

    t0            ping target (a suspect also gets its accusation: Lifeguard's buddy system)
    t0 + T        no ack yet: ask `indirect_checks` random members to ping it for us
    t0 + 3T       still no ack: suspect it; raise our own awareness unless the
                  helpers' nacks show that they, at least, hear us

``T`` is ``probe_timeout`` stretched by the awareness multiplier. The indirect
phase lasts 2T because a relayed probe crosses two links. Probes may overlap
(a new one every ``probe_interval``) because WAN round trips (up to ~300 ms
between the farthest regions) exceed the 200 ms interval at which they start.

A suspect that does not refute (alive with a higher incarnation) before its
suspicion times out is declared dead; see suspicion.py for the timeout.
"""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass, field
from enum import IntEnum

from .broadcast import TransmitLimitedQueue
from .messages import (
    Ack,
    Alive,
    Dead,
    IndirectPing,
    MemberEntry,
    MembershipMessage,
    MemberState,
    Nack,
    Ping,
    Suspect,
    join_addr,
    split_addr,
)
from .suspicion import Awareness, Suspicion, suspicion_timeout
from .wire import encode_message

LIVE = (MemberState.ALIVE, MemberState.SUSPECT)


@dataclass(frozen=True, slots=True)
class SwimConfig:
    probe_interval_s: float = 0.2
    probe_timeout_s: float = 0.5
    gossip_interval_s: float = 0.2
    gossip_nodes: int = 3
    indirect_checks: int = 3
    suspicion_mult: int = 4
    suspicion_max_timeout_mult: int = 6
    retransmit_mult: int = 4
    pushpull_interval_s: float = 10.0
    reconnect_interval_s: float = 10.0
    gossip_to_dead_s: float = 30.0
    dead_reclaim_s: float = 3600.0
    awareness_max_multiplier: int = 8


# ---- actions (outbox) ------------------------------------------------------


@dataclass(slots=True)
class SendPacket:
    """Send ``messages`` (encoded, may be empty) plus piggybacked broadcasts."""

    addr: str
    messages: list[bytes]


@dataclass(slots=True)
class StartPushPull:
    addr: str  # host:port of the peer's push-pull (TCP) endpoint
    join: bool


@dataclass(slots=True)
class RttSample:
    node: str
    region: str
    rtt_s: float


Action = SendPacket | StartPushPull | RttSample


class Member:
    __slots__ = ("name", "addr", "region", "pushpull_port", "incarnation", "state", "state_change")

    def __init__(self, name: str, addr: str, region: str, pushpull_port: int, incarnation: int,
                 state: MemberState, now: float) -> None:
        self.name = name
        self.addr = addr
        self.region = region
        self.pushpull_port = pushpull_port
        self.incarnation = incarnation
        self.state = state
        self.state_change = now

    @property
    def pushpull_addr(self) -> str:
        return join_addr(split_addr(self.addr)[0], self.pushpull_port)

    def entry(self, row_version: int = 0) -> MemberEntry:
        return MemberEntry(self.name, self.incarnation, self.addr, self.region, self.pushpull_port, self.state,
                           row_version)


class _Timer(IntEnum):
    PROBE_TICK = 0
    GOSSIP_TICK = 1
    PUSHPULL_TICK = 2
    RECONNECT_TICK = 3
    PROBE_TIMEOUT = 4
    PROBE_DEADLINE = 5
    RELAY_NACK = 6
    RELAY_EXPIRE = 7
    SUSPICION = 8


@dataclass(slots=True)
class _Probe:
    target: str
    sent: float
    acked: bool = False
    expected_nacks: int = 0
    nacks: int = 0


@dataclass(slots=True)
class _Relay:
    """An indirect ping we forward: who asked, under which of their seqs."""

    orig_seq: int
    reply_to: str
    target: str
    sent: float
    want_nack: bool
    acked: bool = False


@dataclass(slots=True)
class _LiveSet:
    """Live (alive/suspect) peer names with O(1) add, remove and random pick."""

    names: list[str] = field(default_factory=list)
    index: dict[str, int] = field(default_factory=dict)

    def add(self, name: str) -> None:
        if name not in self.index:
            self.index[name] = len(self.names)
            self.names.append(name)

    def discard(self, name: str) -> None:
        i = self.index.pop(name, None)
        if i is None:
            return
        last = self.names.pop()
        if i < len(self.names):
            self.names[i] = last
            self.index[last] = i


class Membership:
    def __init__(self, cfg: SwimConfig, name: str, addr: str, region: str, pushpull_port: int,
                 now: float, rng: random.Random, seeds: tuple[str, ...] = ()) -> None:
        self.cfg = cfg
        self.name = name
        self.rng = rng
        self.seeds = seeds
        self.local = Member(name, addr, region, pushpull_port, 0, MemberState.ALIVE, now)
        self.members: dict[str, Member] = {name: self.local}
        self.queue = TransmitLimitedQueue(cfg.retransmit_mult)
        self.awareness = Awareness(cfg.awareness_max_multiplier)
        self.outbox: list[Action] = []
        self.changes = 0  # bumped on every member state change: views cache on it
        # transitions this node made, for metrics and the simulation's false-positive count
        self.stats = {"suspected": 0, "declared_dead": 0, "refuted": 0}
        self.leaving = False
        self._live = _LiveSet()
        self._suspicions: dict[str, Suspicion] = {}
        self._probes: dict[int, _Probe] = {}
        self._relays: dict[int, _Relay] = {}
        self._timers: list[tuple[float, int, _Timer, object]] = []
        self._timer_seq = 0
        self._seq = 0
        self._probe_order: list[str] = []
        self._probe_index = 0
        self._queue_alive(self.local)
        # stagger the periodic work so that nodes started together do not beat in step
        self._at(now + rng.uniform(0, cfg.probe_interval_s), _Timer.PROBE_TICK, None)
        self._at(now + rng.uniform(0, cfg.gossip_interval_s), _Timer.GOSSIP_TICK, None)
        self._at(now + rng.uniform(0.5, 1.0) * cfg.pushpull_interval_s, _Timer.PUSHPULL_TICK, None)
        self._at(now + rng.uniform(0.5, 1.0), _Timer.RECONNECT_TICK, None)

    # ---- views ---------------------------------------------------------------

    def num_live(self) -> int:
        """Alive and suspect members, ourselves included (n in the timeouts)."""
        return len(self._live.names) + (0 if self.leaving else 1)

    def live_names(self) -> list[str]:
        return list(self._live.names)

    def member_entries(self) -> list[MemberEntry]:
        return [m.entry() for m in self.members.values()]

    def next_deadline(self) -> float:
        return self._timers[0][0] if self._timers else float("inf")

    def drain(self) -> list[Action]:
        out, self.outbox = self.outbox, []
        return out

    # ---- events in ------------------------------------------------------------

    def join(self, now: float) -> None:
        for seed in self.seeds:
            if seed != self.local.addr and seed != self.local.pushpull_addr:
                self.outbox.append(StartPushPull(seed, join=True))

    def handle(self, msg: MembershipMessage, sender: str, now: float) -> None:
        """One authenticated message from ``sender`` (the frame's signed sender)."""
        if isinstance(msg, Ping):
            if msg.target == self.name:
                self.outbox.append(SendPacket(msg.reply_to, [encode_message(Ack.TYPE, Ack(msg.seq).payload())]))
        elif isinstance(msg, Ack):
            self._on_ack(msg.seq, sender, now)
        elif isinstance(msg, Nack):
            probe = self._probes.get(msg.seq)
            if probe is not None:
                probe.nacks += 1
        elif isinstance(msg, IndirectPing):
            self._on_indirect_ping(msg, now)
        elif isinstance(msg, Alive):
            self.on_alive(msg, now)
        elif isinstance(msg, Suspect):
            self.on_suspect(msg, now)
        elif isinstance(msg, Dead):
            self.on_dead(msg, now)

    def merge(self, entries: list[MemberEntry], sender: str, now: float) -> None:
        """Merge a push-pull peer's member list (memberlist's mergeState)."""
        for e in entries:
            if e.state == MemberState.ALIVE:
                self.on_alive(e.as_alive(), now)
            elif e.state == MemberState.LEFT:
                self.on_dead(Dead(e.name, e.incarnation, e.name), now)
            elif e.name not in self._suspicions:
                # the peer believes it suspect or dead: suspect it ourselves rather
                # than declare it dead on hearsay, so it still gets a chance to refute.
                # Never a confirmation of a suspicion we hold: the peer may only be
                # repeating the accuser we already know, and confirmations shorten the
                # suspect's time to refute (at 500 nodes and 5 % loss, counting them
                # produced false deaths)
                self.on_suspect(Suspect(e.name, e.incarnation, sender), now)

    def leave(self, now: float) -> None:
        """Announce a graceful leave; keep ticking a little so it spreads."""
        self.leaving = True
        self.local.state = MemberState.LEFT
        self.local.state_change = now
        self.changes += 1
        self.queue.queue(("m", self.name), encode_message(Dead.TYPE, Dead(self.name, self.local.incarnation, self.name).payload()))

    def advance(self, now: float) -> None:
        """Run every timer due at ``now``."""
        timers = self._timers
        while timers and timers[0][0] <= now:
            when, _, kind, key = heapq.heappop(timers)
            if kind is _Timer.PROBE_TICK:
                self._probe_tick(now)
            elif kind is _Timer.GOSSIP_TICK:
                self._gossip_tick(now)
            elif kind is _Timer.PROBE_TIMEOUT:
                self._probe_timeout(key, now)  # type: ignore[arg-type]
            elif kind is _Timer.PROBE_DEADLINE:
                self._probe_deadline(key, now)  # type: ignore[arg-type]
            elif kind is _Timer.RELAY_NACK:
                relay = self._relays.get(key)  # type: ignore[call-overload]
                if relay is not None and not relay.acked and relay.want_nack:
                    self.outbox.append(SendPacket(relay.reply_to, [encode_message(Nack.TYPE, Nack(relay.orig_seq).payload())]))
            elif kind is _Timer.RELAY_EXPIRE:
                self._relays.pop(key, None)  # type: ignore[call-overload]
            elif kind is _Timer.SUSPICION:
                self._suspicion_due(key, now)  # type: ignore[arg-type]
            elif kind is _Timer.PUSHPULL_TICK:
                self._pushpull_tick(now)
            elif kind is _Timer.RECONNECT_TICK:
                self._reconnect_tick(now)

    # ---- state transitions (memberlist aliveNode / suspectNode / deadNode) ----

    def on_alive(self, a: Alive, now: float) -> None:
        if a.name == self.name:
            if a.incarnation > self.local.incarnation and not self.leaving:
                self._refute(a.incarnation)  # somebody speaks for us with an incarnation we never used
            return
        m = self.members.get(a.name)
        if m is None:
            m = Member(a.name, a.addr, a.region, a.pushpull_port, a.incarnation, MemberState.ALIVE, now)
            self.members[a.name] = m
            self._set_live(m, True)
            # a newcomer goes to a random place in the probe order (memberlist does the same)
            self._probe_order.insert(self.rng.randint(0, len(self._probe_order)), a.name)
            self.changes += 1
            self._queue_alive(m)
            return
        if a.incarnation <= m.incarnation:
            return
        m.incarnation = a.incarnation
        m.addr, m.region, m.pushpull_port = a.addr, a.region, a.pushpull_port
        if m.state != MemberState.ALIVE:
            self._transition(m, MemberState.ALIVE, now)
        self._queue_alive(m)

    def on_suspect(self, s: Suspect, now: float) -> None:
        m = self.members.get(s.name)
        if m is None or s.incarnation < m.incarnation:
            return
        susp = self._suspicions.get(s.name)
        if susp is not None:
            if susp.confirm(s.accuser):
                self._at(susp.deadline, _Timer.SUSPICION, s.name)
                self.queue.queue(("m", s.name), encode_message(Suspect.TYPE, s.payload()))
            return
        if m.state != MemberState.ALIVE:
            return
        if s.name == self.name:
            if not self.leaving:
                self._refute(s.incarnation)
                self.awareness.apply(1)  # being accused hints that we are the slow one
            return
        m.incarnation = s.incarnation
        self._transition(m, MemberState.SUSPECT, now)
        self.queue.queue(("m", s.name), encode_message(Suspect.TYPE, s.payload()))
        n = self.num_live()
        k = self.cfg.suspicion_mult - 2
        if n - 2 < k:
            k = 0  # not enough other members to ever confirm
        min_s = suspicion_timeout(self.cfg.suspicion_mult, n, self.cfg.probe_interval_s)
        susp = Suspicion(s.accuser, k, min_s, self.cfg.suspicion_max_timeout_mult * min_s, now)
        self._suspicions[s.name] = susp
        self._at(susp.deadline, _Timer.SUSPICION, s.name)

    def on_dead(self, d: Dead, now: float) -> None:
        m = self.members.get(d.name)
        if m is None or d.incarnation < m.incarnation:
            return
        if m.state in (MemberState.DEAD, MemberState.LEFT):
            return
        if d.name == self.name:
            if not self.leaving:
                self._refute(d.incarnation)
            return
        m.incarnation = d.incarnation
        self._transition(m, MemberState.LEFT if d.is_leave else MemberState.DEAD, now)
        self.queue.queue(("m", d.name), encode_message(Dead.TYPE, d.payload()))

    def _transition(self, m: Member, state: MemberState, now: float) -> None:
        if state == MemberState.SUSPECT:
            self.stats["suspected"] += 1
        elif state == MemberState.DEAD:
            self.stats["declared_dead"] += 1
        m.state = state
        m.state_change = now
        self.changes += 1
        if state != MemberState.SUSPECT:
            self._suspicions.pop(m.name, None)
        self._set_live(m, state in LIVE)

    def _set_live(self, m: Member, live: bool) -> None:
        if live:
            self._live.add(m.name)
        else:
            self._live.discard(m.name)

    def _refute(self, accused_incarnation: int) -> None:
        self.stats["refuted"] += 1
        self.local.incarnation = max(self.local.incarnation, accused_incarnation) + 1
        self._queue_alive(self.local)

    def _queue_alive(self, m: Member) -> None:
        alive = Alive(m.name, m.incarnation, m.addr, m.region, m.pushpull_port)
        self.queue.queue(("m", m.name), encode_message(Alive.TYPE, alive.payload()))

    def _suspicion_due(self, name: str, now: float) -> None:
        susp = self._suspicions.get(name)
        if susp is None or susp.deadline > now:
            return  # refuted, or confirmations moved the deadline (another timer exists)
        m = self.members[name]
        self.on_dead(Dead(name, m.incarnation, self.name), now)

    # ---- probing ----------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _next_probe_target(self) -> Member | None:
        for _ in range(2):
            while self._probe_index < len(self._probe_order):
                m = self.members.get(self._probe_order[self._probe_index])
                self._probe_index += 1
                if m is not None and m.state in LIVE:
                    return m
            self._probe_order = list(self._live.names)
            self.rng.shuffle(self._probe_order)
            self._probe_index = 0
        return None

    def _probe_tick(self, now: float) -> None:
        if self.leaving:
            return
        self._at(now + self.awareness.scale(self.cfg.probe_interval_s), _Timer.PROBE_TICK, None)
        target = self._next_probe_target()
        if target is None:
            return
        seq = self._next_seq()
        self._probes[seq] = _Probe(target.name, now)
        msgs = [encode_message(Ping.TYPE, Ping(seq, target.name, self.local.addr).payload())]
        if target.state == MemberState.SUSPECT:
            msgs.append(encode_message(Suspect.TYPE, Suspect(target.name, target.incarnation, self.name).payload()))
        self.outbox.append(SendPacket(target.addr, msgs))
        timeout = self.awareness.scale(self.cfg.probe_timeout_s)
        self._at(now + timeout, _Timer.PROBE_TIMEOUT, seq)
        self._at(now + 3 * timeout, _Timer.PROBE_DEADLINE, seq)

    def _probe_timeout(self, seq: int, now: float) -> None:
        probe = self._probes.get(seq)
        if probe is None or probe.acked:
            return
        target = self.members.get(probe.target)
        if target is None:
            return
        helpers = self._random_live(self.cfg.indirect_checks, exclude=probe.target)
        req = IndirectPing(seq, target.name, target.addr, self.local.addr, True)
        data = encode_message(IndirectPing.TYPE, req.payload())
        for h in helpers:
            self.outbox.append(SendPacket(h.addr, [data]))
        probe.expected_nacks = len(helpers)

    def _probe_deadline(self, seq: int, now: float) -> None:
        probe = self._probes.pop(seq, None)
        if probe is None or probe.acked:
            return
        if probe.expected_nacks > 0:
            self.awareness.apply(max(0, probe.expected_nacks - probe.nacks))
        else:
            self.awareness.apply(1)
        m = self.members.get(probe.target)
        if m is not None and m.state == MemberState.ALIVE:
            self.on_suspect(Suspect(m.name, m.incarnation, self.name), now)

    def _on_ack(self, seq: int, sender: str, now: float) -> None:
        probe = self._probes.get(seq)
        if probe is not None:
            if not probe.acked:
                probe.acked = True
                self.awareness.apply(-1)
                if sender == probe.target:  # direct ack: a clean round trip to its region
                    self._rtt_sample(sender, now - probe.sent)
            del self._probes[seq]
            return
        relay = self._relays.get(seq)
        if relay is not None and not relay.acked and sender == relay.target:
            relay.acked = True
            self.outbox.append(SendPacket(relay.reply_to, [encode_message(Ack.TYPE, Ack(relay.orig_seq).payload())]))
            self._rtt_sample(sender, now - relay.sent)

    def _rtt_sample(self, node: str, rtt_s: float) -> None:
        m = self.members.get(node)
        if m is not None:
            self.outbox.append(RttSample(node, m.region, rtt_s))

    def _on_indirect_ping(self, req: IndirectPing, now: float) -> None:
        seq = self._next_seq()
        self._relays[seq] = _Relay(req.seq, req.reply_to, req.target, now, req.want_nack)
        ping = Ping(seq, req.target, self.local.addr)
        self.outbox.append(SendPacket(req.target_addr, [encode_message(Ping.TYPE, ping.payload())]))
        self._at(now + self.cfg.probe_timeout_s, _Timer.RELAY_NACK, seq)
        self._at(now + 2 * self.cfg.probe_timeout_s, _Timer.RELAY_EXPIRE, seq)

    def _random_live(self, k: int, exclude: str) -> list[Member]:
        """Up to k random *alive* peers (suspects make poor helpers), not ``exclude``."""
        names = self._live.names
        picked = self.rng.sample(names, min(len(names), k + 3))
        members = (self.members[n] for n in picked if n != exclude)
        return [m for m in members if m.state == MemberState.ALIVE][:k]

    # ---- dissemination ------------------------------------------------------------

    def _gossip_tick(self, now: float) -> None:
        self._at(now + self.cfg.gossip_interval_s, _Timer.GOSSIP_TICK, None)
        if not len(self.queue):
            return
        names = self._live.names
        targets = [self.members[n] for n in self.rng.sample(names, min(len(names), self.cfg.gossip_nodes))]
        # recently dead members still hear gossip, so a falsely accused node learns of it
        recent = self._recently_dead(now)
        if recent and self.rng.random() < len(recent) / (len(recent) + len(names)):
            targets.append(self.rng.choice(recent))
        for m in targets:
            self.outbox.append(SendPacket(m.addr, []))

    def _recently_dead(self, now: float) -> list[Member]:
        if len(self._live.names) + 1 == len(self.members):
            return []
        horizon = now - self.cfg.gossip_to_dead_s
        return [m for m in self.members.values() if m.state == MemberState.DEAD and m.state_change >= horizon]

    def _pushpull_tick(self, now: float) -> None:
        n = self.num_live()
        # +-50 % jitter: nodes started together drift apart instead of syncing in bursts
        interval = pushpull_scale(self.cfg.pushpull_interval_s, n) * self.rng.uniform(0.5, 1.5)
        self._at(now + interval, _Timer.PUSHPULL_TICK, None)
        if self._live.names and not self.leaving:
            peer = self.members[self.rng.choice(self._live.names)]
            self.outbox.append(StartPushPull(peer.pushpull_addr, join=False))

    def _reconnect_tick(self, now: float) -> None:
        alone = not self._live.names
        self._at(now + (1.0 if alone else self.cfg.reconnect_interval_s), _Timer.RECONNECT_TICK, None)
        if self.leaving:
            return
        reclaim = now - self.cfg.dead_reclaim_s
        for name in [n for n, m in self.members.items() if m.state not in LIVE and m.state_change < reclaim]:
            if name != self.name:
                del self.members[name]
                self.queue.invalidate(("m", name))
        dead = [m for m in self.members.values() if m.state == MemberState.DEAD]
        if dead:
            # partitions heal through this: the far side learns it was declared dead and refutes
            self.outbox.append(StartPushPull(self.rng.choice(dead).pushpull_addr, join=False))
        if alone:
            self.join(now)

    def _at(self, when: float, kind: _Timer, key: object) -> None:
        self._timer_seq += 1
        heapq.heappush(self._timers, (when, self._timer_seq, kind, key))


def pushpull_scale(interval_s: float, n: int) -> float:
    """memberlist's pushPullScale: above 32 nodes, sync less often (log2 steps)."""
    if n <= 32:
        return interval_s
    return interval_s * (math.ceil(math.log2(n) - math.log2(32)) + 1)
