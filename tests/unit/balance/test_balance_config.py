import pytest
import yaml
from pydantic import ValidationError

from proxy.balance import (BackendSpec, BalanceConfig, HealthCheckConfig, PoolConfig,
                           RegionPolicy)
from proxy.balance.config import split_address

EXAMPLE = """
pools:
  api:
    balance: {algorithm: p2c_ewma, ewma_decay_s: 10}
    health_check: {path: /healthz, interval_s: 1.0, timeout_s: 0.5,
                   expect_status: "200-299", rise: 2, fall: 2}
    outlier: {consecutive_5xx: 5, consecutive_connect_failures: 3,
              base_ejection_s: 5, max_ejection_s: 300, max_ejection_percent: 50}
    slow_start: {duration_s: 30, min_weight_percent: 10}
    panic: {healthy_percent: 50}
    regions:
      eu-west-1:
        - 10.0.1.10:8080
        - {address: 10.0.1.11:8080, weight: 2, zone: euw1-az1}
        - {address: "api.euw1.internal:8080"}
      us-east-1: ["[2001:db8::10]:8080"]
  sessions:
    balance: {algorithm: hash, hash_method: maglev, affinity: {cookie: sid}}
    regions:
      eu-west-1: [10.0.2.10:8080, 10.0.2.11:8080]
routes_region_policy_examples:
  - {policy: latency, local_bias_ms: 20, max_inflight_per_backend: 100}
  - {policy: geo, regions: [eu-west-1, us-east-1]}
  - {policy: weighted, weights: {eu-west-1: 3, eu-central-1: 1}}
  - {policy: failover, order: [eu-west-1, eu-central-1, us-east-1]}
"""


def test_example_yaml_validates() -> None:
    raw = yaml.safe_load(EXAMPLE)
    pools = {k: PoolConfig.model_validate(v) for k, v in raw["pools"].items()}
    api = pools["api"]
    specs = api.regions["eu-west-1"]
    assert [s.address for s in specs] == ["10.0.1.10:8080", "10.0.1.11:8080",
                                          "api.euw1.internal:8080"]
    assert specs[1].weight == 2 and specs[1].zone == "euw1-az1"
    assert specs[2].is_name and not specs[0].is_name
    assert api.regions["us-east-1"][0].host == "2001:db8::10"
    assert api.health_check is not None and api.health_check.expected() == frozenset(range(200, 300))
    assert pools["sessions"].balance.affinity is not None
    for p in raw["routes_region_policy_examples"]:
        RegionPolicy.model_validate(p)


def test_unknown_key_names_its_path() -> None:
    with pytest.raises(ValidationError) as e:
        PoolConfig.model_validate({"regions": {"eu-west-1": ["10.0.0.1:80"]},
                                   "outlier": {"consecutive_500": 3}})
    assert "outlier.consecutive_500" in str(e.value)


@pytest.mark.parametrize("bad", ["10.0.0.1", "10.0.0.1:0", "10.0.0.1:70000", "::1:80",
                                 "[::1]80", "bad host:80", ":80"])
def test_bad_addresses_rejected(bad: str) -> None:
    with pytest.raises(ValidationError):
        BackendSpec.model_validate(bad)


def test_split_address() -> None:
    assert split_address("[::1]:8080") == ("::1", 8080)
    assert split_address("a.example:443") == ("a.example", 443)


def test_models_are_frozen() -> None:
    s = BackendSpec.model_validate("10.0.0.1:80")
    with pytest.raises(ValidationError):
        s.weight = 3  # type: ignore[misc]


@pytest.mark.parametrize("status,expected", [(204, {204}), ([200, 204], {200, 204}),
                                             ("200-202", {200, 201, 202})])
def test_expect_status_forms(status: object, expected: set[int]) -> None:
    assert HealthCheckConfig.model_validate({"expect_status": status}).expected() == expected


@pytest.mark.parametrize("kw", [{"expect_status": "2xx"}, {"expect_status": 99},
                                {"timeout_s": 2.0, "interval_s": 1.0}, {"path": "healthz"},
                                {"rise": 0}])
def test_bad_health_check(kw: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        HealthCheckConfig.model_validate(kw)


def test_policy_requirements() -> None:
    with pytest.raises(ValidationError):
        RegionPolicy(policy="failover")
    with pytest.raises(ValidationError):
        RegionPolicy(policy="weighted", weights={"eu-west-1": 0})
    with pytest.raises(ValidationError):
        BalanceConfig(algorithm="hash")
    with pytest.raises(ValidationError):
        BalanceConfig.model_validate({"algorithm": "hash",
                                      "affinity": {"cookie": "a", "header": "x"}})
    with pytest.raises(ValidationError):
        PoolConfig.model_validate({"regions": {"eu-west-1": ["10.0.0.1:80", "10.0.0.1:80"]}})
    with pytest.raises(ValidationError):
        PoolConfig.model_validate({"regions": {"EU_WEST": ["10.0.0.1:80"]}})
