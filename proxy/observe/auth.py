"""Who may do what on the admin listener: a pure decision, tested without sockets.

- public  (GET /, the status page: static HTML with no node data in it)
- read    (GET /metrics, GET /api/*): a valid bearer token, or a loopback peer
          whose Host header is an IP literal or "localhost" (a DNS-rebinding
          page in a browser on the node sends its own domain as Host)
- action  (POST): a valid bearer token, always. With no token configured,
          actions are refused (403), so an unconfigured node cannot be
          drained by anything that can reach its loopback.

A wrong token is 401 even from loopback: the caller meant to authenticate
and should hear that it failed.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
from dataclasses import dataclass
from typing import Literal

Kind = Literal["public", "read", "action"]


@dataclass(frozen=True, slots=True)
class Decision:
    ok: bool
    status: int        # 200 when ok, else 401 / 403
    reason: str
    who: str           # "token:<fingerprint>", "loopback", "anonymous"


def token_fingerprint(token: str) -> str:
    """Names a token in logs without revealing it (8 hex of its SHA-256)."""
    return hashlib.sha256(token.encode()).hexdigest()[:8]


def is_loopback(peer: str | None) -> bool:
    if not peer:
        return False
    try:
        addr = ipaddress.ip_address(peer.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped.is_loopback
    return addr.is_loopback


def host_name(host_header: str | None) -> str:
    """'127.0.0.1:9901' -> '127.0.0.1', '[::1]:9901' -> '::1', 'x.test' -> 'x.test'."""
    h = (host_header or "").strip().lower()
    if h.startswith("["):
        return h[1:].partition("]")[0]
    if h.count(":") == 1:
        return h.partition(":")[0]
    return h


def host_is_local(host_header: str | None, extra: frozenset[str] = frozenset()) -> bool:
    name = host_name(host_header)
    if name in ("localhost", "") or name in extra:
        return name != ""
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, cred = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return ""  # present but not a bearer token: treated as a wrong token
    return cred.strip()


def decide(kind: Kind, *, token: str | None, authorization: str | None, peer: str | None,
           host: str | None, extra_hosts: frozenset[str] = frozenset()) -> Decision:
    if kind == "public":
        return Decision(True, 200, "public", "anonymous")
    presented = bearer(authorization)
    if presented is not None and token is not None:
        if hmac.compare_digest(presented.encode(), token.encode()):
            return Decision(True, 200, "token", f"token:{token_fingerprint(token)}")
        return Decision(False, 401, "invalid bearer token", "anonymous")
    if kind == "action":
        if token is None:
            return Decision(False, 403, "actions are disabled: no admin token is configured "
                                        "(set admin.token or $NOVAEDGE_ADMIN_TOKEN)", "anonymous")
        return Decision(False, 401, "a bearer token is required for actions", "anonymous")
    if is_loopback(peer):
        if host_is_local(host, extra_hosts):
            return Decision(True, 200, "loopback", "loopback")
        return Decision(False, 403, "Host header must be an IP address or localhost", "anonymous")
    if token is None:
        return Decision(False, 403, "reads are allowed only from loopback when no token is configured",
                        "anonymous")
    return Decision(False, 401, "a bearer token is required", "anonymous")
