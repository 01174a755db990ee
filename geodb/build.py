"""Build small City-style MaxMind databases from a list of networks, for
tests, demos and private address plans.

Records use the GeoIP2-City schema, so any MaxMind reader (and GeoDB's City
slot) reads them: ``country.iso_code``, ``continent.code``,
``location.latitude/longitude``, ``city.names.en``,
``subdivisions[0].iso_code``; optionally the GeoLite2-ASN keys
``autonomous_system_number``/``autonomous_system_organization`` and the
GeoIP2-Anonymous-IP booleans at top level, so one file can play all parts.

Spec file (YAML, or CSV with these names as header columns)::

    database_type: GeoIP2-City   # optional
    networks:
      - {network: 127.2.0.0/16, country: DE, lat: 50.1, lon: 8.7, city: Frankfurt}
      - {network: 127.3.0.0/16, country: US, asn: 64500, as_org: Example}
"""

from __future__ import annotations

import csv
import ipaddress
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from mmdb_writer import MMDBWriter
from netaddr import IPSet  # type: ignore[import-untyped]
from pydantic import BaseModel, ConfigDict, Field, IPvAnyNetwork, field_validator, model_validator

from .continents import continent_of

__all__ = ["NetworkEntry", "DatabaseSpec", "build_city_db", "load_spec", "record_of"]

Continent = Literal["AF", "AN", "AS", "EU", "NA", "OC", "SA"]
ANONYMOUS_FLAGS = ("is_anonymous", "is_anonymous_vpn", "is_hosting_provider", "is_tor_exit_node", "is_public_proxy")


class NetworkEntry(BaseModel):
    """One network of the database. Host bits must be zero."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    network: IPvAnyNetwork
    country: str | None = Field(None, pattern=r"^[A-Z]{2}$")
    continent: Continent | None = None  # derived from country when absent
    lat: float | None = Field(None, ge=-90.0, le=90.0)
    lon: float | None = Field(None, ge=-180.0, le=180.0)
    city: str | None = None
    subdivision: str | None = None
    asn: int | None = Field(None, ge=0, le=2**32 - 1)
    as_org: str | None = None
    is_anonymous: bool = False
    is_anonymous_vpn: bool = False
    is_hosting_provider: bool = False
    is_tor_exit_node: bool = False
    is_public_proxy: bool = False

    @field_validator("country", "continent", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _lat_lon_together(self) -> NetworkEntry:
        if (self.lat is None) != (self.lon is None):
            raise ValueError("lat and lon go together")
        return self


class DatabaseSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    database_type: str = "GeoIP2-City"
    description: str = "NovaEdge test GeoIP database"
    networks: list[NetworkEntry] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_networks(self) -> DatabaseSpec:
        seen: set[Any] = set()
        for i, entry in enumerate(self.networks):
            if entry.network in seen:
                raise ValueError(f"networks.{i}: {entry.network} appears twice")
            seen.add(entry.network)
        return self


def record_of(entry: NetworkEntry) -> dict[str, Any]:
    """The MaxMind record written for one entry (GeoIP2-City schema)."""
    rec: dict[str, Any] = {}
    if entry.country is not None:
        rec["country"] = {"iso_code": entry.country}
    continent = entry.continent or (continent_of(entry.country) if entry.country else None)
    if continent is not None:
        rec["continent"] = {"code": continent}
    if entry.lat is not None and entry.lon is not None:
        rec["location"] = {"latitude": float(entry.lat), "longitude": float(entry.lon)}
    if entry.city is not None:
        rec["city"] = {"names": {"en": entry.city}}
    if entry.subdivision is not None:
        rec["subdivisions"] = [{"iso_code": entry.subdivision}]
    if entry.asn is not None:
        rec["autonomous_system_number"] = entry.asn
    if entry.as_org is not None:
        rec["autonomous_system_organization"] = entry.as_org
    flags = [flag for flag in ANONYMOUS_FLAGS if getattr(entry, flag)]
    if flags:
        # as MaxMind does: is_anonymous is set whenever any other flag is
        rec["is_anonymous"] = True
        for flag in flags:
            rec[flag] = True
    return rec


def _tree_networks(net: ipaddress.IPv4Network | ipaddress.IPv6Network, mapped_alias: bool) -> list[str]:
    """Where a network goes in the IPv6 tree: IPv4 under ::/96 (where every
    reader looks IPv4 up) and, as MaxMind's own databases do, again under
    ::ffff:0:0/96 so a raw ::ffff:a.b.c.d lookup finds it too."""
    if net.version == 6:
        return [str(net)]
    base = int(net.network_address)
    nets = [str(ipaddress.IPv6Network((base, 96 + net.prefixlen)))]
    if mapped_alias:
        nets.append(str(ipaddress.IPv6Network(((0xFFFF << 32) | base, 96 + net.prefixlen))))
    return nets


def build_city_db(
    entries: Iterable[Mapping[str, Any] | NetworkEntry] | DatabaseSpec,
    out_path: str | os.PathLike[str],
    *,
    database_type: str | None = None,
    ipv4_mapped_alias: bool = True,
) -> Path:
    """Write a MaxMind DB (IPv6 tree, IPv4 included) to ``out_path``.

    The file appears by rename, never half-written, so this can replace a
    database that a GeoDB watcher is polling. Overlapping networks are
    allowed: the most specific wins. Raises pydantic.ValidationError on a
    bad entry (the error names the entry index and field).
    """
    if isinstance(entries, DatabaseSpec):
        spec = entries
    else:
        spec = DatabaseSpec.model_validate({"networks": list(entries)})
    writer = MMDBWriter(
        ip_version=6,
        ipv4_compatible=True,
        database_type=database_type or spec.database_type,
        languages=["en"],
        description=spec.description,
    )
    placed: list[tuple[int, str, dict[str, Any]]] = []
    for entry in spec.networks:
        rec = record_of(entry)
        for tree_net in _tree_networks(entry.network, ipv4_mapped_alias):
            placed.append((ipaddress.ip_network(tree_net).prefixlen, tree_net, rec))
    # mmdb-writer replaces the subtree under a network inserted later, so a
    # broad network inserted after a narrow one would erase it: broad first.
    placed.sort(key=lambda item: item[0])
    for _prefixlen, tree_net, rec in placed:
        writer.insert_network(IPSet([tree_net]), rec)

    out = Path(out_path)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        writer.to_db_file(tmp)
        os.replace(tmp, out)
    except BaseException:
        os.unlink(tmp)
        raise
    return out


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        # an empty cell means "absent"
        return [{k: v for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


def load_spec(path: str | os.PathLike[str], database_type: str | None = None) -> DatabaseSpec:
    """Read a YAML (``database_type``, ``networks``) or CSV (one network a
    row) spec file."""
    p = Path(path)
    raw: Any
    if p.suffix.lower() == ".csv":
        raw = {"networks": _csv_rows(p)}
    else:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
        if isinstance(raw, list):
            raw = {"networks": raw}
    if database_type is not None and isinstance(raw, dict):
        raw = {**raw, "database_type": database_type}
    return DatabaseSpec.model_validate(raw)
