"""Processes: one worker per core sharing the listeners (SO_REUSEPORT), each
a complete data plane on its own uvloop loop; the supervisor forwards
signals and reloads.

Signals: SIGTERM/SIGINT drain (stop accepting, finish in-flight requests up
to limits.drain_timeout_s, exit 0); SIGHUP reloads the config file: validate,
swap atomically, keep the old config on error.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from typing import Callable

import uvloop

from .config import Config, ConfigError, load_config
from .node import Node, NodeHooks

log = logging.getLogger("novaedge.runner")

HooksFactory = Callable[[Config, int], NodeHooks]


def _default_hooks(config: Config, worker_id: int) -> NodeHooks:
    from .features import build_hooks
    return build_hooks(config, worker_id)


async def serve_worker(config: Config, config_path: str | None, worker_id: int,
                       reuse_port: bool, hooks_factory: HooksFactory = _default_hooks,
                       ready: Callable[[Node], None] | None = None) -> int:
    loop = asyncio.get_running_loop()
    node = Node(config, worker_id=worker_id, reuse_port=reuse_port,
                hooks=hooks_factory(config, worker_id))
    await node.start()
    stop = asyncio.Event()

    def reload() -> None:
        if config_path is None:
            log.info("SIGHUP: no config file to reload (quick-start mode)")
            return
        try:
            new = load_config(config_path)
        except ConfigError as e:
            log.error("reload refused, keeping the last good config:\n%s", e)
            node.hooks.reload_result(False, str(e)) if hasattr(node.hooks, "reload_result") else None
            return
        node.apply_config(new)
        log.info("config reloaded from %s (snapshot %d)", config_path, node.snapshot.version)
        node.hooks.reload_result(True, "") if hasattr(node.hooks, "reload_result") else None

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload)
    if ready is not None:
        ready(node)
    for li in node.listeners:
        log.info("worker %d (pid %d) listening on %s:%d", worker_id, os.getpid(), li.host, li.port)
    await stop.wait()
    log.info("worker %d draining", worker_id)
    await node.drain()
    return 0


def run(config: Config, config_path: str | None = None,
        hooks_factory: HooksFactory = _default_hooks) -> int:
    workers = config.worker_count()
    if workers == 1:
        return uvloop.run(serve_worker(config, config_path, 0, False, hooks_factory))
    children: dict[int, int] = {}
    for wid in range(workers):
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            try:
                code = uvloop.run(serve_worker(config, config_path, wid, True, hooks_factory))
            except BaseException:
                log.exception("worker %d crashed", wid)
                code = 1
            os._exit(code)
        children[pid] = wid

    def forward(signum: int, _frame: object) -> None:
        for pid in children:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
        signal.signal(s, forward)
    code = 0
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        children.pop(pid, None)
        rc = os.waitstatus_to_exitcode(status)
        if rc != 0:
            log.error("worker pid %d exited with %d", pid, rc)
            code = rc if rc > 0 else 1
    return code


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(stream=sys.stderr, level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
