"""Config for the data-plane core: limits, upstream, listeners, trusted proxies.
Defaults are the documented ones; every error names its key path."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from proxy.config import ConfigError, Limits, UpstreamConfig, load_config, parse_config, parse_hostport

BASE: dict[str, Any] = {
    "pools": {"p": {"regions": {"us-east-1": ["127.0.0.1:9000"]}}},
    "routes": [{"name": "r", "pool": "p"}],
}


def cfg(**over: Any) -> Any:
    return parse_config({**BASE, **over})


def problems(**over: Any) -> list[str]:
    with pytest.raises(ConfigError) as e:
        cfg(**over)
    return e.value.problems


def test_documented_defaults() -> None:
    lim, up = Limits(), UpstreamConfig()
    assert lim.max_request_line == 8192 and lim.max_header_bytes == 32768 and lim.max_headers == 100
    assert lim.max_body_bytes == 1 << 30
    assert up.retries >= 0 and up.connect_timeout_s < up.response_timeout_s
    c = cfg()
    assert c.limits == lim and c.upstream == up and c.trusted_proxies == []


def test_limits_are_configurable() -> None:
    c = cfg(limits={"max_request_line": 1024, "max_header_bytes": 4096, "max_headers": 20,
                    "header_timeout_s": 0.5, "body_idle_timeout_s": 2, "keepalive_timeout_s": 3},
            upstream={"connect_timeout_s": 0.1, "response_timeout_s": 1, "idle_timeout_s": 5,
                      "max_connections_per_backend": 8, "retries": 0})
    assert (c.limits.max_request_line, c.limits.max_headers, c.limits.header_timeout_s) == (1024, 20, 0.5)
    assert (c.upstream.max_connections_per_backend, c.upstream.retries) == (8, 0)


def test_route_body_limit() -> None:
    c = cfg(routes=[{"name": "r", "pool": "p", "max_body_bytes": 10}])
    assert c.routes[0].max_body_bytes == 10
    assert any(p.startswith("routes[0].max_body_bytes") for p in
               problems(routes=[{"name": "r", "pool": "p", "max_body_bytes": -1}]))


@pytest.mark.parametrize("over,path", [
    ({"limits": {"max_headers": 0}}, "limits.max_headers"),
    ({"limits": {"header_timeout_s": 0}}, "limits.header_timeout_s"),
    ({"limits": {"max_request_line": "big"}}, "limits.max_request_line"),
    ({"limits": {"max_header_byte": 1}}, "limits.max_header_byte"),          # typo: unknown key
    ({"upstream": {"retries": 11}}, "upstream.retries"),
    ({"upstream": {"connect_timeout_s": -1}}, "upstream.connect_timeout_s"),
    ({"trusted_proxies": ["10.0.0.0/8", "not-a-net"]}, "trusted_proxies"),
    ({"listeners": [{"bind": "127.0.0.1"}]}, "listeners[0].bind"),
    ({"listeners": [{"bind": "127.0.0.1:80", "proxy_protocol_from": ["x"]}]}, "listeners[0].proxy_protocol_from"),
    ({"listeners": [{"bind": "127.0.0.1:80"}, {"bind": "127.0.0.1:80"}]}, "listeners"),
    ({"routes": [{"name": "r", "pool": "nope"}]}, "routes[0].pool"),
])
def test_errors_name_their_key_path(over: dict[str, Any], path: str) -> None:
    got = problems(**over)
    assert any(p.startswith(path) for p in got), got


def test_all_problems_reported_at_once() -> None:
    got = problems(limits={"max_headers": 0, "header_timeout_s": 0}, upstream={"retries": -1})
    assert len(got) >= 3


def test_listener_proxy_protocol_and_tls(tmp_path: Path) -> None:
    c = cfg(listeners=[{"bind": "127.0.0.1:0", "proxy_protocol": True, "proxy_protocol_from": ["10.0.0.0/8"]},
                       {"bind": "[::1]:8443", "tls": [{"cert": "c.pem", "key": "k.pem", "server_names": ["a.test"]}]}])
    assert c.listeners[0].proxy_protocol and c.listeners[0].proxy_protocol_from == ["10.0.0.0/8"]
    assert c.listeners[1].tls[0].server_names == ["a.test"]
    # the default trusts only loopback to send PROXY headers
    assert cfg(listeners=[{"bind": "127.0.0.1:0"}]).listeners[0].proxy_protocol_from == ["127.0.0.0/8", "::1/128"]


def test_config_is_frozen() -> None:
    c = cfg()
    with pytest.raises(Exception):
        c.limits.max_headers = 5  # type: ignore[misc]


def test_yaml_file(tmp_path: Path) -> None:
    f = tmp_path / "n.yaml"
    f.write_text("pools:\n  p:\n    regions:\n      us-east-1: ['127.0.0.1:9000']\n"
                 "routes:\n  - {name: r, pool: p}\nlimits:\n  max_headers: 50\n")
    assert load_config(f).limits.max_headers == 50
    f.write_text("limits: [unclosed\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert e.value.problems[0].startswith("(yaml): line")


@pytest.mark.parametrize("value,want", [("127.0.0.1:80", ("127.0.0.1", 80)), ("[::1]:8080", ("::1", 8080)),
                                        ("name:0", ("name", 0))])
def test_parse_hostport(value: str, want: tuple[str, int]) -> None:
    assert parse_hostport(value) == want


@pytest.mark.parametrize("value", ["::1:80", "127.0.0.1", "a:70000", ":80", "[::1"])
def test_parse_hostport_errors(value: str) -> None:
    with pytest.raises(ValueError):
        parse_hostport(value)
