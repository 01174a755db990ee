from __future__ import annotations

import pytest
import yaml
from pydantic import ValidationError

from proxy.protect.config import AclConfig, ProtectionConfig, RateLimitRule, RouteAcl

EXAMPLE = """
acl:
  allow: []
  deny: [192.0.2.0/24, "2001:db8:bad::/48"]
listeners:
  "127.0.0.1:8443": {allow: [10.0.0.0/8]}
rate_limits:
  - {name: per-ip, key: ip, rate: 100, burst: 200}
  - {name: per-net, key: prefix, prefix_v4: 24, prefix_v6: 56, rate: 1000, burst: 2000, shadow: true}
  - {name: api-key, key: header, header: X-API-Key, rate: 50, burst: 100, routes: [api]}
detector:
  enabled: true
  keys: [ip, prefix, country, route]
  k: 3.0
  alpha: 0.1
  warmup_s: 10
  min_rate: 20
  mitigation: {action: limit, ttl_s: 60, escalate_after_s: 10}
  global: {k: 4, min_rate: 500, strict_per_ip_rate: 5, strict_per_ip_burst: 10}
  shadow: false
table_size: 1048576
"""


def test_example_yaml_parses_and_normalizes() -> None:
    cfg = ProtectionConfig.model_validate(yaml.safe_load(EXAMPLE))
    assert cfg.acl.deny == ("192.0.2.0/24", "2001:db8:bad::/48")
    assert cfg.rate_limits[2].header == "x-api-key"           # lower-cased
    assert cfg.detector.global_.strict_per_ip_rate == 5
    assert cfg.listeners["127.0.0.1:8443"].allow == ("10.0.0.0/8",)


def _errors(data: dict[str, object]) -> list[tuple[tuple[object, ...], str]]:
    with pytest.raises(ValidationError) as ei:
        ProtectionConfig.model_validate(data)
    return [(e["loc"], e["msg"]) for e in ei.value.errors()]


def test_cidr_errors_name_the_value_and_path() -> None:
    errs = _errors({"acl": {"deny": ["10.0.0.0/8", "10.0.0.1/8", "banana"]}})
    assert errs[0][0] == ("acl", "deny")
    assert "'10.0.0.1/8' has host bits set; did you mean '10.0.0.0/8'?" in errs[0][1]
    errs = _errors({"acl": {"deny": ["banana"]}})
    assert "'banana' is not an IPv4/IPv6 address or CIDR" in errs[0][1]
    errs = _errors({"acl": {"allow": "10.0.0.0/8"}})
    assert "single string" in errs[0][1]


def test_rule_validation() -> None:
    errs = _errors({"rate_limits": [{"name": "k", "key": "header", "rate": 1, "burst": 1}]})
    assert "needs 'header" in errs[0][1]
    errs = _errors({"rate_limits": [{"name": "k", "key": "ip", "rate": 0, "burst": 1}]})
    assert errs[0][0] == ("rate_limits", 0, "rate")
    errs = _errors({"rate_limits": [{"name": "a b", "key": "ip", "rate": 1, "burst": 1}]})
    assert "rule name" in errs[0][1]
    errs = _errors({"rate_limits": [{"name": "a", "key": "ip", "rate": 1, "burst": 1},
                                    {"name": "a", "key": "route", "rate": 1, "burst": 1}]})
    assert "duplicate rate limit name 'a'" in errs[0][1]


def test_frozen_and_extra_forbidden() -> None:
    errs = _errors({"detector": {"enabled": True, "sigma": 3}})
    assert errs[0][0] == ("detector", "sigma")
    rule = RateLimitRule(name="a", key="ip", rate=1, burst=1)
    with pytest.raises(ValidationError):
        rule.rate = 2  # type: ignore[misc]


def test_route_acl_is_the_acl_model() -> None:
    assert RouteAcl is AclConfig
    assert RouteAcl.model_validate({"allow": ["::1"]}).allow == ("::1/128",)
