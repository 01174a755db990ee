"""The compact GeoIP answer the proxy keeps per connection, and how it is
cut out of the nested dicts that MaxMind DB records decode to.

Field names follow the GeoIP2 schemas:

- City / Country (GeoIP2-City, GeoLite2-City, GeoIP2-Country, ...):
  ``country.iso_code``, ``continent.code``, ``location.latitude/longitude``,
  ``subdivisions[0].iso_code``, ``city.names.en``
- ASN (GeoLite2-ASN, GeoIP2-ISP): top-level ``autonomous_system_number``,
  ``autonomous_system_organization``. The same keys are also read from a
  City record when present, so one test database built by ``geodb build``
  can answer for all three kinds.
- Anonymous-IP (GeoIP2-Anonymous-IP): top-level booleans ``is_anonymous``,
  ``is_anonymous_vpn``, ``is_hosting_provider``, ``is_tor_exit_node``,
  ``is_public_proxy``. Also read from a City record when no Anonymous-IP
  database is configured (the ASN database likewise wins over ASN keys in
  a City record).

``country`` is where MaxMind places the user (``country``), never the
ISP's ``registered_country``: routing with data-residency rules must not
guess.
"""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = ["GeoRecord", "UNKNOWN", "location_part", "asn_part", "anonymous_part"]


# A NamedTuple, not a frozen dataclass: building one costs ~0.30 us against
# ~1.4 us for @dataclass(frozen=True, slots=True) with these 13 fields
# (frozen dataclasses set every field through object.__setattr__), and a
# record is built on every cold lookup, whose whole budget is 10 us.
class GeoRecord(NamedTuple):
    """What GeoIP knows about one address. Immutable; compare with UNKNOWN."""

    country: str | None = None  # ISO 3166-1 alpha-2, e.g. "DE"
    continent: str | None = None  # two-letter code: AF AN AS EU NA OC SA
    lat: float | None = None
    lon: float | None = None
    subdivision: str | None = None  # ISO code of subdivisions[0], e.g. "ENG"
    city: str | None = None  # English name
    asn: int | None = None
    as_org: str | None = None
    is_anonymous: bool = False
    is_anonymous_vpn: bool = False
    is_hosting_provider: bool = False
    is_tor_exit_node: bool = False
    is_public_proxy: bool = False


# Returned for absent, invalid and unresolvable addresses. Note that a
# NamedTuple is always truthy: test ``rec is UNKNOWN`` (lookup returns this
# very object whenever nothing is known), not ``if rec``.
UNKNOWN = GeoRecord()

# (country, continent, lat, lon, subdivision, city, asn, as_org)
LocationPart = tuple[
    str | None, str | None, float | None, float | None, str | None, str | None, int | None, str | None
]
NO_LOCATION: LocationPart = (None, None, None, None, None, None, None, None)
AsnPart = tuple[int | None, str | None]
NO_ASN: AsnPart = (None, None)
AnonymousPart = tuple[bool, bool, bool, bool, bool]
NO_ANONYMOUS: AnonymousPart = (False, False, False, False, False)


def location_part(rec: Any) -> LocationPart:
    """Cut a City/Country record down to the fields GeoRecord keeps.

    Written as flat ``dict.get`` chains: this runs on every cold lookup.
    """
    if type(rec) is not dict:
        return NO_LOCATION
    get = rec.get
    sub = get("country")
    country = sub.get("iso_code") if type(sub) is dict else None
    sub = get("continent")
    continent = sub.get("code") if type(sub) is dict else None
    sub = get("location")
    if type(sub) is dict:
        lat = sub.get("latitude")
        lon = sub.get("longitude")
    else:
        lat = lon = None
    sub = get("subdivisions")
    subdivision = sub[0].get("iso_code") if type(sub) is list and sub and type(sub[0]) is dict else None
    sub = get("city")
    city = None
    if type(sub) is dict:
        names = sub.get("names")
        if type(names) is dict:
            city = names.get("en")
    return (
        country,
        continent,
        lat,
        lon,
        subdivision,
        city,
        get("autonomous_system_number"),
        get("autonomous_system_organization"),
    )


def asn_part(rec: Any) -> AsnPart:
    if type(rec) is not dict:
        return NO_ASN
    return rec.get("autonomous_system_number"), rec.get("autonomous_system_organization")


def anonymous_part(rec: Any) -> AnonymousPart:
    if type(rec) is not dict:
        return NO_ANONYMOUS
    get = rec.get
    return (
        get("is_anonymous") is True,
        get("is_anonymous_vpn") is True,
        get("is_hosting_provider") is True,
        get("is_tor_exit_node") is True,
        get("is_public_proxy") is True,
    )


def merge(loc: LocationPart, asn: AsnPart | None, anon: AnonymousPart) -> GeoRecord:
    """One record from the parts; the ASN database wins over ASN fields found
    in a City record. Returns the UNKNOWN object itself when nothing is known."""
    if asn is not None and asn[0] is not None:
        loc = loc[:6] + asn
    if loc == NO_LOCATION and anon == NO_ANONYMOUS:
        return UNKNOWN
    return GeoRecord(*loc, *anon)
