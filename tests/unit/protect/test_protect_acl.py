from __future__ import annotations

import ipaddress
import random
from bisect import bisect_right

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.protect.acl import Acl, CidrSet, compile_acl, parse_ip
from proxy.protect.config import AclConfig


def test_parse_ip_normalizes_mapped_and_zoned() -> None:
    assert parse_ip("10.1.2.3") == (0x0A010203, False)
    assert parse_ip("::ffff:10.1.2.3") == (0x0A010203, False)
    assert parse_ip("fe80::1%eth0") == (int(ipaddress.ip_address("fe80::1")), True)
    for bad in ("", "10.1.2", "banana", "1.2.3.4.5", "::g"):
        with pytest.raises(ValueError):
            parse_ip(bad)


def test_membership_v4_v6_and_merging() -> None:
    s = CidrSet(["10.0.0.0/8", "10.1.0.0/16", "192.0.2.7", "192.0.2.8/31", "2001:db8::/32"])
    assert len(s) == 3          # 10/8 swallows 10.1/16; .7 and .8/31 are adjacent
    for ip in ("10.0.0.0", "10.255.255.255", "192.0.2.7", "192.0.2.9", "2001:db8:1::5",
               "::ffff:10.9.9.9"):
        assert ip in s, ip
    for ip in ("11.0.0.0", "9.255.255.255", "192.0.2.6", "192.0.2.10", "2001:db9::",
               "::", "garbage", 42):
        assert ip not in s, ip


def test_v4_and_v6_do_not_alias() -> None:
    # ::a00:1 is 10.0.0.1 as an integer, but an IPv6 address.
    s = CidrSet(["10.0.0.0/8"])
    assert "::a00:1" not in s
    assert "10.0.0.1" in s


def test_acl_deny_wins_and_allow_list_restricts() -> None:
    acl = compile_acl(AclConfig(allow=["10.0.0.0/8"], deny=["10.6.6.0/24"]))
    assert acl is not None
    assert acl.permits("10.1.1.1")
    assert not acl.permits("10.6.6.6")          # deny wins over the broader allow
    assert not acl.permits("11.1.1.1")          # not in the allow list
    assert not acl.permits("not-an-ip")         # fail closed
    deny_only = Acl(None, CidrSet(["0.0.0.0/0"]))
    assert not deny_only.permits("1.2.3.4") and deny_only.permits("::1")
    assert compile_acl(AclConfig()) is None     # nothing to check


def test_empty_set() -> None:
    s = CidrSet()
    assert "1.2.3.4" not in s and "::1" not in s


@settings(max_examples=200, deadline=None)
@given(nets=st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32)), max_size=30),
       probes=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=30))
def test_matches_ipaddress_reference_v4(nets: list[tuple[int, int]], probes: list[int]) -> None:
    cidrs = [str(ipaddress.ip_network((a, p), strict=False)) for a, p in nets]
    s = CidrSet(cidrs)
    ref = [ipaddress.ip_network(c) for c in cidrs]
    for n in probes:
        addr = ipaddress.ip_address(n)
        assert (str(addr) in s) == any(addr in r for r in ref)


@settings(max_examples=100, deadline=None)
@given(nets=st.lists(st.tuples(st.integers(0, 2**128 - 1), st.integers(0, 128)), max_size=20),
       probes=st.lists(st.integers(0, 2**128 - 1), min_size=1, max_size=20))
def test_matches_ipaddress_reference_v6(nets: list[tuple[int, int]], probes: list[int]) -> None:
    cidrs = [str(ipaddress.ip_network((a, p), strict=False)) for a, p in nets]
    s = CidrSet(cidrs)
    ref = [ipaddress.ip_network(c) for c in cidrs]
    for n in probes:
        addr = ipaddress.IPv6Address(n)
        if addr.ipv4_mapped is not None:       # normalized to IPv4 by design
            continue
        assert s.contains_int(n, True) == any(addr in r for r in ref)


@pytest.mark.parametrize("size", [300, 20_000])
def test_large_sets_match_the_reference(size: int) -> None:
    """Above 256 ranges IPv4 uses the /16-bucketed arrays: check them
    against ipaddress on random CIDRs (incl. ones wider than a /16) and on
    the edges of every range."""
    rng = random.Random(size)
    nets = []
    for _ in range(size):
        plen = rng.choice((8, 12, 15, 16, 17, 20, 24, 28, 31, 32))
        nets.append(ipaddress.ip_network((rng.getrandbits(32), plen), strict=False))
    s = CidrSet([str(n) for n in nets])
    collapsed = list(ipaddress.collapse_addresses(nets))
    end_of = {int(n.network_address): int(n.broadcast_address) for n in collapsed}
    starts = sorted(end_of)

    def ref(x: int) -> bool:
        i = bisect_right(starts, x) - 1
        return i >= 0 and x <= end_of[starts[i]]
    probes = [rng.getrandbits(32) for _ in range(2000)]
    for n in collapsed[:300]:
        lo, hi = int(n.network_address), int(n.broadcast_address)
        probes += [lo, hi, max(lo - 1, 0), min(hi + 1, 2**32 - 1)]
    for x in probes:
        assert s.contains_int(x, False) == ref(x), ipaddress.ip_address(x)
