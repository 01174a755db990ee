"""Gossip configuration: one frozen, validated model (the `gossip:` block of a config)."""

from __future__ import annotations

import socket
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from .keyring import KeyRing, KeyRingError, check_key_id, parse_secret
from .membership import SwimConfig
from .messages import split_addr


def _check_hostport(value: str) -> str:
    try:
        host, port = split_addr(value)
    except ValueError as exc:
        raise ValueError(str(exc)) from None
    if not host or not 0 < port < 65536:
        raise ValueError(f"address {value!r} needs a host and a port in 1-65535")
    return value


class GossipConfig(BaseModel):
    """Defaults follow memberlist's LAN profile with WAN-sized probe timeouts.

    ``probe_timeout_ms`` must exceed the largest round trip between two regions
    (about 300 ms between the farthest of the 13); a probe that times out
    directly still succeeds if an ack arrives before 3 x the timeout.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = False
    node_name: str = Field(default_factory=socket.gethostname, min_length=1, max_length=128)
    region: str = Field(default="", description="this node's region; the proxy may fill it from its own")
    app_version: str = ""
    bind: str = "0.0.0.0:7946"  # UDP; push-pull listens on TCP at the same host
    advertise: str | None = None  # the address others send to (default: bind)
    pushpull_port: int | None = Field(default=None, ge=1, le=65535)  # TCP; default: the bind port
    seeds: tuple[str, ...] = ()  # push-pull (TCP) addresses of nodes to join through
    regions: tuple[str, ...] = ()  # regions to list in region_health() even with no live node

    probe_interval_ms: int = Field(default=200, ge=10)
    probe_timeout_ms: int = Field(default=500, ge=5)
    gossip_interval_ms: int = Field(default=200, ge=10)
    gossip_nodes: int = Field(default=3, ge=1)
    indirect_checks: int = Field(default=3, ge=0)
    suspicion_mult: int = Field(default=4, ge=1)
    suspicion_max_timeout_mult: int = Field(default=6, ge=1)
    retransmit_mult: int = Field(default=4, ge=1)
    pushpull_interval_s: float = Field(default=10.0, gt=0)
    reconnect_interval_s: float = Field(default=10.0, gt=0)
    gossip_to_dead_s: float = Field(default=30.0, ge=0)
    dead_reclaim_s: float = Field(default=3600.0, gt=0)
    awareness_max_multiplier: int = Field(default=8, ge=1)
    max_packet_bytes: int = Field(default=1400, ge=512, le=65000)
    pushpull_timeout_s: float = Field(default=5.0, gt=0)
    state_publish_interval_s: float = Field(default=1.0, ge=0)
    rtt_ewma_alpha: float = Field(default=0.2, gt=0, le=1)

    keys: dict[str, SecretStr] = Field(default_factory=dict)  # id -> "hex:..." / "base64:..." secret
    primary_key: str | None = None  # default: the only key, if there is one
    max_clock_skew_s: float = Field(default=30.0, gt=0)
    replay_window: int = Field(default=1024, ge=64, le=65536)

    @field_validator("bind", "advertise")
    @classmethod
    def _addr(cls, v: str | None) -> str | None:
        return None if v is None else _check_hostport(v)

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_check_hostport(s) for s in v)

    @field_validator("keys")
    @classmethod
    def _keys(cls, v: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for key_id, secret in v.items():
            try:
                check_key_id(key_id)
                parse_secret(secret.get_secret_value())
            except KeyRingError as exc:
                raise ValueError(f"key {key_id!r}: {exc}") from None
        return v

    @model_validator(mode="after")
    def _consistent(self) -> GossipConfig:
        if self.primary_key is not None and self.primary_key not in self.keys:
            raise ValueError(f"primary_key {self.primary_key!r} is not one of keys")
        if self.primary_key is None and len(self.keys) > 1:
            raise ValueError("primary_key is required when there are several keys")
        if self.enabled:
            if not self.keys:
                raise ValueError("gossip needs at least one key when enabled")
            if not self.region:
                raise ValueError("gossip needs this node's region when enabled")
        if self.probe_timeout_ms * 3 > 20 * self.probe_interval_ms:
            # a probe lives 3 x timeout and one starts every interval: cap those in flight at 20
            raise ValueError("3 x probe_timeout_ms exceeds 20 x probe_interval_ms: too many probes in flight")
        if self.advertise is None and split_addr(self.bind)[0] in ("0.0.0.0", "::"):
            if self.enabled:
                raise ValueError("bind is a wildcard address: set advertise to an address peers can reach")
        return self

    # ---- derived values ----

    def keyring(self) -> KeyRing:
        secrets = {k: parse_secret(v.get_secret_value()) for k, v in self.keys.items()}
        primary = self.primary_key or next(iter(secrets), "")
        return KeyRing(secrets, primary)

    @property
    def advertise_addr(self) -> str:
        return self.advertise or self.bind

    @property
    def pushpull_port_effective(self) -> int:
        return self.pushpull_port or split_addr(self.bind)[1]

    def swim(self) -> SwimConfig:
        return SwimConfig(
            probe_interval_s=self.probe_interval_ms / 1000,
            probe_timeout_s=self.probe_timeout_ms / 1000,
            gossip_interval_s=self.gossip_interval_ms / 1000,
            gossip_nodes=self.gossip_nodes,
            indirect_checks=self.indirect_checks,
            suspicion_mult=self.suspicion_mult,
            suspicion_max_timeout_mult=self.suspicion_max_timeout_mult,
            retransmit_mult=self.retransmit_mult,
            pushpull_interval_s=self.pushpull_interval_s,
            reconnect_interval_s=self.reconnect_interval_s,
            gossip_to_dead_s=self.gossip_to_dead_s,
            dead_reclaim_s=self.dead_reclaim_s,
            awareness_max_multiplier=self.awareness_max_multiplier,
        )

    def redacted(self) -> dict[str, Any]:
        """For logs and the admin API: key ids, never secrets."""
        d = self.model_dump(exclude={"keys"})
        d["key_ids"] = sorted(self.keys)
        return d
