"""Run a real node in the test's own event loop, and talk to it with raw bytes."""
from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Any, AsyncIterator

from proxy.config import Config, parse_config
from proxy.node import Node, NodeHooks


def node_config(backends: dict[str, list[str]] | list[str], **overrides: Any) -> Config:
    """A config with one pool 'default' and one route to it. `backends` is a list
    (all in the node's region) or {region: [host:port, ...]}."""
    region = overrides.get("node", {}).get("region", "us-east-1")
    regions = backends if isinstance(backends, dict) else {region: backends}
    data: dict[str, Any] = {
        "node": {"name": "test", "region": region},
        "listeners": [{"bind": "127.0.0.1:0"}],
        "pools": {"default": {"regions": regions}},
        "routes": [{"name": "default", "pool": "default"}],
        # Tests read what they need from the node; an access log on stdout is noise.
        "access_log": {"enabled": False},
    }
    data.update(overrides)
    return parse_config(data)


@contextlib.asynccontextmanager
async def run_node(config: Config, hooks: NodeHooks | None = None) -> AsyncIterator[Node]:
    if hooks is None:
        from proxy.features import build_hooks
        hooks = build_hooks(config, 0)
    node = Node(config, hooks=hooks)
    await node.start()
    try:
        yield node
    finally:
        await node.drain(0.5)


def port_of(node: Node, i: int = 0) -> int:
    return node.listeners[i].port


async def raw_exchange(port: int, data: bytes | list[bytes], *, timeout: float = 3.0,
                       host: str = "127.0.0.1", local_addr: tuple[str, int] | None = None,
                       gap: float = 0.0, until_closed: bool = True) -> bytes:
    """Send raw bytes (pieces with an optional gap), read until the server closes or
    `timeout` passes with nothing more to read."""
    reader, writer = await asyncio.open_connection(host, port, local_addr=local_addr)
    pieces = [data] if isinstance(data, bytes) else data
    out = b""
    try:
        for p in pieces:
            writer.write(p)
            await writer.drain()
            if gap:
                await asyncio.sleep(gap)
        while True:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), timeout)
            except asyncio.TimeoutError:
                break
            if not chunk:
                break
            out += chunk
            if not until_closed and complete_responses(out):
                break
    except (ConnectionResetError, BrokenPipeError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    return out


_STATUS = re.compile(rb"HTTP/1\.[01] (\d{3})")


def statuses(raw: bytes) -> list[int]:
    """Status codes of the final responses in a raw byte stream (heads only, approximate
    where bodies contain status-like text; the tests' bodies do not)."""
    return [int(m.group(1)) for m in _STATUS.finditer(raw) if not m.group(1).startswith(b"1")]


def complete_responses(raw: bytes) -> bool:
    return b"\r\n\r\n" in raw


@contextlib.asynccontextmanager
async def run_stack(config: Config) -> AsyncIterator[Any]:
    """The whole single-process node (control plane + worker) in this loop."""
    from proxy.runner import Stack
    stack = Stack(config)
    await stack.start()
    try:
        yield stack
    finally:
        await stack.stop(0.5)
