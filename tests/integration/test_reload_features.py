"""A reload turns each per-request phase on and off.

With nothing configured the node skips the protect, route-check and
residency hooks altogether (NodeHooks.protect_active / residency_active);
these flags are recomputed on every reload, so a config that adds a rate
limit, a country deny or a jurisdiction must take effect on the next request, and
one that removes it must stop it.
"""
from __future__ import annotations

from typing import Any

from tests.support.backend import TestBackend
from tests.support.node import node_config, port_of, raw_exchange, run_node, statuses

GET = b"GET / HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n"


async def test_a_reload_turns_protection_geo_deny_and_residency_on_and_off() -> None:
    backend = await TestBackend.start("b1")
    try:
        def cfg(**over: Any) -> Any:
            return node_config([backend.address], **over)

        plain = cfg()
        async with run_node(plain) as node:
            port = port_of(node)

            async def status() -> int:
                return statuses(await raw_exchange(port, GET))[0]   # a new connection each time

            assert await status() == 200
            # One request per ~17 minutes per client, a burst of one.
            node.apply_config(cfg(protection={"rate_limits": [
                {"name": "per-ip", "key": "ip", "rate": 0.001, "burst": 1}]}))
            assert [await status() for _ in range(3)] == [200, 429, 429]
            node.apply_config(cfg(geoip={"unknown_country": "DE", "deny_countries": ["DE"]}))
            assert await status() == 451
            # DE may only be served from eu-west-1, and this pool has no backend there.
            node.apply_config(cfg(geoip={"unknown_country": "DE"},
                                  jurisdictions={"eu": {"countries": ["DE"], "regions": ["eu-west-1"]}}))
            assert await status() == 503
            node.apply_config(plain)
            assert await status() == 200
            assert backend.stats.requests == 3
    finally:
        await backend.stop()
