"""config/example.yaml stays in step with the schema: the only problems
`novaedge check` finds in it are the placeholders an operator must fill in."""
from __future__ import annotations

from pathlib import Path

import pytest

from proxy.config import ConfigError, load_config

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "example.yaml"


def test_example_config_has_only_its_placeholders_to_fill() -> None:
    with pytest.raises(ConfigError) as e:
        load_config(EXAMPLE)
    problems = e.value.problems
    assert sorted(p.split(":")[0] for p in problems) == ["geoip.asn", "geoip.city", "gossip.keys"]
    assert all("no such database file" in p or "secret" in p for p in problems)


def test_check_names_every_error_with_its_key_path(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("""
node: {region: mars-1}
limits: {max_headers: lots}
routes:
  - {name: a, pool: nope, match: {path_prefix: api}}
  - {name: a, pool: nope}
bogus: 1
""")
    with pytest.raises(ConfigError) as e:
        load_config(bad)
    text = str(e.value)
    for needle in ("node.region: unknown region 'mars-1'", "limits.max_headers:",
                   "routes[0].match.path_prefix: must start with '/'", "routes[0].pool: no pool named 'nope'",
                   "routes[1].name: duplicate route name 'a'", "bogus: Extra inputs are not permitted"):
        assert needle in text, text
