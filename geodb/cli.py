"""``python -m geodb``: build a test database, look addresses up, show metadata.

    python -m geodb build ranges.yaml out.mmdb [--database-type GeoIP2-City]
    python -m geodb lookup DB IP... [--asn DB] [--anonymous DB]
    python -m geodb info DB...
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import maxminddb
import pydantic
import yaml

from .build import build_city_db, load_spec
from .database import GeoDB, GeoDBError


def _build(args: argparse.Namespace) -> int:
    try:
        spec = load_spec(args.spec, database_type=args.database_type)
    except (OSError, yaml.YAMLError) as exc:
        print(f"error: {args.spec}: {exc}", file=sys.stderr)
        return 2
    except pydantic.ValidationError as exc:
        for err in exc.errors():
            where = ".".join(str(part) for part in err["loc"])
            print(f"error: {args.spec}: {where}: {err['msg']}", file=sys.stderr)
        return 2
    out = build_city_db(spec, args.out, ipv4_mapped_alias=not args.no_mapped_alias)
    print(f"wrote {out}: {spec.database_type}, {len(spec.networks)} networks", file=sys.stderr)
    return 0


def _lookup(args: argparse.Namespace) -> int:
    try:
        geo = GeoDB.open(city=args.db, asn=args.asn, anonymous=args.anonymous, cache_size=0)
    except GeoDBError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with geo:
        for ip in args.ips:
            print(json.dumps({"ip": ip, **geo.lookup(ip)._asdict()}, ensure_ascii=False))
    return 0


def _info(args: argparse.Namespace) -> int:
    status = 0
    for path in args.dbs:
        try:
            with maxminddb.open_database(path) as reader:
                meta = reader.metadata()
                print(
                    json.dumps(
                        {
                            "path": path,
                            "database_type": meta.database_type,
                            "build_epoch": meta.build_epoch,
                            "ip_version": meta.ip_version,
                            "node_count": meta.node_count,
                            "record_size": meta.record_size,
                            "languages": meta.languages,
                        }
                    )
                )
        except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
            print(f"error: {path}: {exc}", file=sys.stderr)
            status = 2
    return status


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m geodb", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("build", help="write a City-style .mmdb from a YAML or CSV list of networks")
    p.add_argument("spec", help="ranges.yaml (database_type, networks) or ranges.csv")
    p.add_argument("out", help="output .mmdb (written to a temp file, then renamed)")
    p.add_argument("--database-type", help="metadata database_type (default: the spec's, else GeoIP2-City)")
    p.add_argument("--no-mapped-alias", action="store_true", help="do not repeat IPv4 networks under ::ffff:0:0/96")
    p.set_defaults(func=_build)

    p = sub.add_parser("lookup", help="print one JSON record per address")
    p.add_argument("db", help="City or Country database")
    p.add_argument("ips", nargs="+", metavar="IP")
    p.add_argument("--asn", help="ASN database to merge")
    p.add_argument("--anonymous", help="Anonymous-IP database to merge")
    p.set_defaults(func=_lookup)

    p = sub.add_parser("info", help="print each database's metadata as JSON")
    p.add_argument("dbs", nargs="+", metavar="DB")
    p.set_defaults(func=_info)

    args = parser.parse_args(argv)
    status: int = args.func(args)
    return status
