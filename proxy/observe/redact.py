"""Secrets out of anything the admin API shows.

A key is secret when its name contains one of SECRET_WORDS, compared
case-insensitively and ignoring '_' and '-' (so `hmacKeys`, `api-key`,
`admin_token` all match). Matching by substring over-redacts a little
(`idempotency_key_header` is hidden too); showing a secret is the worse
mistake. URLs with a password (``scheme://user:pass@host``) lose the password
wherever they appear. None stays None so an operator can see a secret is unset.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

REDACTED = "<redacted>"
SECRET_WORDS = ("token", "secret", "key", "password", "passwd", "hmac", "credential",
                "auth", "signature")
_URL_PASSWORD = re.compile(r"(?P<pre>[a-z][a-z0-9+.-]*://[^/@:\s]*:)[^/@\s]+@", re.IGNORECASE)


def is_secret_key(name: str) -> bool:
    n = name.lower().replace("_", "").replace("-", "")
    return any(w in n for w in SECRET_WORDS)


def redact(value: Any) -> Any:
    """A copy of `value` (dicts, lists, tuples, scalars) with secrets replaced."""
    if hasattr(value, "model_dump"):  # a pydantic model: redact its plain data
        value = value.model_dump(mode="json")
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            ks = str(k)
            if is_secret_key(ks) and v is not None:
                out[ks] = REDACTED
            else:
                out[ks] = redact(v)
        return out
    if isinstance(value, (list, tuple, set, frozenset)):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return _URL_PASSWORD.sub(lambda m: m.group("pre") + REDACTED + "@", value)
    if isinstance(value, bytes):
        return REDACTED  # raw bytes in config are key material more often than not
    return value
