from __future__ import annotations

import base64

import pytest

from proxy.gossip.keyring import KeyRing, KeyRingError, parse_secret

SECRET = bytes(range(32))


@pytest.mark.parametrize(
    "text",
    ["hex:" + SECRET.hex(), SECRET.hex(), "base64:" + base64.b64encode(SECRET).decode(),
     base64.b64encode(SECRET).decode()],
)
def test_secret_forms(text: str) -> None:
    assert parse_secret(text) == SECRET


@pytest.mark.parametrize("text", ["hex:zz", "base64:!!!", "hex:" + "ab" * 8 + "a", "hex:" + "ab" * 15])
def test_bad_or_short_secrets_rejected(text: str) -> None:
    with pytest.raises(KeyRingError):
        parse_secret(text)


def test_primary_must_exist_and_cannot_be_removed() -> None:
    with pytest.raises(KeyRingError):
        KeyRing({"a": SECRET}, "b")
    ring = KeyRing({"a": SECRET}, "a")
    with pytest.raises(KeyRingError):
        ring.remove("a")
    with pytest.raises(KeyRingError):
        ring.use("b")


def test_rotation_steps() -> None:
    ring = KeyRing({"a": SECRET}, "a")
    ring.install("b", SECRET[::-1])
    ring.use("b")
    ring.remove("a")
    assert ring.key_ids() == ["b"] and ring.primary == (b"b", SECRET[::-1])
    assert ring.lookup("a") is None


def test_repr_hides_secrets() -> None:
    assert SECRET.hex() not in repr(KeyRing({"a": SECRET}, "a"))


@pytest.mark.parametrize("key_id", ["", "has space", "x" * 33, "é"])
def test_key_ids_are_short_and_ascii(key_id: str) -> None:
    with pytest.raises(KeyRingError):
        KeyRing({key_id: SECRET}, key_id)
