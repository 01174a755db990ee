"""Gossip wire format: versioned, authenticated frames of compact JSON messages.

Frame, version 1 (all integers big-endian)::

    0   u8        wire version (= 1)
    1   u8        K, length of the key id
    2   K bytes   key id (ascii)                     -> picks the key from the ring
        u8        S, length of the sender name
        S bytes   sender node name (utf-8)           -> replay window per sender
        u64       sender message sequence            -> replay window
        u64       sender wall clock, ms since epoch  -> freshness check
        N bytes   body: JSON array of [type, payload] messages: the probe
                  message (ping, ack...) if any, then piggybacked broadcasts
    -32 32 bytes  HMAC-SHA256(key, every byte above)

Everything but the tag is authenticated, so a forged sender, sequence or key id
fails the MAC. A receiver ignores message types it does not know, so a newer
node can add types without breaking older ones; a new *layout* bumps the wire
version instead.

Replay protection (``ReplayGuard``): every node numbers the frames it sends
with one counter shared by UDP and TCP, started at its boot time in
microseconds so that a restarted node's numbers are above the ones it used
before (as long as it sent fewer than a million frames a second). A receiver
keeps, per sender, the highest number seen and a window of the numbers below
it (IPsec-style, RFC 4303 section 3.4.3): a number seen before or older than the
window is a replay. Frames whose timestamp is more than ``max_skew`` away from
the receiver's clock are stale; that bounds how long a sender's window must be
remembered (2 x max_skew after its last frame).
"""

from __future__ import annotations

import hmac
import json
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from .keyring import KeyRing

WIRE_VERSION = 1
TAG_BYTES = 32
_U64_PAIR = struct.Struct(">QQ")
_MIN_FRAME = 1 + 1 + 1 + 1 + 1 + 16 + 2 + TAG_BYTES  # one-byte ids, "[]" body

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


class MessageType(IntEnum):
    """Message type numbers. APPEND-ONLY: never renumber or reuse a number."""

    PING = 1  # {"q": seq, "n": target name, "s": reply addr}
    INDIRECT_PING = 2  # {"q", "n", "a": target addr, "s", "k": want nack}
    ACK = 3  # {"q": seq}
    NACK = 4  # {"q": seq}
    ALIVE = 5  # {"n", "i": incarnation, "a": addr, "r": region, "p": push-pull port}
    SUSPECT = 6  # {"n", "i", "f": accuser}
    DEAD = 7  # {"n", "i", "f"}; "f" == "n" means the node left gracefully
    STATE = 8  # a node state row, see state.py
    PUSH_PULL = 9  # {"j": join, "m": [member entries], "s": [state rows]}


class DropReason(IntEnum):
    MALFORMED = 1
    BAD_VERSION = 2
    UNKNOWN_KEY = 3
    BAD_MAC = 4
    STALE = 5
    REPLAY = 6


class FrameDropped(Exception):
    def __init__(self, reason: DropReason, detail: str = "") -> None:
        super().__init__(f"{reason.name}: {detail}" if detail else reason.name)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Frame:
    sender: str
    seq: int
    timestamp_ms: int
    key_id: str
    messages: list[tuple[int, dict[str, Any]]]


def encode_message(mtype: MessageType, payload: dict[str, Any]) -> bytes:
    """One ``[type, payload]`` element; broadcasts are kept in this form."""
    return _dumps([int(mtype), payload]).encode()


def encode_frame(
    keyring: KeyRing, sender: bytes, seq: int, timestamp_ms: int, messages: list[bytes]
) -> bytes:
    """Sign pre-encoded messages (from ``encode_message``) into one frame.

    ``sender`` is the utf-8 node name. Joining pre-encoded parts avoids
    re-serialising a broadcast each time it is retransmitted.
    """
    key_id, secret = keyring.primary
    head = b"".join(
        (
            bytes((WIRE_VERSION, len(key_id))),
            key_id,
            bytes((len(sender),)),
            sender,
            _U64_PAIR.pack(seq, timestamp_ms),
            b"[",
            b",".join(messages),
            b"]",
        )
    )
    return head + hmac.digest(secret, head, "sha256")


def frame_overhead(keyring: KeyRing, sender: bytes) -> int:
    return 2 + len(keyring.primary[0]) + 1 + len(sender) + 16 + 2 + TAG_BYTES


def decode_frame(keyring: KeyRing, data: bytes) -> Frame:
    """Authenticate and parse a frame; raises ``FrameDropped``.

    Replay and freshness are the ``ReplayGuard``'s job, after this succeeds,
    so an unauthenticated frame can never move a sender's window.
    """
    if len(data) < _MIN_FRAME:
        raise FrameDropped(DropReason.MALFORMED, "short frame")
    if data[0] != WIRE_VERSION:
        raise FrameDropped(DropReason.BAD_VERSION, f"wire version {data[0]}")
    klen = data[1]
    pos = 2 + klen
    try:
        key_id = data[2:pos].decode("ascii")
    except UnicodeDecodeError:
        raise FrameDropped(DropReason.MALFORMED, "key id not ascii") from None
    secret = keyring.lookup(key_id)
    if secret is None:
        raise FrameDropped(DropReason.UNKNOWN_KEY, key_id)
    body_end = len(data) - TAG_BYTES
    if body_end <= pos:
        raise FrameDropped(DropReason.MALFORMED, "truncated")
    expected = hmac.digest(secret, data[:body_end], "sha256")
    if not hmac.compare_digest(expected, data[body_end:]):
        raise FrameDropped(DropReason.BAD_MAC, key_id)
    try:
        slen = data[pos]
        sender = data[pos + 1 : pos + 1 + slen].decode()
        pos += 1 + slen
        seq, ts_ms = _U64_PAIR.unpack_from(data, pos)
        body = json.loads(data[pos + 16 : body_end])
        messages = [(int(m[0]), m[1]) for m in body]
    except (IndexError, struct.error, ValueError, TypeError, KeyError) as exc:
        raise FrameDropped(DropReason.MALFORMED, str(exc)) from None
    if not sender or not all(isinstance(p, dict) for _, p in messages):
        raise FrameDropped(DropReason.MALFORMED, "bad body")
    return Frame(sender, seq, ts_ms, key_id, messages)


class _Window:
    __slots__ = ("highest", "bits", "last_seen")

    def __init__(self, highest: int, now: float) -> None:
        self.highest = highest
        self.bits = 1  # bit i set: highest - i was seen
        self.last_seen = now


class ReplayGuard:
    """Per-sender sliding window of message sequence numbers + clock skew check."""

    def __init__(self, window: int = 1024, max_skew_s: float = 30.0, max_senders: int = 65536) -> None:
        if window < 8:
            raise ValueError("replay window must be at least 8")
        self.window = window
        self.max_skew_ms = int(max_skew_s * 1000)
        self.max_senders = max_senders
        self._senders: dict[str, _Window] = {}
        self._next_prune = 0.0

    def check(self, sender: str, seq: int, timestamp_ms: int, now_wall: float) -> DropReason | None:
        """Accept (returns None and records ``seq``) or say why to drop."""
        now_ms = int(now_wall * 1000)
        if abs(now_ms - timestamp_ms) > self.max_skew_ms:
            return DropReason.STALE
        if now_wall >= self._next_prune:
            self._prune(now_wall)
        win = self._senders.get(sender)
        if win is None:
            if len(self._senders) >= self.max_senders:
                return DropReason.REPLAY  # table full of live senders: refuse, never forget
            self._senders[sender] = _Window(seq, now_wall)
            return None
        win.last_seen = now_wall
        if seq > win.highest:
            shift = seq - win.highest
            win.bits = 1 if shift >= self.window else ((win.bits << shift) | 1) & ((1 << self.window) - 1)
            win.highest = seq
            return None
        offset = win.highest - seq
        if offset >= self.window or (win.bits >> offset) & 1:
            return DropReason.REPLAY
        win.bits |= 1 << offset
        return None

    def _prune(self, now_wall: float) -> None:
        # A sender silent for 2 x max_skew can only be replayed with frames that
        # fail the freshness check, so its window is no longer needed.
        horizon = now_wall - 2 * self.max_skew_ms / 1000
        for name in [n for n, w in self._senders.items() if w.last_seen < horizon]:
            del self._senders[name]
        self._next_prune = now_wall + self.max_skew_ms / 1000

    def __len__(self) -> int:
        return len(self._senders)
