"""Exchange._done_plain: the common end of a response in one call.

It does what _flush, _response_done, pool.release, _finish_attempt,
down.response_finished and node.finish do when each takes its plainest
branch, or nothing (False) when one would not. proxy/_response.c does the
same, and upstream_data's steps before it, as UpstreamConnection.data_received.
Here a real Node, with stand-in transports, carries the same requests three
times: through the C, through the Python _done_plain, and through the
general path, with the odd cases drawn around the plain one: each world
must end the same, with the same bytes written, the same pool, balancer,
counters and connection state, and the same state seen by the node's
finish hook when it runs.
"""
from __future__ import annotations

import asyncio
import os
import contextlib
import itertools
from typing import Any, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.config import parse_config
from proxy.downstream import Downstream
from proxy.exchange import Exchange
from proxy.features import build_hooks
from proxy.node import Listener, Node
from proxy.upstream import UpstreamConnection

PLAIN = (b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n"
         b"Connection: keep-alive\r\n\r\nok\n")
RESPONSES = {
    "plain": PLAIN,
    "5xx": PLAIN.replace(b"200 OK", b"503 Service Unavailable"),
    "close": PLAIN.replace(b"keep-alive", b"close"),                     # llhttp's, not kept
    "chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nok\n\r\n0\r\n\r\n",
    "http10": b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n",
    "split": PLAIN[:-2] + b"|" + PLAIN[-2:],   # two reads: llhttp's, the timer re-armed between them
    "partial": PLAIN[:-2],                       # the body's end has not come yet
}
REQUESTS = {
    "plain": b"GET /a HTTP/1.1\r\nHost: h.test\r\n\r\n",
    "close": b"GET /a HTTP/1.1\r\nHost: h.test\r\nConnection: close\r\n\r\n",
    "http10": b"GET /a HTTP/1.0\r\nHost: h.test\r\n\r\n",
    "pipelined": b"GET /a HTTP/1.1\r\nHost: h.test\r\n\r\nGET /b HTTP/1.1\r\nHost: h.test\r\n\r\n",
    "head": b"HEAD /a HTTP/1.1\r\nHost: h.test\r\n\r\n",
    "get-body": b"GET /a HTTP/1.1\r\nHost: h.test\r\nContent-Length: 4\r\n\r\nab",   # its body unfinished
}


class Transport:
    def __init__(self, peer: tuple[str, int]) -> None:
        self.peer = peer
        self.out: list[bytes] = []
        self.closing = False
        self.paused = False

    def get_extra_info(self, key: str, default: Any = None) -> Any:
        return self.peer if key == "peername" else default

    def write(self, data: bytes) -> None:
        self.out.append(bytes(data))

    def writelines(self, data: list[bytes]) -> None:
        self.out.extend(bytes(d) for d in data)

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def close(self) -> None:
        self.closing = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.out.append(b"<eof>")

    def abort(self) -> None:
        self.closing = True

    def set_write_buffer_limits(self, *a: Any, **k: Any) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


@contextlib.contextmanager
def event_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """A loop for the Node to find (one per example: hypothesis wants no
    function-scoped fixture); the connects begun when no pooled connection
    was usable are cancelled unrun."""
    lp = asyncio.new_event_loop()
    asyncio.set_event_loop(lp)
    try:
        yield lp
    finally:
        tasks = asyncio.all_tasks(lp)
        for t in tasks:
            t.cancel()
        lp.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        lp.close()
        asyncio.set_event_loop(None)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    with event_loop() as lp:
        yield lp


class World:
    """A node, one client connection and `idle` pooled backend connections."""

    def __init__(self, mode: str, max_idle: int, idle: int, hook: str) -> None:
        cfg = parse_config({
            "node": {"name": "t", "region": "us-east-1"}, "listeners": [{"bind": "127.0.0.1:0"}],
            "pools": {"p": {"regions": {"us-east-1": ["127.0.0.1:9"]}}},
            "routes": [{"name": "r", "pool": "p"}], "upstream": {"max_idle_per_backend": max_idle},
            "access_log": {"enabled": False}, "metrics": {"enabled": False}})
        self.node = node = Node(cfg, hooks=build_hooks(cfg, 0))
        clock = itertools.count(1000)
        node.now = lambda: float(next(clock))   # the same readings in both worlds
        self.seen: list[tuple[Any, ...]] = []
        self.hook = hook
        node._finished = self.finished
        self.down = Downstream(node, Listener(cfg.listeners[0]))
        self.dt = Transport(("127.0.0.1", 40000))
        self.down.connection_made(self.dt)
        backend = next(iter(node.selector.cluster.backends()))
        self.pool = node.pool_for(backend)
        self.ups: list[tuple[UpstreamConnection, Transport]] = []
        for i in range(idle):
            up, ut = UpstreamConnection(self.pool), Transport(("127.0.0.1", 9))
            up.connection_made(ut)
            self.pool.idle.append(up)
            self.pool.created += 1
            self.ups.append((up, ut))
        self.backend = backend
        self.mode = mode   # "c", "python" (_done_plain) or "general"
        self.exchanges: list[Exchange] = []

    def finished(self, ctx: Any) -> None:
        d = self.down
        self.seen.append((ctx.request_id, ctx.status, ctx.end, ctx.backend, d.current is not None,
                          d.last_active, len(self.pool.idle), len(self.pool.busy), self.node.stats["requests"]))
        if self.hook == "close-client":
            self.dt.closing = True
            d.closing = True
        elif self.hook == "drain":
            self.node.draining = True
        elif self.hook == "pause":
            d.pause_reading("upstream-full")

    def run(self, request: bytes, response: bytes, up_closing: bool, odd: str) -> None:
        """odd: "paused" (client reads paused), "slow-client" (its writes
        paused: the backend's reads are paused too), "up-eof" (the backend's
        FIN already read), "up-closed" (it was closed, the exchange still on
        it), or ""."""
        saved, saved_read = Exchange._done_plain, UpstreamConnection.data_received
        if self.mode == "general":
            Exchange._done_plain = lambda self, now: False  # type: ignore[method-assign]
        elif self.mode == "python":
            UpstreamConnection.data_received = UpstreamConnection._data_received_py  # type: ignore
        try:
            if odd == "paused":
                self.down.pause_reading("connecting")
            elif odd == "slow-client":
                self.down.pause_writing()
            self.down.data_received(request)
            for up, ut in self.ups:
                ut.closing = up_closing
                ex = up.exchange
                if ex is not None:
                    up.eof = up.eof or odd == "up-eof"
                    up.closed = up.closed or odd == "up-closed"
                    for piece in response.split(b"|"):
                        up.data_received(piece)
                    self.exchanges.append(ex)
            if odd == "slow-client":
                self.down.resume_writing()
        finally:
            Exchange._done_plain = saved  # type: ignore[method-assign]
            UpstreamConnection.data_received = saved_read  # type: ignore[method-assign]

    def state(self) -> dict[str, Any]:
        d, b, node = self.down, self.backend, self.node
        ups = {id(u): i for i, (u, _) in enumerate(self.ups)}
        return {
            "client out": b"".join(self.dt.out), "client closing": self.dt.closing, "client paused": self.dt.paused,
            "backend out": [b"".join(ut.out) for _, ut in self.ups],
            "backend closing": [ut.closing for _, ut in self.ups],
            "idle": [ups[id(u)] for u in self.pool.idle], "busy": sorted(ups[id(u)] for u in self.pool.busy),
            "ups": [(u.exchange is None, u.closed, u.idle_since) for u, _ in self.ups],
            "balancer": (b.in_flight, b.ewma_ms, b.samples, b.stamp, b.consecutive_5xx),
            "stats": dict(node.stats), "started": node.started, "deadlines": len(node.deadlines),
            "down": (d.current is None, d.requests, d.parsed, d.last_active, d.closing, d.closed, sorted(d.paused),
                     len(d.queue), d.dead),
            "seen": self.seen,
            "exchanges": [(e.state, e.resp_parser is None, e.up is None, e.timer, e.accounted, e.out,
                           e.head_unflushed, e.resp_complete) for e in self.exchanges],
            "up paused": [u.paused_by_client for u, _ in self.ups],
        }


def compare(steps: list[tuple[str, str, bool, bool]], max_idle: int, idle: int, hook: str) -> None:
    worlds = [World(mode, max_idle, idle, hook) for mode in ("c", "python", "general")]
    for request, response, up_closing, odd in steps:
        for w in worlds:
            w.run(REQUESTS[request], RESPONSES[response], up_closing, odd)
        c, python, general = (w.state() for w in worlds)
        assert c == general, (request, response, up_closing, odd)
        assert python == general, (request, response, up_closing, odd)


@pytest.mark.parametrize("hook", ["none", "pause", "drain", "close-client"])
@pytest.mark.parametrize("odd", ["", "paused", "slow-client", "up-eof", "up-closed"])
@pytest.mark.parametrize("max_idle", [8, 1, 0])
def test_plain_exchanges_with_each_odd_case(loop: asyncio.AbstractEventLoop, hook: str, odd: str,
                                            max_idle: int) -> None:
    plain = ("plain", "plain", False, odd)
    compare([plain, plain, ("pipelined", "plain", False, ""), plain, ("plain", "5xx", False, ""),
             ("plain", "split", False, odd), plain], max_idle, 1, hook)


# plain first: hypothesis draws (and shrinks towards) the first elements most
REQUEST_NAMES = ["plain", "plain", "close", "http10", "pipelined", "head", "get-body"]
RESPONSE_NAMES = ["plain", "plain", "5xx", "split", "close", "chunked", "http10", "partial"]


@settings(max_examples=400, deadline=None)
@given(steps=st.lists(st.tuples(st.sampled_from(REQUEST_NAMES), st.sampled_from(RESPONSE_NAMES),
                                st.sampled_from([False, False, False, True]),
                                st.sampled_from(["", "", "", "paused", "slow-client", "up-eof", "up-closed"])),
                        min_size=1, max_size=4),
       max_idle=st.sampled_from([8, 8, 1, 0]), idle=st.sampled_from([1, 1, 2]),
       hook=st.sampled_from(["none", "none", "pause", "drain", "close-client"]))
def test_the_plain_end_leaves_what_the_general_path_leaves(steps: list[Any], max_idle: int, idle: int,
                                                           hook: str) -> None:
    with event_loop():
        compare(steps, max_idle, idle, hook)


def test_a_plain_response_takes_it(loop: asyncio.AbstractEventLoop) -> None:
    calls = []
    real = Exchange._done_plain

    def spy(self: Exchange, now: float) -> bool:
        calls.append(r := real(self, now))
        return r

    w = World("python", 8, 1, "none")
    Exchange._done_plain = spy  # type: ignore[method-assign]
    try:
        for _ in range(3):
            w.run(REQUESTS["plain"], PLAIN, False, "")
        w.run(REQUESTS["close"], PLAIN, False, "")   # the client asked to close: the general path
    finally:
        Exchange._done_plain = real  # type: ignore[method-assign]
    assert calls == [True, True, True, False]
    assert w.node.stats["requests"] == 4 and w.down.closing and w.dt.out[-1] == b"<eof>"
    assert w.dt.out[0].startswith(b"HTTP/1.1 200 OK\r\n") and w.dt.out[0].endswith(b"\r\n\r\nok\n")


@pytest.mark.skipif(os.environ.get("NOVAEDGE_PURE_PYTHON") == "1", reason="NOVAEDGE_PURE_PYTHON=1")
def test_the_c_read_ends_plain_responses_itself(loop: asyncio.AbstractEventLoop) -> None:
    from proxy import _response  # type: ignore[attr-defined]
    assert UpstreamConnection.data_received is not UpstreamConnection._data_received_py, \
        "proxy/_response.c's data_received was not set up"
    calls = []
    real = Exchange._read_over

    def spy(self: Exchange, data: bytes, now: float) -> None:
        calls.append(data)
        real(self, data, now)

    w = World("c", 8, 1, "none")
    before = _response.ended_count()
    for _ in range(3):
        w.run(REQUESTS["plain"], PLAIN, False, "")
    assert _response.ended_count() == before + 3
    assert w.node.stats["requests"] == 3 and w.pool.idle and not w.pool.busy
    w.run(REQUESTS["plain"], RESPONSES["chunked"], False, "")   # not plain: Python's seams
    assert _response.ended_count() == before + 3 and w.node.stats["requests"] == 4
    Exchange._read_over = spy  # type: ignore[method-assign]
    try:   # a patched method is called, not stood for
        w.run(REQUESTS["plain"], PLAIN, False, "")
    finally:
        Exchange._read_over = real  # type: ignore[method-assign]
    assert calls == [PLAIN] and _response.ended_count() == before + 3 and w.node.stats["requests"] == 5


# -- what a review of the C read found: each the C against Python's, same steps ----------

def _both(setup: Any) -> list[Any]:
    """setup(world) -> what to compare, run in a C world and a Python world"""
    got = []
    for mode in ("c", "python"):
        with event_loop():
            w = World(mode, 8, 1, "none")
            saved = UpstreamConnection.data_received
            if mode == "python":
                UpstreamConnection.data_received = UpstreamConnection._data_received_py  # type: ignore
            try:
                got.append(setup(w))
            finally:
                UpstreamConnection.data_received = saved  # type: ignore[method-assign]
    return got


def test_is_closing_is_asked_once_as_python_asks_it() -> None:
    def run(w: World) -> int:
        up, ut = w.ups[0]
        w.down.data_received(REQUESTS["plain"])
        calls: list[int] = []
        ut.is_closing = lambda: calls.append(1) or True  # type: ignore[method-assign]
        up.data_received(PLAIN)
        return len(calls)
    c, python = _both(run)
    assert c == python   # (_done_plain asks, then pool.release does)


def test_what_python_holds_in_locals_the_c_holds_too() -> None:
    """ex.out and down.transport replaced by Python code the C runs between
    reading them and using them (their __bool__): Python's locals keep the
    old ones, so must the C (it used freed objects)."""
    def run(w: World) -> tuple[bool, list[bytes]]:
        up, _ = w.ups[0]
        w.down.data_received(REQUESTS["plain"])
        ex, down = up.exchange, w.down
        assert ex is not None
        got: list[bytes] = []

        class Sink(Transport):
            def write(self, data: bytes) -> None:
                got.append(bytes(data))

        class Out(list):  # type: ignore[type-arg]
            def __bool__(self) -> bool:
                ex.out = [b"REPLACED"]   # the last reference to this list goes
                return True

        class Flag:
            def __bool__(self) -> bool:
                down.transport = None    # the last reference to the Sink goes
                return False

        ex.out = Out([b"ignored"])
        down.transport = Sink(("127.0.0.1", 1))
        down.eof_sent = Flag()
        up.data_received(PLAIN)
        return bool(got and got[0].endswith(b"\r\n\r\nok\n")), [g[-3:] for g in got]
    c, python = _both(run)
    assert c == python and python[0]


def test_a_second_import_keeps_the_python_reference() -> None:
    """A reload of downstream.py must not take the C method for the Python one
    (each hand-over would then call itself)."""
    import subprocess
    import sys
    code = ("import importlib, types, proxy.downstream as d; importlib.reload(d); "
            "from proxy.upstream import UpstreamConnection as U; "
            "assert isinstance(U._data_received_py, types.FunctionType), U._data_received_py")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-500:]
