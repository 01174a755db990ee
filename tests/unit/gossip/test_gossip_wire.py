"""Frames: authentication, key ring lookup, versioning, replay protection."""

from __future__ import annotations

import pytest
from proxy.gossip.keyring import KeyRing
from proxy.gossip.wire import (
    DropReason,
    FrameDropped,
    MessageType,
    ReplayGuard,
    decode_frame,
    encode_frame,
    encode_message,
)

K1 = b"k" * 32
K2 = b"z" * 32
PING = encode_message(MessageType.PING, {"q": 7, "n": "b", "s": "10.0.0.1:7946"})


def frame(ring: KeyRing, seq: int = 1, ts: int = 1_000, sender: bytes = b"node-a") -> bytes:
    return encode_frame(ring, sender, seq, ts, [PING])


def test_roundtrip_carries_sender_seq_timestamp_and_messages() -> None:
    ring = KeyRing({"k1": K1}, "k1")
    f = decode_frame(ring, frame(ring, seq=42, ts=123_456))
    assert (f.sender, f.seq, f.timestamp_ms, f.key_id) == ("node-a", 42, 123_456, "k1")
    assert f.messages == [(int(MessageType.PING), {"q": 7, "n": "b", "s": "10.0.0.1:7946"})]


def test_message_type_numbers_never_change() -> None:
    # append-only: a renumbering would make mixed-version clusters misread each other
    assert [(t.name, t.value) for t in MessageType] == [
        ("PING", 1), ("INDIRECT_PING", 2), ("ACK", 3), ("NACK", 4), ("ALIVE", 5),
        ("SUSPECT", 6), ("DEAD", 7), ("STATE", 8), ("PUSH_PULL", 9),
    ]


@pytest.mark.parametrize("index", [0 + 1, 3, 12, 20, 30, -40, -1])
def test_any_flipped_bit_is_rejected(index: int) -> None:
    ring = KeyRing({"k1": K1}, "k1")
    data = bytearray(frame(ring))
    data[index] ^= 0x01
    with pytest.raises(FrameDropped) as exc:
        decode_frame(ring, bytes(data))
    assert exc.value.reason in (DropReason.BAD_MAC, DropReason.UNKNOWN_KEY, DropReason.MALFORMED)


def test_forged_sender_fails_the_mac() -> None:
    ring = KeyRing({"k1": K1}, "k1")
    data = frame(ring, sender=b"node-a")
    forged = data.replace(b"node-a", b"node-b", 1)
    with pytest.raises(FrameDropped) as exc:
        decode_frame(ring, forged)
    assert exc.value.reason is DropReason.BAD_MAC


def test_wrong_secret_under_a_known_id_is_bad_mac() -> None:
    sender = KeyRing({"k1": K2}, "k1")
    receiver = KeyRing({"k1": K1}, "k1")
    with pytest.raises(FrameDropped) as exc:
        decode_frame(receiver, frame(sender))
    assert exc.value.reason is DropReason.BAD_MAC


def test_unknown_key_id_is_dropped() -> None:
    sender = KeyRing({"k9": K1}, "k9")
    receiver = KeyRing({"k1": K1}, "k1")
    with pytest.raises(FrameDropped) as exc:
        decode_frame(receiver, frame(sender))
    assert exc.value.reason is DropReason.UNKNOWN_KEY


def test_other_wire_version_is_dropped() -> None:
    ring = KeyRing({"k1": K1}, "k1")
    data = b"\x02" + frame(ring)[1:]
    with pytest.raises(FrameDropped) as exc:
        decode_frame(ring, data)
    assert exc.value.reason is DropReason.BAD_VERSION


@pytest.mark.parametrize("data", [b"", b"\x01", b"\x01\x02k1" + b"\x00" * 10])
def test_short_frames_are_malformed(data: bytes) -> None:
    ring = KeyRing({"k1": K1}, "k1")
    with pytest.raises(FrameDropped) as exc:
        decode_frame(ring, data)
    assert exc.value.reason in (DropReason.MALFORMED, DropReason.UNKNOWN_KEY)


def test_rotation_old_and_new_key_both_accepted_until_removed() -> None:
    old = KeyRing({"k1": K1}, "k1")
    rotating = KeyRing({"k1": K1}, "k1")
    rotating.install("k2", K2)
    rotating.use("k2")
    new_frame = frame(rotating)
    assert decode_frame(rotating, frame(old)).key_id == "k1"  # laggards still heard
    assert decode_frame(rotating, new_frame).key_id == "k2"
    old.install("k2", K2)
    assert decode_frame(old, new_frame).key_id == "k2"
    rotating.remove("k1")
    with pytest.raises(FrameDropped) as exc:
        decode_frame(rotating, frame(KeyRing({"k1": K1}, "k1")))
    assert exc.value.reason is DropReason.UNKNOWN_KEY


# ---- replay guard ----

NOW = 1_700_000_000.0
NOW_MS = int(NOW * 1000)


def test_duplicate_is_a_replay() -> None:
    g = ReplayGuard(window=64)
    assert g.check("a", 10, NOW_MS, NOW) is None
    assert g.check("a", 10, NOW_MS, NOW) is DropReason.REPLAY


def test_reordered_within_window_accepted_once() -> None:
    g = ReplayGuard(window=64)
    for seq in (10, 12, 11, 5):
        assert g.check("a", seq, NOW_MS, NOW) is None
    for seq in (10, 11, 12, 5):
        assert g.check("a", seq, NOW_MS, NOW) is DropReason.REPLAY


def test_older_than_window_is_a_replay() -> None:
    g = ReplayGuard(window=64)
    assert g.check("a", 1000, NOW_MS, NOW) is None
    assert g.check("a", 1000 - 64, NOW_MS, NOW) is DropReason.REPLAY
    assert g.check("a", 1000 - 63, NOW_MS, NOW) is None


def test_senders_have_separate_windows() -> None:
    g = ReplayGuard(window=64)
    assert g.check("a", 5, NOW_MS, NOW) is None
    assert g.check("b", 5, NOW_MS, NOW) is None


def test_stale_or_future_timestamp_is_dropped() -> None:
    g = ReplayGuard(window=64, max_skew_s=30)
    assert g.check("a", 1, NOW_MS - 31_000, NOW) is DropReason.STALE
    assert g.check("a", 2, NOW_MS + 31_000, NOW) is DropReason.STALE
    assert g.check("a", 3, NOW_MS - 29_000, NOW) is None


def test_silent_senders_are_forgotten_only_after_twice_the_skew() -> None:
    g = ReplayGuard(window=64, max_skew_s=10)
    g.check("a", 1, NOW_MS, NOW)
    g.check("b", 1, NOW_MS + 15_000, NOW + 15)  # prune runs; "a" silent only 15 s
    assert len(g) == 2
    g.check("b", 2, NOW_MS + 45_000, NOW + 45)
    assert len(g) == 1  # "a": a replay of its frames would now be stale anyway
