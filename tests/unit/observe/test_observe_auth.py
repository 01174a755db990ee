"""Admin access decisions, secret redaction and config, without sockets."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from proxy.observe.auth import decide, host_is_local, is_loopback, token_fingerprint
from proxy.observe.config import AccessLogConfig, AdminConfig, MetricsConfig
from proxy.observe.redact import REDACTED, redact

TOKEN = "t0ken-0123456789abcdef"


def d(kind, *, token=TOKEN, auth=None, peer="127.0.0.1", host="127.0.0.1:9901"):
    return decide(kind, token=token, authorization=auth, peer=peer, host=host)


@pytest.mark.parametrize("kind, token, auth, peer, host, status, who", [
    # actions
    ("action", TOKEN, None, "127.0.0.1", "127.0.0.1:9901", 401, "anonymous"),
    ("action", TOKEN, "Bearer nope", "127.0.0.1", "127.0.0.1:9901", 401, "anonymous"),
    ("action", TOKEN, "Basic " + TOKEN, "127.0.0.1", "127.0.0.1:9901", 401, "anonymous"),
    ("action", TOKEN, f"Bearer {TOKEN}", "203.0.113.9", "edge.example:9901", 200, f"token:{token_fingerprint(TOKEN)}"),
    ("action", None, None, "127.0.0.1", "127.0.0.1:9901", 403, "anonymous"),
    ("action", None, f"Bearer {TOKEN}", "127.0.0.1", "127.0.0.1:9901", 403, "anonymous"),
    # reads
    ("read", TOKEN, None, "127.0.0.1", "127.0.0.1:9901", 200, "loopback"),
    ("read", TOKEN, None, "::1", "[::1]:9901", 200, "loopback"),
    ("read", TOKEN, None, "::ffff:127.0.0.1", "localhost:9901", 200, "loopback"),
    ("read", TOKEN, None, "203.0.113.9", "10.0.0.1:9901", 401, "anonymous"),
    ("read", TOKEN, f"Bearer {TOKEN}", "203.0.113.9", "10.0.0.1:9901", 200, f"token:{token_fingerprint(TOKEN)}"),
    ("read", TOKEN, "Bearer wrong", "127.0.0.1", "127.0.0.1:9901", 401, "anonymous"),
    ("read", None, None, "127.0.0.1", "127.0.0.1:9901", 200, "loopback"),
    ("read", None, None, "203.0.113.9", "10.0.0.1:9901", 403, "anonymous"),
    # DNS rebinding: a page on evil.example resolved to 127.0.0.1
    ("read", None, None, "127.0.0.1", "evil.example:9901", 403, "anonymous"),
    ("read", TOKEN, None, "127.0.0.1", "", 403, "anonymous"),
    # the status page itself carries no data
    ("public", None, None, "203.0.113.9", "x", 200, "anonymous"),
])
def test_decide(kind, token, auth, peer, host, status, who) -> None:
    dec = decide(kind, token=token, authorization=auth, peer=peer, host=host)
    assert (dec.status, dec.who, dec.ok) == (status, who, status == 200)


def test_refusals_explain_themselves() -> None:
    assert "no admin token" in d("action", token=None).reason
    assert "bearer" in d("action").reason.lower()


def test_helpers() -> None:
    assert is_loopback("127.9.9.9") and is_loopback("::1") and not is_loopback("10.0.0.1")
    assert not is_loopback(None) and not is_loopback("not-an-ip")
    assert host_is_local("10.1.2.3:80") and host_is_local("localhost") and not host_is_local("a.example")
    assert host_is_local("node.internal:9901", frozenset({"node.internal"}))
    assert TOKEN[:8] not in token_fingerprint(TOKEN) and len(token_fingerprint(TOKEN)) == 8


def test_redact_recursively() -> None:
    cfg = {"admin": {"token": "s1", "token_env": "NOVAEDGE_ADMIN_TOKEN", "listen": "127.0.0.1:9901"},
           "gossip": {"hmacKeys": ["s2", "s3"], "seeds": ["10.0.0.1:7946"]},
           "pools": [{"backends": ["10.0.0.1:80"], "health_url": "http://probe:s4@10.0.0.1/h",
                      "auth": {"Password": "s5"}}],
           "upstream": {"api-key": "s6", "client_secret": None, "cert_pem": b"s7"},
           "name": "edge"}
    out = redact(cfg)
    text = repr(out)
    for secret in ("s1", "s2", "s3", "s4", "s5", "s6", "s7"):
        assert f"'{secret}'" not in text and f"{secret}@" not in text
    assert out["admin"]["listen"] == "127.0.0.1:9901" and out["name"] == "edge"
    assert out["gossip"]["hmacKeys"] == REDACTED and out["gossip"]["seeds"] == ["10.0.0.1:7946"]
    assert out["pools"][0]["health_url"] == f"http://probe:{REDACTED}@10.0.0.1/h"
    assert out["upstream"]["client_secret"] is None          # unset stays visible as unset
    assert cfg["admin"]["token"] == "s1"                      # the input is not modified


def test_redact_pydantic_models() -> None:
    out = redact(AdminConfig(token="x" * 20))
    assert out["token"] == REDACTED and out["listen"] == "127.0.0.1:9901"


def test_config_models() -> None:
    a = AdminConfig()
    assert a.listen == "127.0.0.1:9901" and a.host_port() == ("127.0.0.1", 9901) and a.token is None
    assert AdminConfig(listen="[::1]:9000").host_port() == ("::1", 9000)
    assert a.resolved_token({}) is None
    assert a.resolved_token({"NOVAEDGE_ADMIN_TOKEN": TOKEN}) == TOKEN
    assert AdminConfig(token=TOKEN + "x").resolved_token({"NOVAEDGE_ADMIN_TOKEN": TOKEN}) == TOKEN + "x"
    with pytest.raises(ValueError, match="shorter"):
        a.resolved_token({"NOVAEDGE_ADMIN_TOKEN": "short"})
    for bad in ({"token": "short"}, {"listen": "9901"}, {"extra": 1}):
        with pytest.raises(ValidationError):
            AdminConfig(**bad)
    with pytest.raises(ValidationError):
        a.listen = "0.0.0.0:1"  # type: ignore[misc]   frozen
    assert AccessLogConfig().path == "-" and AccessLogConfig().buffer_kib == 4096
    with pytest.raises(ValidationError):
        AccessLogConfig(buffer_kib=1)
    assert MetricsConfig().flush_interval_s == 1.0
