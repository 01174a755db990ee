"""The control channel between the control plane and each worker.

Messages are small dicts. In multi-process mode they travel over a socketpair
as length-prefixed pickles (both ends are this same program, started from
one binary by fork, so pickle's trust model holds); in single-process mode
the two ends call each other directly. Same messages, same handlers.

Control plane -> worker:  {"config": Config}, {"health": {...}}, {"regions": {...}},
                          {"drain": deadline_s}, {"reopen_logs": True}
Worker -> control plane:  {"stats": {...}} once a second, {"passive": [...]}, {"hello": pid}
"""
from __future__ import annotations

import asyncio
import logging
import pickle
import socket
import struct
from typing import Any, Callable

log = logging.getLogger("novaedge.channel")

Handler = Callable[[dict[str, Any]], None]
_LEN = struct.Struct("!I")


class Channel:
    """One end of a control channel."""

    def send(self, msg: dict[str, Any]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class InlineChannel(Channel):
    """Single-process mode: delivery is a direct call on the next loop turn."""

    def __init__(self) -> None:
        self.peer: InlineChannel | None = None
        self.handler: Handler | None = None

    @classmethod
    def pair(cls) -> tuple["InlineChannel", "InlineChannel"]:
        a, b = cls(), cls()
        a.peer, b.peer = b, a
        return a, b

    def send(self, msg: dict[str, Any]) -> None:
        peer = self.peer
        if peer is not None and peer.handler is not None:
            asyncio.get_running_loop().call_soon(peer.handler, msg)


class SocketChannel(Channel):
    """Multi-process mode: framed pickles over one end of a socketpair."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self.closed = asyncio.Event()

    async def start(self, handler: Handler) -> None:
        reader, self.writer = await asyncio.open_connection(sock=self.sock)
        self._task = asyncio.get_running_loop().create_task(self._read(reader, handler))

    async def _read(self, reader: asyncio.StreamReader, handler: Handler) -> None:
        try:
            while True:
                head = await reader.readexactly(_LEN.size)
                (n,) = _LEN.unpack(head)
                msg = pickle.loads(await reader.readexactly(n))
                try:
                    handler(msg)
                except Exception:
                    log.exception("control message handler failed")
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.closed.set()

    def send(self, msg: dict[str, Any]) -> None:
        w = self.writer
        if w is None or w.is_closing():
            return
        data = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
        w.write(_LEN.pack(len(data)) + data)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self.writer is not None:
            self.writer.close()
