from __future__ import annotations

import pydantic
import pytest

from proxy.gossip.config import GossipConfig

KEY = "hex:" + "ab" * 32


def test_defaults_are_valid_and_disabled() -> None:
    cfg = GossipConfig()
    assert not cfg.enabled and cfg.probe_interval_ms == 200 and cfg.pushpull_port_effective == 7946


def test_enabled_config_derives_keyring_and_swim_settings() -> None:
    cfg = GossipConfig(enabled=True, node_name="n1", region="eu-west-1", bind="10.0.0.1:7946",
                       keys={"k1": KEY, "k2": "hex:" + "cd" * 32}, primary_key="k2")
    assert cfg.keyring().primary_id == "k2" and cfg.keyring().key_ids() == ["k1", "k2"]
    assert cfg.swim().probe_interval_s == 0.2 and cfg.advertise_addr == "10.0.0.1:7946"
    assert KEY[4:] not in repr(cfg) and KEY[4:] not in str(cfg.redacted())


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"keys": {}}, "at least one key"),
        ({"region": ""}, "region"),
        ({"keys": {"k1": "hex:abcd"}}, "at least 16"),
        ({"keys": {"k1": KEY, "k2": KEY}}, "primary_key is required"),
        ({"primary_key": "nope"}, "not one of keys"),
        ({"bind": "0.0.0.0:7946"}, "advertise"),
        ({"bind": "10.0.0.1"}, "host:port"),
        ({"seeds": ("x:99999",)}, "1-65535"),
        ({"probe_timeout_ms": 5000}, "in flight"),
        ({"surprise": 1}, "Extra inputs"),
    ],
)
def test_invalid_configs_name_the_problem(kwargs: dict[str, object], fragment: str) -> None:
    base: dict[str, object] = {"enabled": True, "node_name": "n1", "region": "r1", "bind": "10.0.0.1:7946",
                               "keys": {"k1": KEY}}
    base.update(kwargs)
    with pytest.raises(pydantic.ValidationError) as exc:
        GossipConfig(**base)  # type: ignore[arg-type]
    assert fragment in str(exc.value)


def test_config_is_frozen() -> None:
    cfg = GossipConfig()
    with pytest.raises(pydantic.ValidationError):
        cfg.enabled = True  # type: ignore[misc]
