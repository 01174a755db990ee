"""One backend set + one in-process node, started and stopped together."""
from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass
from typing import Any, AsyncIterator, Iterator

from proxy.node import Node
from tests.support.backend import TestBackend
from tests.support.http import Response, exchange, request
from tests.support.node import node_config, run_node


@dataclass
class Harness:
    node: Node
    backends: list[TestBackend]

    @property
    def port(self) -> int:
        return self.node.listeners[0].port

    @property
    def backend(self) -> TestBackend:
        return self.backends[0]

    def requests_seen(self) -> int:
        return sum(b.stats.requests for b in self.backends)

    def paths_seen(self) -> list[str]:
        return [p for b in self.backends for p in b.stats.paths]

    async def send(self, data: bytes | list[bytes], **kw: Any) -> tuple[list[Response], bytes, bool]:
        return await exchange(self.port, data, **kw)

    async def get(self, target: str = "/", **kw: Any) -> Response:
        """One request with Connection: close; returns its response."""
        headers = list(kw.pop("headers", [])) + [("Connection", "close")]
        method = kw.pop("method", "GET")
        body = kw.pop("body", b"")
        resps, raw, _closed = await exchange(self.port, request(method, target, headers=headers, body=body),
                                             methods=[method], **kw)
        assert resps, f"no complete response; got {raw[:300]!r}"
        return resps[0]


@contextlib.asynccontextmanager
async def harness(n_backends: int = 1, *, backends: list[str] | None = None,
                  **overrides: Any) -> AsyncIterator[Harness]:
    """`backends` adds extra addresses (e.g. a closed port) after the test backends;
    `extra_pools={name: {...}}` adds pools beside "default"; other keyword
    arguments override top-level config keys."""
    started: list[TestBackend] = []
    try:
        for i in range(n_backends):
            started.append(await TestBackend.start(f"b{i + 1}"))
        addrs = [b.address for b in started] + list(backends or [])
        extra_pools = overrides.pop("extra_pools", None)
        if extra_pools:
            region = overrides.get("node", {}).get("region", "us-east-1")
            overrides["pools"] = {"default": {"regions": {region: addrs}}, **extra_pools}
        async with run_node(node_config(addrs, **overrides)) as node:
            yield Harness(node, started)
    finally:
        for b in started:
            await b.stop()


@contextlib.contextmanager
def blackhole() -> Iterator[str]:
    """An address whose connects hang: a listener with a full accept queue
    (Linux drops further SYNs). Yields "127.0.0.1:port"."""
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(0)
    port = ls.getsockname()[1]
    fill = []
    try:
        for _ in range(3):
            c = socket.socket()
            c.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                c.connect(("127.0.0.1", port))
            fill.append(c)
        yield f"127.0.0.1:{port}"
    finally:
        for c in fill:
            c.close()
        ls.close()


def closed_port() -> str:
    """An address where nothing listens (connects are refused)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"127.0.0.1:{port}"
