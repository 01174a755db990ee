"""Processes: one worker per core sharing the listeners (SO_REUSEPORT), each
a complete data plane on its own uvloop loop, and the control plane once per
node. With one worker, both run in one process on one loop.

Signals (to the supervisor, or the single process): SIGTERM/SIGINT drain
(stop accepting, finish in-flight requests up to limits.drain_timeout_s,
exit 0); SIGHUP reloads the config file; SIGUSR1 reopens the access log.
A worker that dies unexpectedly is replaced.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import sys
from typing import Callable

import uvloop

from .agent import WorkerAgent
from .channel import InlineChannel, SocketChannel
from .config import Config
from .control import ControlPlane
from .node import Node, NodeHooks

log = logging.getLogger("novaedge.runner")

HooksFactory = Callable[[Config, int], NodeHooks]
ControlFactory = Callable[[ControlPlane], None]


class _DefaultHooks:
    """Builds each worker's hooks. The node-wide rate-limit table is created
    here, in the supervisor, before any fork: workers inherit its memory."""

    def __init__(self) -> None:
        self.shared: object | None = None

    def prepare(self, config: Config, workers: int) -> None:
        from .protect import SharedState
        self.shared = SharedState(config.protection.table_size, workers)

    def __call__(self, config: Config, worker_id: int) -> NodeHooks:
        from .features import build_hooks
        return build_hooks(config, worker_id, self.shared)  # type: ignore[arg-type]


_default_hooks = _DefaultHooks()


def _default_services(control: ControlPlane) -> None:
    from .services import install_services
    install_services(control)


async def _start_worker(config: Config, worker_id: int, reuse_port: bool,
                        hooks_factory: HooksFactory, channel: InlineChannel | SocketChannel,
                        stop: asyncio.Event) -> tuple[Node, WorkerAgent]:
    node = Node(config, worker_id=worker_id, reuse_port=reuse_port,
                hooks=hooks_factory(config, worker_id))
    await node.start()
    agent = WorkerAgent(node, channel, stop.set)
    if isinstance(channel, SocketChannel):
        await channel.start(agent.handle)
    else:
        channel.handler = agent.handle
    agent.start()
    # Everything built so far lives for the process: keep the collector off it,
    # and collect young objects less often (the hot path makes no cycles; see
    # Downstream.response_finished). Measured in loadtests/bench_nginx.py.
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    for li in node.listeners:
        log.info("worker %d (pid %d) listening on %s:%d", worker_id, os.getpid(), li.host, li.port)
    return node, agent


class Stack:
    """Control plane and one worker on one loop: the single-process node
    (and what integration tests run in their own loop)."""

    def __init__(self, config: Config, config_path: str | None = None,
                 hooks_factory: HooksFactory = _default_hooks,
                 services: ControlFactory = _default_services) -> None:
        self.config = config
        self.config_path = config_path
        self.hooks_factory = hooks_factory
        self.control = ControlPlane(config, config_path)
        services(self.control)
        self.stop_event = asyncio.Event()
        self.node: Node | None = None
        self.agent: WorkerAgent | None = None

    async def start(self) -> Node:
        c_end, w_end = InlineChannel.pair()
        c_end.handler = lambda msg: self.control.on_message(0, msg)
        self.control.attach(0, c_end)
        self.node, self.agent = await _start_worker(self.config, 0, False, self.hooks_factory,
                                                    w_end, self.stop_event)
        await self.control.start()
        return self.node

    async def stop(self, deadline_s: float | None = None) -> None:
        self.control.draining = True
        await self.control.stop()
        if self.agent is not None:
            self.agent.stop()
        if self.node is not None:
            await self.node.drain(deadline_s)


async def _single(config: Config, config_path: str | None, hooks_factory: HooksFactory,
                  services: ControlFactory) -> int:
    loop = asyncio.get_running_loop()
    stack = Stack(config, config_path, hooks_factory, services)
    await stack.start()
    control, stop = stack.control, stack.stop_event
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: control.reload("SIGHUP"))
    loop.add_signal_handler(signal.SIGUSR1, lambda: control.broadcast({"reopen_logs": True}))
    stopper = loop.create_task(control.stop_requested.wait())
    waiter = loop.create_task(stop.wait())
    await asyncio.wait([stopper, waiter], return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    waiter.cancel()
    log.info("draining")
    await stack.stop()
    return 0


def _worker_main(config: Config, worker_id: int, sock: socket.socket,
                 hooks_factory: HooksFactory) -> int:
    async def main() -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        channel = SocketChannel(sock)
        node, agent = await _start_worker(config, worker_id, True, hooks_factory, channel, stop)
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        closed = loop.create_task(channel.closed.wait())
        waiter = loop.create_task(stop.wait())
        await asyncio.wait([closed, waiter], return_when=asyncio.FIRST_COMPLETED)
        closed.cancel()
        waiter.cancel()
        agent.stop()
        await node.drain()
        return 0

    return uvloop.run(main())


class Supervisor:
    def __init__(self, config: Config, config_path: str | None, hooks_factory: HooksFactory,
                 services: ControlFactory) -> None:
        self.config = config
        self.hooks_factory = hooks_factory
        self.control = ControlPlane(config, config_path)
        services(self.control)
        self.children: dict[int, int] = {}      # pid -> worker id
        self.pending: dict[int, socket.socket] = {}
        self.stopping = False

    def fork_worker(self, worker_id: int) -> None:
        parent_sock, child_sock = socket.socketpair()
        pid = os.fork()
        if pid == 0:
            parent_sock.close()
            # The parent's loop state is inherited by fork; the child starts its own.
            asyncio.events._set_running_loop(None)
            for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
                signal.signal(s, signal.SIG_DFL)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)   # reloads come over the channel
            code = 1
            try:
                code = _worker_main(self.control.config, worker_id, child_sock, self.hooks_factory)
            except BaseException:
                log.exception("worker %d crashed", worker_id)
            finally:
                os._exit(code)
        child_sock.close()
        self.children[pid] = worker_id
        self.pending[worker_id] = parent_sock

    async def _attach_pending(self) -> None:
        for wid, sock in list(self.pending.items()):
            del self.pending[wid]
            ch = SocketChannel(sock)
            await ch.start(lambda msg, wid=wid: self.control.on_message(wid, msg))
            self.control.attach(wid, ch)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        await self._attach_pending()
        await self.control.start()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: self.control.reload("SIGHUP"))
        loop.add_signal_handler(signal.SIGUSR1, lambda: self.control.broadcast({"reopen_logs": True}))
        code = 0
        while not (stop.is_set() or self.control.stop_requested.is_set()):
            await asyncio.sleep(0.2)
            code = max(code, await self._reap(respawn=True))
        self.stopping = True
        self.control.draining = True
        log.info("draining %d workers", len(self.children))
        await self.control.stop()
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = loop.time() + self.config.limits.drain_timeout_s + 5
        while self.children and loop.time() < deadline:
            await asyncio.sleep(0.05)
            code = max(code, await self._reap(respawn=False))
        for pid in list(self.children):
            os.kill(pid, signal.SIGKILL)
        return code

    async def _reap(self, respawn: bool) -> int:
        code = 0
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                break
            if pid == 0:
                break
            wid = self.children.pop(pid, None)
            if wid is None:
                continue
            rc = os.waitstatus_to_exitcode(status)
            self.control.detach(wid)
            if rc != 0:
                code = 1
            if respawn and not self.stopping:
                log.error("worker %d (pid %d) exited with %d; starting a new one", wid, pid, rc)
                self.fork_worker(wid)
                await self._attach_pending()
                code = 0
        return code


def run(config: Config, config_path: str | None = None,
        hooks_factory: HooksFactory = _default_hooks,
        services: ControlFactory = _default_services) -> int:
    workers = config.worker_count()
    if isinstance(hooks_factory, _DefaultHooks):
        hooks_factory.prepare(config, workers)
    if workers == 1:
        return uvloop.run(_single(config, config_path, hooks_factory, services))
    sup = Supervisor(config, config_path, hooks_factory, services)
    for wid in range(workers):
        sup.fork_worker(wid)   # before the supervisor's loop exists: clean children
    return uvloop.run(sup.run())


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(stream=sys.stderr, level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    logging.getLogger("mmdb_writer").setLevel(logging.WARNING)   # one line per network otherwise
