"""GossipNode: wires the membership state machine, the state rows, the wire
format and a transport together, on any ``Scheduler``.

The same object runs on asyncio with ``UdpTransport`` (``start_gossip``) and
on the fake clock with ``memnet.MemoryTransport`` (tests, gossip_sim.py). It is
the routing layer's only door into gossip:

- read:  ``latency_matrix()``, ``region_health()``, ``replication_lag()``,
  ``members()``, ``counters``; all cheap (cached until something changes).
- write: ``set_local_health()``, ``set_replication_lag()``, ``set_load()``.

Everything runs on one thread (the event loop); nothing here is thread-safe.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import Any

from .clock import AsyncioScheduler, Scheduler, TimerHandle
from .config import GossipConfig
from .membership import LIVE, Membership, RttSample, SendPacket, StartPushPull
from .messages import PARSERS, MemberEntry
from .state import ClusterState, NodeStateRow, RegionHealth, latency_matrix, region_health, replication_lag
from .transport import Transport, UdpTransport
from .wire import DropReason, FrameDropped, MessageType, ReplayGuard, decode_frame, encode_frame, encode_message, frame_overhead


@dataclass(frozen=True, slots=True)
class MemberInfo:
    name: str
    region: str
    address: str
    state: str  # "alive" | "suspect" | "dead" | "left"
    incarnation: int


_DROP_COUNTER = {
    DropReason.MALFORMED: "dropped_malformed",
    DropReason.BAD_VERSION: "dropped_version",
    DropReason.UNKNOWN_KEY: "dropped_unknown_key",
    DropReason.BAD_MAC: "dropped_bad_mac",
    DropReason.STALE: "dropped_stale",
    DropReason.REPLAY: "dropped_replay",
}

COUNTER_NAMES = (
    "messages_in", "messages_out", "bytes_in", "bytes_out",
    "dropped_bad_mac", "dropped_unknown_key", "dropped_replay", "dropped_stale",
    "dropped_malformed", "dropped_version", "unknown_messages",
    "pushpull_ok", "pushpull_failed",
)


class GossipNode:
    def __init__(self, config: GossipConfig, transport: Transport, scheduler: Scheduler,
                 *, rng: random.Random | None = None) -> None:
        self.config = config
        self.name = config.node_name
        self.region = config.region
        self.transport = transport
        self.scheduler = scheduler
        self.keyring = config.keyring()
        self.replay = ReplayGuard(config.replay_window, config.max_clock_skew_s)
        self.counters: dict[str, int] = dict.fromkeys(COUNTER_NAMES, 0)
        now = scheduler.time()
        self.membership = Membership(
            config.swim(), self.name, config.advertise_addr, config.region,
            config.pushpull_port_effective, now, rng or random.Random(), config.seeds,
        )
        # row versions and frame numbers start from boot time, so a restarted
        # node is newer than its previous life without remembering anything
        boot_us = int(scheduler.wall() * 1_000_000)
        self.state = ClusterState(self.name, config.region, config.app_version, boot_us,
                                  config.state_publish_interval_s, config.rtt_ewma_alpha)
        self._name_bytes = self.name.encode()
        self._frame_seq = boot_us
        self._overhead = frame_overhead(self.keyring, self._name_bytes)
        self._wake: TimerHandle | None = None
        self._wake_at = float("inf")
        self._running = False
        self._publish_check = True
        self._next_age_check = 0.0
        self._view_key: tuple[int, int] = (-1, -1)
        self._live_rows: list[NodeStateRow] = []

    # ---- lifecycle -------------------------------------------------------------

    def start(self, join: bool = True) -> None:
        """Start ticking; with ``join``, push-pull with the seeds first."""
        self._running = True
        self.transport.set_handlers(self._on_packet, self._on_stream)
        if join:
            self.membership.join(self.scheduler.time())
        self._pump()

    def leave(self) -> None:
        """Announce a graceful leave (gossip keeps running until ``stop``)."""
        self.membership.leave(self.scheduler.time())
        self._pump()

    def stop(self) -> None:
        self._running = False
        if self._wake is not None:
            self._wake.cancel()
            self._wake = None
        self._wake_at = float("inf")

    # ---- the proxy's setters ------------------------------------------------------

    def set_local_health(self, healthy_backends: int, total_backends: int) -> None:
        self.state.set_health(healthy_backends, total_backends, int(self.scheduler.wall() * 1000))
        self._publish_check = True
        self._pump()

    def set_replication_lag(self, seconds: float) -> None:
        self.state.set_replication_lag(seconds)
        self._publish_check = True
        self._pump()

    def set_load(self, load: float) -> None:
        self.state.set_load(load)
        self._publish_check = True
        self._pump()

    # ---- the routing layer's views --------------------------------------------------

    def live_rows(self) -> list[NodeStateRow]:
        key = (self.membership.changes, self.state.changes)
        if key != self._view_key:
            members = self.membership.members
            self._live_rows = [
                row for name, row in self.state.rows.items()
                if (m := members.get(name)) is not None and m.state in LIVE
            ]
            self._view_key = key
        return self._live_rows

    def latency_matrix(self) -> dict[str, dict[str, float]]:
        """src region -> dst region -> RTT ms (median over the src region's live nodes)."""
        return latency_matrix(self.live_rows())

    def region_health(self) -> dict[str, RegionHealth]:
        return region_health(self.live_rows(), self.config.regions)

    def replication_lag(self) -> dict[str, float]:
        return replication_lag(self.live_rows())

    def members(self) -> list[MemberInfo]:
        return [
            MemberInfo(m.name, m.region, m.addr, m.state.name.lower(), m.incarnation)
            for m in sorted(self.membership.members.values(), key=lambda m: m.name)
        ]

    def snapshot(self) -> dict[str, Any]:
        """Everything above as JSON-ready data (GET /gossip/state)."""
        return {
            "node": self.name,
            "region": self.region,
            "incarnation": self.membership.local.incarnation,
            "latency_matrix_ms": self.latency_matrix(),
            "region_health": {r: _asdict(h) for r, h in self.region_health().items()},
            "replication_lag_s": self.replication_lag(),
            "members": [_asdict(m) for m in self.members()],
            "counters": dict(self.counters),
            "awareness": self.membership.awareness.score,
        }

    # ---- outgoing ---------------------------------------------------------------------

    def _pump(self) -> None:
        """Carry out the membership's actions, publish our row if due, re-arm the timer."""
        if not self._running:
            return
        m = self.membership
        now = self.scheduler.time()
        for action in m.drain():
            if isinstance(action, SendPacket):
                self._send(action)
            elif isinstance(action, RttSample):
                self.state.observe_rtt(action.region, action.rtt_s, now)
                self._publish_check = True
            elif isinstance(action, StartPushPull):
                self._start_pushpull(action)
        if self._publish_check:
            self._publish_check = False
            row = self.state.maybe_publish(now, m.num_live())
            if row is not None:
                m.queue.queue(("s", self.name), encode_message(MessageType.STATE, row.payload()))
        deadline = m.next_deadline()
        if deadline < self._wake_at:
            if self._wake is not None:
                self._wake.cancel()
            self._wake_at = deadline
            self._wake = self.scheduler.call_at(deadline, self._on_wake)

    def _on_wake(self) -> None:
        self._wake = None
        self._wake_at = float("inf")
        if not self._running:
            return
        now = self.scheduler.time()
        self.membership.advance(now)
        if now >= self._next_age_check:  # RTT estimates also age out on time alone
            self._next_age_check = now + 5.0
            self._publish_check = True
        self._pump()

    def _send(self, action: SendPacket) -> None:
        budget = self.config.max_packet_bytes - self._overhead - sum(len(x) + 1 for x in action.messages)
        extra = self.membership.queue.take(budget, self.membership.num_live())
        if not action.messages and not extra:
            return
        frame = self._frame(action.messages + extra)
        self.counters["messages_out"] += 1
        self.counters["bytes_out"] += len(frame)
        self.transport.send_packet(action.addr, frame)

    def _frame(self, messages: list[bytes]) -> bytes:
        self._frame_seq += 1
        ts_ms = int(self.scheduler.wall() * 1000)
        return encode_frame(self.keyring, self._name_bytes, self._frame_seq, ts_ms, messages)

    # Push-pull, memberlist's full-state sync with a digest to spare bytes:
    #   request : all our members, each with the version of its row we hold, + our own row
    #   reply   : all the server's members (with versions), + the rows it holds newer than ours
    #   push    : (only if needed) the rows we hold newer than the server's, server answers empty
    # At 500 nodes a full row set is ~200 KB; in a settled cluster the exchange
    # is the ~40 KB member list each way and no rows.

    def _pushpull_frame(self, join: bool, rows: list[dict[str, Any]], push_only: bool = False) -> bytes:
        if push_only:
            payload: dict[str, Any] = {"j": False, "m": [], "s": rows, "x": 1}
        else:
            version_of = self.state.version_of
            entries = [m.entry(version_of(m.name)).payload() for m in self.membership.members.values()]
            payload = {"j": join, "m": entries, "s": rows}
        frame = self._frame([encode_message(MessageType.PUSH_PULL, payload)])
        self.counters["messages_out"] += 1
        self.counters["bytes_out"] += len(frame)
        return frame

    def _rows_newer_than(self, theirs: dict[str, int]) -> list[dict[str, Any]]:
        members = self.membership.members
        return [
            self.state.payloads[name] for name, row in self.state.rows.items()
            if name in members and row.version > theirs.get(name, 0)
        ]

    def _start_pushpull(self, action: StartPushPull) -> None:
        frame = self._pushpull_frame(action.join, [self.state.payloads[self.name]])
        addr = action.addr
        self.transport.send_stream(addr, frame, lambda reply: self._on_pushpull_reply(addr, reply),
                                   self.config.pushpull_timeout_s)

    # ---- incoming ---------------------------------------------------------------------

    def _accept(self, data: bytes) -> tuple[str, list[tuple[int, dict[str, Any]]]] | None:
        self.counters["messages_in"] += 1
        self.counters["bytes_in"] += len(data)
        try:
            frame = decode_frame(self.keyring, data)
        except FrameDropped as exc:
            self.counters[_DROP_COUNTER[exc.reason]] += 1
            return None
        reason = self.replay.check(frame.sender, frame.seq, frame.timestamp_ms, self.scheduler.wall())
        if reason is not None:
            self.counters[_DROP_COUNTER[reason]] += 1
            return None
        if frame.sender == self.name:
            return None
        return frame.sender, frame.messages

    def _on_packet(self, data: bytes, src: str) -> None:
        if not self._running:
            return
        now = self.scheduler.time()  # before decoding: RTT samples measure the network, not our HMAC
        accepted = self._accept(data)
        if accepted is None:
            return
        sender, messages = accepted
        for mtype, payload in messages:
            try:
                parse = PARSERS.get(mtype)
                if parse is not None:
                    self.membership.handle(parse(payload), sender, now)
                elif mtype == MessageType.STATE:
                    if not self.state.is_news(payload["n"], payload["v"]):
                        continue
                    row = NodeStateRow.parse(payload)
                    if self.state.merge(row, payload):
                        # first time we hear this version: pass it on (epidemic)
                        self.membership.queue.queue(("s", row.node), encode_message(MessageType.STATE, payload))
                    elif row.node == self.name:
                        self._publish_check = True
                else:
                    self.counters["unknown_messages"] += 1  # a newer peer's type: ignore
            except (KeyError, ValueError, TypeError, IndexError, AttributeError):
                self.counters["dropped_malformed"] += 1
        self._pump()

    def _on_stream(self, data: bytes, src: str) -> bytes | None:
        if not self._running:
            return None
        parsed = self._accept_pushpull(data)
        if parsed is None:
            return None
        sender, payload, entries, rows = parsed
        if payload.get("x"):
            reply = self._pushpull_frame(False, [], push_only=True)
        else:
            # our state before theirs, as memberlist does
            theirs = {e.name: e.row_version for e in entries}
            reply = self._pushpull_frame(False, self._rows_newer_than(theirs))
        self._merge_pushpull(sender, entries, rows)
        return reply

    def _on_pushpull_reply(self, addr: str, data: bytes | None) -> None:
        if not self._running:
            return
        parsed = None if data is None else self._accept_pushpull(data)
        if parsed is None:
            self.counters["pushpull_failed"] += 1
            return
        sender, payload, entries, rows = parsed
        self._merge_pushpull(sender, entries, rows)
        if payload.get("x") or not entries:
            return
        newer = self._rows_newer_than({e.name: e.row_version for e in entries})
        if newer:
            frame = self._pushpull_frame(False, newer, push_only=True)
            self.transport.send_stream(addr, frame, lambda reply: self._on_push_ack(reply),
                                       self.config.pushpull_timeout_s)

    def _on_push_ack(self, data: bytes | None) -> None:
        if self._running and (data is None or self._accept_pushpull(data) is None):
            self.counters["pushpull_failed"] += 1

    def _accept_pushpull(
        self, data: bytes
    ) -> tuple[str, dict[str, Any], list[MemberEntry], list[tuple[NodeStateRow, dict[str, Any]]]] | None:
        accepted = self._accept(data)
        if accepted is None:
            return None
        sender, messages = accepted
        for mtype, payload in messages:
            if mtype != MessageType.PUSH_PULL:
                continue
            try:
                entries = [MemberEntry.parse(e) for e in payload["m"]]
                rows = [(NodeStateRow.parse(r), r) for r in payload["s"]]
            except (KeyError, ValueError, TypeError, IndexError, AttributeError):
                break
            return sender, payload, entries, rows
        self.counters["dropped_malformed"] += 1
        return None

    def _merge_pushpull(self, sender: str, entries: list[MemberEntry],
                        rows: list[tuple[NodeStateRow, dict[str, Any]]]) -> None:
        now = self.scheduler.time()
        self.membership.merge(entries, sender, now)
        for row, payload in rows:
            # not re-broadcast: the sender's other peers sync with it themselves
            if not self.state.merge(row, payload) and row.node == self.name:
                self._publish_check = True
        self.counters["pushpull_ok"] += 1
        self._pump()


def _asdict(obj: Any) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in obj.__slots__}


async def start_gossip(config: GossipConfig, *, rng: random.Random | None = None) -> GossipNode:
    """Bind the real transport and start a node on the running event loop.

    Stop with ``await stop_gossip(node)``.
    """
    transport = await UdpTransport.create(config.bind, config.pushpull_port)
    node = GossipNode(config, transport, AsyncioScheduler(), rng=rng)
    node.start()
    return node


async def stop_gossip(node: GossipNode, *, leave: bool = True, linger_s: float = 0.5) -> None:
    """Leave gracefully (gossip the leave for ``linger_s``), then close the sockets."""
    if leave and node.membership.num_live() > 1:
        node.leave()
        await asyncio.sleep(linger_s)
    node.stop()
    await node.transport.close()

