"""The gossip key ring: several HMAC keys accepted, one used to send.

Rotation without downtime (memberlist's keyring.go, three steps run across the
whole cluster, each finished everywhere before the next starts):

1. ``install(new_id, new_key)`` on every node: the new key is accepted.
2. ``use(new_id)`` on every node: messages are now sent under the new key,
   still accepted by nodes that have not switched yet.
3. ``remove(old_id)`` on every node: the old key is no longer accepted.

Key ids travel in clear in every frame (so a receiver picks the right key in
O(1) instead of trying each); the secret never does.
"""

from __future__ import annotations

import base64
import binascii
import re

MIN_KEY_BYTES = 16  # HMAC-SHA256 wants >= 32; 16 is the floor we accept at all
MAX_KEY_ID_BYTES = 32  # the id is carried in every frame (one length byte + id)

_KEY_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,32}$")
_HEX_RE = re.compile(r"^[0-9a-fA-F]+$")


class KeyRingError(ValueError):
    """A key ring operation that would leave the ring unusable."""


def parse_secret(text: str) -> bytes:
    """Decode a configured secret.

    Accepted forms: ``hex:<hex>``, ``base64:<b64>``, or without a prefix: a
    string of 32 or more hex digits is hex, anything else must be strict base64.
    """
    text = text.strip()
    try:
        if text.startswith("hex:"):
            raw = bytes.fromhex(text[4:])
        elif text.startswith("base64:"):
            raw = base64.b64decode(text[7:], validate=True)
        elif len(text) >= 32 and len(text) % 2 == 0 and _HEX_RE.match(text):
            raw = bytes.fromhex(text)
        else:
            raw = base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error) as exc:
        raise KeyRingError(f"secret is neither hex nor base64: {exc}") from None
    if len(raw) < MIN_KEY_BYTES:
        raise KeyRingError(f"secret is {len(raw)} bytes, need at least {MIN_KEY_BYTES}")
    return raw


def check_key_id(key_id: str) -> None:
    if not _KEY_ID_RE.match(key_id):
        raise KeyRingError(f"key id {key_id!r} must be 1-32 characters of [A-Za-z0-9._-]")


class KeyRing:
    """Key id -> secret; ``primary`` is the id used to sign outgoing frames."""

    __slots__ = ("_keys", "_primary", "_primary_id_bytes")

    def __init__(self, keys: dict[str, bytes], primary: str) -> None:
        if not keys:
            raise KeyRingError("a key ring needs at least one key")
        self._keys: dict[str, bytes] = {}
        for key_id, secret in keys.items():
            check_key_id(key_id)
            if len(secret) < MIN_KEY_BYTES:
                raise KeyRingError(f"key {key_id!r} is shorter than {MIN_KEY_BYTES} bytes")
            self._keys[key_id] = bytes(secret)
        if primary not in self._keys:
            raise KeyRingError(f"primary key {primary!r} is not in the ring")
        self._primary = primary
        self._primary_id_bytes = primary.encode("ascii")

    @classmethod
    def from_config(cls, keys: dict[str, str], primary: str) -> KeyRing:
        return cls({key_id: parse_secret(text) for key_id, text in keys.items()}, primary)

    @property
    def primary_id(self) -> str:
        return self._primary

    @property
    def primary(self) -> tuple[bytes, bytes]:
        """(key id as ascii bytes, secret) used to sign."""
        return self._primary_id_bytes, self._keys[self._primary]

    def lookup(self, key_id: str) -> bytes | None:
        return self._keys.get(key_id)

    def key_ids(self) -> list[str]:
        return sorted(self._keys)

    def install(self, key_id: str, secret: bytes) -> None:
        check_key_id(key_id)
        if len(secret) < MIN_KEY_BYTES:
            raise KeyRingError(f"key {key_id!r} is shorter than {MIN_KEY_BYTES} bytes")
        self._keys[key_id] = bytes(secret)

    def use(self, key_id: str) -> None:
        if key_id not in self._keys:
            raise KeyRingError(f"cannot send under {key_id!r}: install it first")
        self._primary = key_id
        self._primary_id_bytes = key_id.encode("ascii")

    def remove(self, key_id: str) -> None:
        if key_id == self._primary:
            raise KeyRingError(f"cannot remove {key_id!r}: it is the primary key")
        self._keys.pop(key_id, None)

    def __repr__(self) -> str:  # never print secrets
        return f"KeyRing(ids={self.key_ids()}, primary={self._primary!r})"
