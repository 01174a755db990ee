"""Router.every: the route every request matches, when the routes make one.

Node.dispatch takes it instead of calling match(), so it must be exactly
the route match() would give for any request, and None whenever some
request could get another route (or none)."""
from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.config import parse_config
from proxy.snapshot import compile_snapshot

POOLS = {"p": {"regions": {"us-east-1": ["127.0.0.1:9000"]}}}


def router(*routes: dict[str, Any]) -> Any:
    cfg = parse_config({"pools": POOLS, "routes": [{"pool": "p", **r} for r in routes]})
    return compile_snapshot(cfg).router


def test_one_catch_all_route_is_every_request_s() -> None:
    r = router({"name": "all"})
    assert r.every is not None and r.every.name == "all"
    r = router({"name": "api", "match": {"path_prefix": "/api"}}, {"name": "all"})
    assert r.every is None   # /api/x gets "api"


@pytest.mark.parametrize("routes", [
    [{"name": "h", "match": {"hosts": ["a.test"]}}, {"name": "all"}],         # a host of its own
    [{"name": "w", "match": {"hosts": ["*.a.test"]}}, {"name": "all"}],       # a wildcard host
    [{"name": "get", "match": {"methods": ["GET"]}}],                           # a method condition
    [{"name": "eu", "match": {"continents": ["EU"]}}, {"name": "all"}],       # a geo condition
    [{"name": "api", "match": {"path_prefix": "/api"}}],                        # a prefix: / has no route
])
def test_no_every_when_some_request_could_route_otherwise(routes: list[dict[str, Any]]) -> None:
    assert router(*routes).every is None


CONFIGS = [
    [{"name": "all"}],
    [{"name": "all"}, {"name": "api", "match": {"path_prefix": "/api"}}],
    [{"name": "h", "match": {"hosts": ["a.test"]}}, {"name": "all"}],
    [{"name": "get", "match": {"methods": ["GET"]}}, {"name": "all"}],
]


@settings(max_examples=300, deadline=None)
@given(routes=st.sampled_from(CONFIGS), host=st.sampled_from(["a.test", "b.test", "x.a.test", ""]),
       path=st.sampled_from(["/", "/api", "/api/x", "/apix", "/z"]),
       method=st.sampled_from(["GET", "POST"]), country=st.sampled_from([None, "DE", "US"]),
       continent=st.sampled_from([None, "EU", "NA"]))
def test_every_is_what_match_gives(routes: list[dict[str, Any]], host: str, path: str, method: str,
                                   country: str | None, continent: str | None) -> None:
    r = router(*routes)
    if r.every is not None:
        assert r.match(host, path, method, country, continent) is r.every


def test_the_snapshot_carries_the_response_timeout_it_was_compiled_with() -> None:
    # Exchange._arm_response_timer reads it here, once per request; a reload
    # compiles a new snapshot, so a changed timeout takes effect with it.
    for timeout in (0.5, 30.0):
        cfg = parse_config({"pools": POOLS, "routes": [{"name": "r", "pool": "p"}],
                            "upstream": {"response_timeout_s": timeout}})
        assert compile_snapshot(cfg).response_timeout_s == timeout
