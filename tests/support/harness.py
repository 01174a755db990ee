"""One backend set + one in-process node, started and stopped together."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, AsyncIterator

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
    """`backends` adds extra addresses (e.g. a closed port) after the test backends."""
    started: list[TestBackend] = []
    try:
        for i in range(n_backends):
            started.append(await TestBackend.start(f"b{i + 1}"))
        addrs = [b.address for b in started] + list(backends or [])
        async with run_node(node_config(addrs, **overrides)) as node:
            yield Harness(node, started)
    finally:
        for b in started:
            await b.stop()
