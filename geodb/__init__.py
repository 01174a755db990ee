"""GeoIP for NovaEdge: open MaxMind databases, cached lookups into a compact
record, hot reload on file replacement, and a builder for test databases.

    geo = GeoDB.open(city="GeoLite2-City.mmdb", asn="GeoLite2-ASN.mmdb")
    rec = geo.lookup(peer_ip)          # GeoRecord; UNKNOWN when nothing known
    task = asyncio.create_task(watch(geo, interval=1.0))
"""

from .build import DatabaseSpec, NetworkEntry, build_city_db, load_spec
from .continents import continent_of
from .database import KINDS, GeoDB, GeoDBError
from .record import UNKNOWN, GeoRecord
from .watch import watch

__all__ = [
    "KINDS",
    "UNKNOWN",
    "DatabaseSpec",
    "GeoDB",
    "GeoDBError",
    "GeoRecord",
    "NetworkEntry",
    "build_city_db",
    "continent_of",
    "load_spec",
    "watch",
]
