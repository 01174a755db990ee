"""Identify: the client's GeoIP record, the geo headers, country deny rules
and data residency (which regions may serve a client).

The record is looked up once per connection (Downstream caches it); the
GeoDB's own LRU serves repeat clients across connections.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

from geodb import UNKNOWN, GeoDB, GeoRecord, continent_of
from geodb import watch as geodb_watch

from .config import Config

log = logging.getLogger("novaedge.geo")


class GeoPhase:
    def __init__(self, config: Config) -> None:
        self.db: GeoDB | None = None
        self._watch: asyncio.Task[None] | None = None
        self.configure(config)

    def configure(self, config: Config) -> None:
        g = config.geoip
        paths = (g.city, g.asn, g.anonymous)
        if any(paths) and (self.db is None or self._paths != paths):
            new = GeoDB.open(city=g.city, asn=g.asn, anonymous=g.anonymous, cache_size=g.cache_size)
            old, self.db = self.db, new
            if self._watch is not None:
                self._watch.cancel()
                self._watch = None
            if old is not None:
                old.close()
        elif not any(paths) and self.db is not None:
            self.db.close()
            self.db = None
        self._paths = paths
        self._interval = g.reload_interval_s
        self.unknown: GeoRecord = UNKNOWN
        if g.unknown_country:
            cc = g.unknown_country.upper()
            self.unknown = UNKNOWN._replace(country=cc, continent=continent_of(cc))
        self.deny = frozenset(g.deny_countries)
        self.deny_status = g.deny_status
        h = g.headers
        names = [(k, getattr(h, k)) for k in ("country", "continent", "region", "asn")]
        self.headers = [(k, v.encode()) for k, v in names if v]
        self.strip = frozenset(v.lower() for _k, v in self.headers)
        self.edge_region = config.node.region.encode()
        self.static = [(name, self.edge_region) for k, name in self.headers if k == "region"]
        self._fwd_geo: GeoRecord | None = None   # forward_headers' last record and answer
        self._fwd: list[tuple[bytes, bytes]] = []
        # country -> (jurisdiction name, allowed regions)
        self.residency: dict[str, tuple[str, frozenset[str]]] = {}
        for name, j in config.jurisdictions.items():
            for cc in j.countries:
                self.residency[cc] = (name, frozenset(j.regions))

    def start_watching(self) -> None:
        if self.db is not None and self._watch is None:
            self._watch = asyncio.get_running_loop().create_task(
                geodb_watch(self.db, interval=self._interval))

    def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None

    def lookup(self, ip: str) -> GeoRecord:
        db = self.db
        rec = db.lookup(ip) if db is not None else UNKNOWN
        return self.unknown if rec is UNKNOWN else rec

    def forward_headers(self, node: object, ctx: Any) -> list[tuple[bytes, bytes]]:
        """NodeHooks.forward_headers for the request's GeoIP record (FeatureHooks
        binds it as its own: one call a request, not two)."""
        geo = ctx.geo
        if geo is None or geo is UNKNOWN:
            return self.static   # no GeoIP answer: only the edge's own region
        if geo is self._fwd_geo:
            return self._fwd      # a connection's requests share one record
        out: list[tuple[bytes, bytes]] = []
        for key, name in self.headers:
            if key == "region":
                out.append((name, self.edge_region))
            elif geo is not None:
                v = getattr(geo, key)
                if v is not None:
                    out.append((name, str(v).encode()))
        self._fwd_geo, self._fwd = geo, out
        return out

    def allowed_regions(self, geo: GeoRecord | None) -> tuple[str, frozenset[str]] | None:
        if geo is None or geo.country is None:
            return None
        return self.residency.get(geo.country)
