"""GeoDB hot reload under traffic, with real sockets on 127.0.0.0/8.

Two tiny line servers answer each connection with the country that
GeoDB.lookup gives for the peer address: one on 127.0.0.1 (peer "127.x.y.z"),
one dual-stack IPv6 socket bound to ::ffff:127.0.0.1 (peer
"::ffff:127.x.y.z", as a dual-stack proxy sees IPv4 clients). Each client
connection is bound to a source address in 127.2-5.0.0/16, which the test
database maps to countries; 600 such client addresses each connect about
five times, before and after the swap, so answers cached before it must not
be served after it. Mid-run the database file is replaced by rename
(as geoipupdate does) and the watch() task swaps it in; later a truncated and
a garbage replacement are refused. Takes about 3-6 s.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from geodb import GeoDB, build_city_db, watch

OLD = {2: "DE", 3: "US", 4: "JP", 5: "BR"}
NEW = {2: "FR", 3: "CA", 4: "AU", 5: "ZA"}
REQUESTS_BEFORE_SWAP = 1000
REQUESTS_TOTAL = 3000
REQUESTS_AFTER_REFUSAL = 400
CONCURRENCY = 16
CLIENT_ADDRESSES = 600


def entries(mapping: dict[int, str]) -> list[dict[str, object]]:
    return [{"network": f"127.{octet}.0.0/16", "country": country} for octet, country in mapping.items()]


def source_address(i: int) -> str:
    """The 127.x.y.z of request i: x cycles through the mapped /16s, and the
    address comes back every CLIENT_ADDRESSES requests."""
    i %= CLIENT_ADDRESSES
    k = i // len(OLD)
    return f"127.{2 + i % len(OLD)}.{k // 250}.{k % 250 + 1}"


@dataclass
class Answer:
    seq: int  # order in which the server looked addresses up
    peer: str
    country: str | None
    generation: int  # geo.reloads_ok when the server looked it up


@dataclass
class Reply:
    request: int
    source: str
    country: str
    started_after_new_seen: bool


class GeoLineServers:
    """Answers each connection with one line: the peer's country."""

    def __init__(self, geo: GeoDB) -> None:
        self.geo = geo
        self.answers: list[Answer] = []
        self.ports: list[int] = []
        self._servers: list[asyncio.Server] = []

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")[0]
        rec = self.geo.lookup(peer)  # the proxy does this once per connection
        self.answers.append(Answer(len(self.answers), peer, rec.country, self.geo.reloads_ok))
        writer.write(f"{rec.country}\n".encode())
        try:
            await writer.drain()
        finally:
            writer.close()

    async def start(self) -> None:
        v4 = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self._servers.append(v4)
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(("::ffff:127.0.0.1", 0))
        except OSError:
            sock.close()  # no IPv6 here: the IPv4 server alone
        else:
            self._servers.append(await asyncio.start_server(self._handle, sock=sock))
        self.ports = [srv.sockets[0].getsockname()[1] for srv in self._servers]

    async def stop(self) -> None:
        for srv in self._servers:
            srv.close()
            await srv.wait_closed()


async def ask(port: int, source: str) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    try:
        line = await reader.readline()
    finally:
        writer.close()
        await writer.wait_closed()
    return line.decode().strip()


async def run_requests(
    servers: GeoLineServers,
    first: int,
    count: int,
    on_reply: Callable[[int], Awaitable[None]] | None = None,
) -> tuple[list[Reply], list[BaseException]]:
    """``count`` connections, ``CONCURRENCY`` at a time, each from its own
    source address, spread over the servers."""
    replies: list[Reply] = []
    errors: list[BaseException] = []
    new_seen = False
    next_request = first

    async def worker() -> None:
        nonlocal next_request, new_seen
        while next_request < first + count:
            i = next_request
            next_request += 1
            source = source_address(i)
            started_after = new_seen
            try:
                country = await ask(servers.ports[i % len(servers.ports)], source)
            except Exception as exc:
                errors.append(exc)
                continue
            octet = int(source.split(".")[1])
            if country == NEW[octet]:
                new_seen = True
            replies.append(Reply(i, source, country, started_after))
            if on_reply is not None:
                await on_reply(len(replies))

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return replies, errors


async def wait_for(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    async with asyncio.timeout(seconds):
        while not condition():
            await asyncio.sleep(0.005)


@pytest.fixture
async def geo_and_path(tmp_path: Path) -> AsyncIterator[tuple[GeoDB, Path]]:
    path = build_city_db(entries(OLD), tmp_path / "GeoIP2-City.mmdb")
    geo = GeoDB.open(city=path)
    yield geo, path
    geo.close()


@pytest.mark.timeout(60)
async def test_reload_under_traffic_switches_at_the_swap_and_refuses_bad_files(
    geo_and_path: tuple[GeoDB, Path],
) -> None:
    geo, path = geo_and_path
    servers = GeoLineServers(geo)
    await servers.start()
    watcher = asyncio.create_task(watch(geo, interval=0.005))
    try:
        async with asyncio.timeout(20):
            # phase 1: traffic, and the database replaced by rename mid-run
            swapped = False

            async def swap_mid_run(done: int) -> None:
                nonlocal swapped
                if done >= REQUESTS_BEFORE_SWAP and not swapped:
                    swapped = True
                    build_city_db(entries(NEW), path)  # writes a temp file, renames it over

            replies, errors = await run_requests(servers, 0, REQUESTS_TOTAL, swap_mid_run)
            assert errors == []
            assert len(replies) == REQUESTS_TOTAL
            assert geo.reloads_ok == 1 and geo.reloads_failed == 0

            for reply in replies:
                octet = int(reply.source.split(".")[1])
                assert reply.country in (OLD[octet], NEW[octet]), reply
                # once a client has seen a new answer, every later request is new
                if reply.started_after_new_seen:
                    assert reply.country == NEW[octet], reply
            old_count = sum(r.country in OLD.values() for r in replies)
            assert REQUESTS_BEFORE_SWAP <= old_count < REQUESTS_TOTAL  # both sides were exercised

            # server side, in lookup order: old answers, then the swap, then only new ones
            kinds = ["old" if a.country in OLD.values() else "new" for a in servers.answers]
            switch = kinds.index("new")
            assert kinds == ["old"] * switch + ["new"] * (len(kinds) - switch)
            # ... and every answer comes from the database generation in force at that moment
            for a in servers.answers:
                assert (a.country in NEW.values()) == (a.generation == 1), a
            if len(servers.ports) == 2:
                assert any(a.peer.startswith("::ffff:127.") for a in servers.answers)

            # phase 2: a truncated, then a garbage replacement: refused, answers stay new
            good_new = path.read_bytes()
            for n, bad in enumerate((good_new[: len(good_new) // 3], os.urandom(len(good_new))), start=1):
                tmp = path.with_name(path.name + ".tmp")
                tmp.write_bytes(bad)
                os.replace(tmp, path)
                await wait_for(lambda n=n: geo.reloads_failed == n)  # type: ignore[misc]
                start = REQUESTS_TOTAL + (n - 1) * REQUESTS_AFTER_REFUSAL
                replies, errors = await run_requests(servers, start, REQUESTS_AFTER_REFUSAL)
                assert errors == []
                assert len(replies) == REQUESTS_AFTER_REFUSAL
                assert all(r.country == NEW[int(r.source.split(".")[1])] for r in replies)
            assert (geo.reloads_ok, geo.reloads_failed) == (1, 2)
    finally:
        watcher.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watcher
        await servers.stop()
