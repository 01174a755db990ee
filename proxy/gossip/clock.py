"""The clock and timer interface the gossip node runs on.

Two implementations: ``AsyncioScheduler`` (the event loop's monotonic clock and
``call_at``) and ``memnet.EventScheduler`` (a fake, event-driven clock that
jumps from one due event to the next, so simulated minutes take milliseconds).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Scheduler(Protocol):
    def time(self) -> float:
        """Monotonic seconds: every timeout and interval is measured on this."""
        ...

    def wall(self) -> float:
        """Seconds since the epoch: only for message timestamps (freshness checks)."""
        ...

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle: ...


class AsyncioScheduler:
    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.loop = loop or asyncio.get_running_loop()

    def time(self) -> float:
        return self.loop.time()

    def wall(self) -> float:
        return time.time()

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        return self.loop.call_at(when, callback)
