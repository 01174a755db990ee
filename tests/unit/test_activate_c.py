"""proxy/_request.c's _activate: Downstream._activate, Node.dispatch,
Exchange.start, cluster.on_start, BackendPool.take_idle,
UpstreamConnection.usable, Exchange._attach and _arm_response_timer in C
for a plain request, from on_headers_complete.

Here a real Node, with stand-in transports, a stand-in loop and a clock
that counts its readings, carries the same requests twice: once with the C
(set_activate(True)) and once with the Python methods (set_activate(False):
on_headers_complete then calls Downstream._activate as before). The odd
cases around the plain one are drawn in: pipelined requests, bodies, Expect,
no Host (HTTP/1.0), a client not reading, stale, closed or half-closed idle
connections, no idle connection (a connect task), an ejected backend (pick's
failure tuple), the protect hooks on, a 413, several routes, writes that
raise, reset connections (a retry), methods patched on the class or the
node. After each step both worlds must hold the same: the bytes written to
each backend and to the client, the clock readings taken, every slot of
every exchange and of its RequestContext, the pool (idle order, busy,
counters), the balancer's counts and EWMA, node.deadlines, the node's
counters, the connection's state and the tasks started.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import types
from collections import deque
from typing import Any, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy import downstream as downstream_mod
from proxy import exchange as exchange_mod
from proxy import node as node_mod
from proxy import upstream as upstream_mod
from proxy.balance.backend import BackendState
from proxy.config import parse_config
from proxy.context import RequestContext
from proxy.downstream import Downstream
from proxy.exchange import Exchange
from proxy.features import build_hooks
from proxy.node import Listener, Node
from proxy.snapshot import Route
from proxy.upstream import BackendPool, UpstreamConnection
from tests.unit.test_done_plain import Transport as PlainTransport
from tests.unit.test_done_plain import event_loop, loop  # noqa: F401  (loop: a fixture)

PURE = os.environ.get("NOVAEDGE_PURE_PYTHON") == "1"
try:
    from proxy import _request as request_c
except ImportError:   # not built: the tests below that need it fail, the comparisons run Python twice
    request_c = None  # type: ignore[assignment]

PLAIN = (b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n"
         b"Connection: keep-alive\r\n\r\nok\n")
H = b"Host: h.test\r\n"
REQUESTS = {
    "plain": b"GET /a HTTP/1.1\r\n" + H + b"\r\n",
    "browser": b"GET /api/x?y=1 HTTP/1.1\r\n" + H + b"User-Agent: t\r\nAccept: */*\r\n\r\n",
    "head": b"HEAD /a HTTP/1.1\r\n" + H + b"\r\n",
    "close": b"GET /a HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n",
    "http10-no-host": b"GET /a HTTP/1.0\r\n\r\n",
    "http10": b"GET /a HTTP/1.0\r\n" + H + b"\r\n",
    "pipelined": b"GET /a HTTP/1.1\r\n" + H + b"\r\nGET /b HTTP/1.1\r\n" + H + b"\r\n",
    "post": b"POST /a HTTP/1.1\r\n" + H + b"Content-Length: 5\r\n\r\nhello",
    "post-later": b"POST /a HTTP/1.1\r\n" + H + b"Content-Length: 5\r\n\r\n|hel|lo",
    "expect": b"POST /a HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nExpect: 100-continue\r\n\r\n|hello",
    "expect-no-body": b"GET /a HTTP/1.1\r\n" + H + b"Expect: 100-continue\r\n\r\n",
    "chunked": b"POST /a HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "big": b"PUT /a HTTP/1.1\r\n" + H + b"Content-Length: 100\r\n\r\n" + b"x" * 100,
    "delete": b"DELETE /api/a HTTP/1.1\r\n" + H + b"\r\n",
    "upgrade": b"GET /ws HTTP/1.1\r\n" + H + b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
}
ROUTES = {
    "single": [{"name": "r", "pool": "p"}],
    "small": [{"name": "r", "pool": "p", "max_body_bytes": 4}],
    "write": [{"name": "r", "pool": "p", "write": False}],
    "multi": [{"name": "api", "pool": "p", "match": {"path_prefix": "/api"}}, {"name": "r", "pool": "p"}],
}
ODD = ["", "write-paused", "stale", "peer-closed", "closing", "eof", "closed", "no-transport", "ejected",
       "protect", "protect-403", "write-raises", "is-closing-raises", "node-dispatch", "class-attach",
       "class-start", "class-usable", "class-take-idle", "class-arm", "on-start", "no-every", "no-pool",
       "held", "slow-clock", "reload", "class-activate", "class-continue", "pick-retry", "pick-fails",
       "pick-body", "zero-clock", "globals"]
RESPONSES = ["plain", "reset", "none"]


class Transport(PlainTransport):
    """test_done_plain's stand-in, with a write and an is_closing() that can
    be made to fail, and is_closing() calls counted."""

    def __init__(self, peer: tuple[str, int]) -> None:
        super().__init__(peer)
        self.raise_on_write = False
        self.raise_on_is_closing = False
        self.asked = 0

    def write(self, data: bytes) -> None:
        if self.raise_on_write:
            self.raise_on_write = False
            raise RuntimeError("write failed")
        super().write(data)

    def is_closing(self) -> bool:
        self.asked += 1
        if self.raise_on_is_closing:
            self.raise_on_is_closing = False
            raise RuntimeError("is_closing failed")
        return super().is_closing()


class Sock:
    """UpstreamConnection.peer_closed's getsockopt(TCP_INFO): tcpi_state first."""

    def __init__(self) -> None:
        self.state = 1   # ESTABLISHED
        self.asked = 0

    def getsockopt(self, *a: Any) -> bytes:
        self.asked += 1
        return bytes([self.state])


class Loop:
    """node.loop: the connect tasks are noted, not run."""

    def __init__(self) -> None:
        self.tasks: list[str] = []

    def create_task(self, coro: Any) -> None:
        self.tasks.append(coro.cr_code.co_qualname)
        coro.close()


class Clock:
    def __init__(self, step: float) -> None:
        self.t = 1000.0
        self.step = step
        self.n = 0

    def __call__(self) -> float:
        self.n += 1
        self.t += self.step
        return self.t



@contextlib.contextmanager
def patched(obj: Any, name: str, value: Any) -> Iterator[None]:
    # the object's own value: in its __dict__, or in a slot (Node keeps its hot attributes in slots)
    own = getattr(obj, "__dict__", {})
    had = name in own or (isinstance(getattr(type(obj), name, None), types.MemberDescriptorType)
                          and hasattr(obj, name))
    saved = own[name] if name in own else getattr(obj, name, None)
    setattr(obj, name, value)
    try:
        yield
    finally:
        if had:
            setattr(obj, name, saved)
        else:
            delattr(obj, name)


@contextlib.contextmanager
def c_activate(on: bool) -> Iterator[None]:
    if request_c is None:
        yield
        return
    was = request_c.set_activate(on)
    try:
        yield
    finally:
        request_c.set_activate(was)


class World:
    """A node, one client connection and `idle` pooled backend connections."""

    def __init__(self, c: bool, routes: str, idle: int, step: float) -> None:
        self.cfg = {
            "node": {"name": "t", "region": "us-east-1"}, "listeners": [{"bind": "127.0.0.1:0"}],
            "pools": {"p": {"regions": {"us-east-1": ["127.0.0.1:9"]}}},
            "routes": ROUTES[routes], "access_log": {"enabled": False}, "metrics": {"enabled": False}}
        self.reloads = 0
        cfg = parse_config(self.cfg)
        self.c = c
        self.node = node = Node(cfg, hooks=build_hooks(cfg, 0))
        self.clock = node.now = Clock(step)  # type: ignore[assignment]
        self.loop = node.loop = Loop()  # type: ignore[assignment]
        self.errors: list[str] = []
        self.down = Downstream(node, Listener(cfg.listeners[0]))
        self.dt = Transport(("127.0.0.1", 40000))
        self.down.connection_made(self.dt)
        self.backend = next(iter(node.selector.cluster.backends()))
        self.pool = node.pool_for(self.backend)
        self.ups: list[tuple[UpstreamConnection, Transport, Sock]] = []
        for _ in range(idle):
            up, ut, sock = UpstreamConnection(self.pool), Transport(("127.0.0.1", 9)), Sock()
            up.connection_made(ut)
            up.sock = sock
            up.idle_since = 1000.0
            self.pool.idle.append(up)
            self.pool.created += 1
            self.ups.append((up, ut, sock))
        self.exchanges: list[Exchange] = []
        self.held: list[bytes] | None = None

    def transport_of(self, up: UpstreamConnection) -> Transport:
        return next(t for u, t, _ in self.ups if u is up)

    def _new_exchange(self, down: Downstream) -> Exchange:
        ex = self.made(down)
        self.exchanges.append(ex)
        if self.held is not None:   # as if body had been held for it in the pipeline queue
            ex.pending_body = list(self.held)
        return ex

    @contextlib.contextmanager
    def odd_case(self, odd: str) -> Iterator[None]:
        node, pool = self.node, self.pool
        idle = list(pool.idle)
        with contextlib.ExitStack() as stack:
            if odd == "write-paused":
                self.down.pause_writing()
                stack.callback(self.down.resume_writing)
            elif odd in ("stale", "peer-closed"):
                for up in idle:
                    up.idle_since = 0.0
                if odd == "peer-closed" and idle:
                    idle[-1].sock.state = 7   # the kernel saw the backend's FIN
            elif odd in ("closing", "eof", "closed") and idle:
                up = idle[-1]
                if odd == "closing":
                    self.transport_of(up).closing = True
                elif odd == "eof":
                    up.eof = True
                else:
                    up.closed = True
            elif odd == "ejected":
                node.selector.force(self.backend.id, ejected=True)
                stack.callback(node.selector.force, self.backend.id, False)
            elif odd in ("protect", "protect-403"):
                def protect(node: Node, down: Downstream, ctx: RequestContext) -> Any:
                    self.errors.append(f"protect {ctx.path} {down.current.state} {down.requests}")
                    return (403, "denied", [(b"X-Why", b"test")]) if odd == "protect-403" else None

                def route_check(node: Node, down: Downstream, ctx: RequestContext) -> Any:
                    self.errors.append(f"route_check {ctx.route.name}")
                stack.enter_context(patched(node.hooks, "protect_active", True))
                stack.enter_context(patched(node.hooks, "protect", protect))
                stack.enter_context(patched(node.hooks, "route_check", route_check))
            elif odd == "no-transport" and idle:
                idle[-1].transport = None
            elif odd == "no-pool":
                stack.enter_context(patched(node, "pools", {}))
            elif odd == "held":
                self.held = [b"held"]
                stack.callback(setattr, self, "held", None)
            elif odd == "write-raises" and idle:
                self.transport_of(idle[-1]).raise_on_write = True
            elif odd == "is-closing-raises" and idle:
                self.transport_of(idle[-1]).raise_on_is_closing = True
            elif odd == "node-dispatch":
                def dispatch(down: Downstream, ex: Exchange) -> None:
                    self.errors.append("node.dispatch")
                    Node.dispatch(node, down, ex)
                stack.enter_context(patched(node, "dispatch", dispatch))
            elif odd.startswith("class-"):
                cls, name = {"class-attach": (Exchange, "_attach"), "class-start": (Exchange, "start"),
                             "class-usable": (UpstreamConnection, "usable"),
                             "class-take-idle": (BackendPool, "take_idle"),
                             "class-arm": (Exchange, "_arm_response_timer"),
                             "class-activate": (Downstream, "_activate"),
                             "class-continue": (Exchange, "continue_100")}[odd]
                real = vars(cls)[name]

                def wrapper(*a: Any, **k: Any) -> Any:
                    self.errors.append(name)
                    return real(*a, **k)
                stack.enter_context(patched(cls, name, wrapper))
            elif odd == "on-start":
                real_on_start = exchange_mod.on_start

                def on_start(b: Any) -> None:
                    self.errors.append("on_start")
                    real_on_start(b)
                stack.enter_context(patched(exchange_mod, "on_start", on_start))
            elif odd == "no-every":
                stack.enter_context(patched(node.snapshot.router, "every", None))
            elif odd == "reload":   # a new Snapshot: another response timeout and body limit
                self.reloads += 1
                node.apply_config(parse_config(self.cfg | {
                    "upstream": {"response_timeout_s": 5.0 + self.reloads},
                    "limits": {"max_body_bytes": 3 + self.reloads}}))
            elif odd in ("pick-retry", "pick-fails", "pick-body"):
                # what start reads after pick, changed by it: as on a retry
                real_pick = node.selector.pick

                def pick(ctx: RequestContext, tried: set[str], now: float) -> Any:
                    ex = self.down.current
                    self.errors.append(f"pick {ex.state} {ctx.route.name} {ctx.is_write} {ex.max_body}")
                    if odd == "pick-body":   # body held meanwhile: _attach writes it with the head
                        ex.pending_body.append(b"early")
                        ex.pending_len += 5
                        return real_pick(ctx, tried, now)
                    ctx.retries = 1
                    ex.reused = True
                    ex.last_failure = (502, "upstream-reset")
                    return (503, "no backend") if odd == "pick-fails" else real_pick(ctx, tried, now)
                stack.enter_context(patched(node.selector, "pick", pick))
            elif odd == "globals":   # the module globals the methods read, changed
                stack.enter_context(patched(upstream_mod, "STALE_CHECK_AFTER_S", 0.0))
                stack.enter_context(patched(node_mod, "IDEMPOTENT", frozenset({"POST"})))
            elif odd == "zero-clock":   # a clock reading 0.0: start and the timer read it again
                stack.enter_context(patched(self.clock, "t", 0.0))
                stack.enter_context(patched(self.clock, "step", 0.0))
            elif odd == "slow-clock":
                stack.enter_context(patched(self.clock, "step", 0.01))
            yield

    def run(self, request: bytes, response: str, odd: str) -> None:
        self.made = downstream_mod._new_exchange
        with c_activate(self.c), patched(downstream_mod, "_new_exchange", self._new_exchange), \
                self.odd_case(odd):
            for piece in request.split(b"|"):
                try:
                    self.down.data_received(piece)
                except Exception as e:   # (none expected: the callbacks' errors end in _callback_failed)
                    self.errors.append(repr(e))
            for up, ut, _ in self.ups:
                ex = up.exchange
                if ex is None or response == "none":
                    continue
                try:
                    if response == "reset":
                        up.connection_lost(ConnectionResetError())
                    else:
                        up.data_received(PLAIN)
                except Exception as e:
                    self.errors.append(repr(e))

    # -- what is compared ------------------------------------------------------------
    def norm(self, v: Any, depth: int = 0) -> Any:
        if v is None or isinstance(v, (bool, int, float, str, bytes)):
            return v
        if isinstance(v, Exchange):
            return ("ex", next((i for i, e in enumerate(self.exchanges) if e is v), "?"))
        if isinstance(v, UpstreamConnection):
            return ("up", next((i for i, (u, _, _) in enumerate(self.ups) if u is v), "?"))
        if isinstance(v, Downstream):
            return "down" if v is self.down else "other down"
        if isinstance(v, Node):
            return "node" if v is self.node else "other node"
        if isinstance(v, BackendState):
            return ("backend", v.id)
        if isinstance(v, BackendPool):
            return ("pool", v.key)
        if isinstance(v, Route):
            return ("route", v.name)
        if isinstance(v, RequestContext):
            return ("ctx", {s: self.norm(getattr(v, s, "<unset>"), depth + 1) for s in RequestContext.__slots__})
        if isinstance(v, (list, tuple, deque)):
            return (type(v).__name__, [self.norm(x, depth + 1) for x in v])
        if isinstance(v, (set, frozenset)):
            return (type(v).__name__, sorted(repr(self.norm(x, depth + 1)) for x in v))
        if isinstance(v, dict):
            return {repr(k): self.norm(x, depth + 1) for k, x in v.items()}
        r = repr(v)
        return type(v).__name__ if " at 0x" in r else r

    def state(self) -> dict[str, Any]:
        d, b, node, pool = self.down, self.backend, self.node, self.pool
        return {
            "errors": self.errors,
            "clock": self.clock.n,
            "client out": b"".join(self.dt.out), "client closing": self.dt.closing,
            "client paused": self.dt.paused,
            "backend out": [b"".join(ut.out) for _, ut, _ in self.ups],
            "backend closing": [ut.closing for _, ut, _ in self.ups],
            "asked": [(ut.asked, s.asked) for _, ut, s in self.ups],
            "ups": [(self.norm(u.exchange), u.closed, u.eof, u.idle_since, u.paused_by_client)
                    for u, _, _ in self.ups],
            "pool": (self.norm(pool.idle), self.norm(pool.busy), pool.reused, pool.created,
                     pool.connect_failures),
            "pools": sorted(node.pools),
            "balancer": (b.in_flight, b.ewma_ms, b.samples, b.stamp,
                         b.pool.in_flight if b.pool is not None else None),
            "stats": dict(node.stats), "started": node.started,
            "deadlines": self.norm(node.deadlines),
            "tasks": self.loop.tasks,
            "down": {s: self.norm(getattr(d, s, "<unset>")) for s in Downstream.__slots__
                     if s not in ("parser", "transport", "node", "listener", "protect_memo")},
            "exchanges": [{s: self.norm(getattr(e, s, "<unset>")) for s in Exchange.__slots__
                           if s not in ("resp_parser", "limits")}
                          | {"resp_parser": type(e.resp_parser).__name__}
                          for e in self.exchanges],
        }


def compare(steps: list[tuple[str, str, str]], routes: str, idle: int, step: float) -> dict[str, int]:
    """Both worlds through `steps`; what the C did, by method."""
    worlds = [World(c, routes, idle, step) for c in (True, False)]
    before = request_c.activate_counts() if request_c is not None else {}
    for request, response, odd in steps:
        counts = request_c.activate_counts() if request_c is not None else {}
        worlds[0].run(REQUESTS[request], response, odd)
        if request_c is not None:   # the Python world must not use it
            counts = request_c.activate_counts()
        worlds[1].run(REQUESTS[request], response, odd)
        if request_c is not None:
            assert request_c.activate_counts() == counts
        a, b = worlds[0].state(), worlds[1].state()
        for k in a:
            assert a[k] == b[k], (k, request, response, odd)
    after = request_c.activate_counts() if request_c is not None else {}
    return {k: after[k] - before[k] for k in after}


def test_the_c_version_is_built_and_used(loop: asyncio.AbstractEventLoop) -> None:
    if PURE:
        pytest.skip("NOVAEDGE_PURE_PYTHON=1")
    assert request_c is not None and hasattr(request_c, "setup_activate"), "proxy/_request.c was not built"
    done = compare([("plain", "plain", "")] * 3, "single", 1, 1.0)
    # every method inlined, each once a request (the first pooled connection is fresh: usable once)
    assert done == dict.fromkeys(done, 3), done


PLAIN_STEP = ("plain", "plain", "")


@pytest.mark.parametrize("idle", [0, 1, 2, 3])
@pytest.mark.parametrize("odd", ODD)
@pytest.mark.parametrize("routes", list(ROUTES))
def test_each_odd_case_between_plain_ones(loop: asyncio.AbstractEventLoop, routes: str, odd: str,
                                          idle: int) -> None:
    compare([PLAIN_STEP, ("plain", "plain", odd), PLAIN_STEP, ("browser", "plain", odd), PLAIN_STEP],
            routes, idle, 1.0)


@pytest.mark.parametrize("request_name", list(REQUESTS))
@pytest.mark.parametrize("routes", list(ROUTES))
def test_each_request_between_plain_ones(loop: asyncio.AbstractEventLoop, routes: str, request_name: str) -> None:
    for response in RESPONSES:
        for odd in ("", "class-continue", "protect", "pick-retry", "pick-body", "zero-clock"):
            compare([PLAIN_STEP, (request_name, response, odd), PLAIN_STEP, PLAIN_STEP], routes, 2, 1.0)


# plain first: hypothesis draws (and shrinks towards) the first elements most
REQUEST_NAMES = ["plain", "plain"] + list(REQUESTS)
RESPONSE_NAMES = ["plain", "plain", "plain"] + RESPONSES
ODD_NAMES = ["", "", ""] + ODD


@settings(max_examples=300, deadline=None)
@given(steps=st.lists(st.tuples(st.sampled_from(REQUEST_NAMES), st.sampled_from(RESPONSE_NAMES),
                                st.sampled_from(ODD_NAMES)), min_size=1, max_size=6),
       routes=st.sampled_from(["single", "single"] + list(ROUTES)), idle=st.sampled_from([1, 1, 2, 0, 3]),
       step=st.sampled_from([1.0, 0.03125, 0.25]))
def test_the_c_leaves_what_the_python_leaves(steps: list[tuple[str, str, str]], routes: str, idle: int,
                                             step: float) -> None:
    with event_loop():
        compare(steps, routes, idle, step)


def test_c_seams_are_taken(loop: asyncio.AbstractEventLoop) -> None:
    """The odd cases reach the C's own branches (not only the Python fallbacks)."""
    if PURE:
        pytest.skip("NOVAEDGE_PURE_PYTHON=1")
    # an empty pool: start in C, the connect task started from C
    done = compare([("plain", "none", "")], "single", 0, 1.0)
    assert done["start"] == 1 and done["take_idle"] == 1 and done["_attach"] == 0
    # a stale idle connection: peer_closed asked from C; one the kernel saw closed: the next one
    done = compare([("plain", "plain", "peer-closed")], "single", 2, 1.0)
    assert done["take_idle"] == 1 and done["usable"] == 2 and done["_attach"] == 1
    # a body still to come: attached in C, no timer yet (request_done arms it)
    done = compare([("post-later", "plain", "")], "single", 1, 1.0)
    assert done["_attach"] == 1 and done["_arm_response_timer"] == 0
    # an ejected backend: pick's tuple, fail_request from C
    done = compare([("plain", "plain", "ejected")], "single", 1, 1.0)
    assert done["start"] == 1 and done["take_idle"] == 0
    # a 413, and an Expect: dispatch in C
    done = compare([("big", "plain", "")], "small", 1, 1.0)
    assert done["dispatch"] == 1 and done["start"] == 0
    done = compare([("expect", "plain", "")], "single", 1, 1.0)
    assert done["dispatch"] == 1 and done["_attach"] == 1
    # each method patched: the others still in C
    done = compare([("plain", "plain", "class-attach")], "single", 1, 1.0)
    assert done["start"] == 1 and done["_attach"] == 0
    done = compare([("plain", "plain", "on-start")], "single", 1, 1.0)
    assert done["start"] == 1 and done["on_start"] == 0
    done = compare([("plain", "plain", "node-dispatch")], "single", 1, 1.0)
    assert done["_activate"] == 1 and done["dispatch"] == 0


def test_an_exception_propagates_as_from_python(loop: asyncio.AbstractEventLoop) -> None:
    # transport.write raising inside _attach: the same error reaches _callback_failed
    seen: list[list[str]] = []
    for c in (True, False):
        w = World(c, "single", 1, 1.0)
        got: list[str] = []
        real = Downstream._callback_failed

        def callback_failed(self: Downstream, exc: BaseException, got: list[str] = got) -> None:
            got.append(repr(exc))
            real(self, exc)
        with patched(Downstream, "_callback_failed", callback_failed):
            w.run(REQUESTS["plain"], "plain", "write-raises")
        seen.append(got)
    assert seen[0] == seen[1] == ["RuntimeError('write failed')"]


# A __setattr__ (a tracer, say) given to a class whose slots the C writes: the
# C must go through it as Python does (it wrote the slots directly; a review found it).
@pytest.mark.parametrize("cls_name", ["RequestContext", "Exchange", "BackendState"])
def test_a_class_setattr_sees_what_python_s_sees(cls_name: str) -> None:
    cls = {"RequestContext": RequestContext, "Exchange": Exchange, "BackendState": BackendState}[cls_name]
    seen: dict[bool, list[str]] = {}
    with event_loop():
        for c in (True, False):
            got = seen[c] = []
            w = World(c, "single", 1, 1.0)

            def setattr_(self: Any, name: str, value: Any, got: list[str] = got) -> None:
                got.append(name)
                object.__setattr__(self, name, value)
            with patched(cls, "__setattr__", setattr_):
                w.run(REQUESTS["plain"], "none", "")
    assert seen[True] == seen[False] and seen[False]
