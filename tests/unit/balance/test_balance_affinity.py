from proxy.balance import AffinityConfig, affinity_key
from proxy.balance.affinity import cookie_value
from proxy.context import RequestContext


def ctx(headers: list[tuple[bytes, bytes]]) -> RequestContext:
    return RequestContext("r1", 0.0, "GET", "example.com", "/", "", "1.1",
                          "203.0.113.9", 5555, None, headers, "l")


def test_cookie_header_and_ip_keys() -> None:
    c = ctx([(b"cookie", b"theme=dark; sid=abc123 ; x=1"), (b"x-user", b"u-7")])
    assert affinity_key(AffinityConfig(cookie="sid"), c) == b"abc123"
    assert affinity_key(AffinityConfig(header="X-User"), c) == b"u-7"
    assert affinity_key(AffinityConfig(client_ip=True), c) == b"203.0.113.9"
    assert affinity_key(None, c) is None
    assert affinity_key(AffinityConfig(cookie="missing"), c) is None


def test_cookie_parsing_edges() -> None:
    h = [(b"cookie", b"a=1"), (b"cookie", b'sid="q"; sidx=2')]
    assert cookie_value(h, b"sid") == b"q"            # second Cookie header, quotes off
    assert cookie_value(h, b"si") is None             # no prefix match
    assert cookie_value([(b"cookie", b"sid=")], b"sid") is None
