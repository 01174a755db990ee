"""JSON access log: one line per request, written off the event loop.

`log(ctx)` formats the line (orjson) and copies it into a bytearray; every
`flush_interval` (100 ms) or when `flush_bytes` (256 KiB) are full, it is
handed to one writer thread, which writes it and hands it back for reuse.
Why a reused bytearray, not a list of line objects: a batch of ~700 live
lines of ~1 KiB malloc'd each (orjson's output) made glibc grow the heap and
trim it again after every batch, and on a VM every page fault of the regrowth
costs microseconds: 2-3 us a line, more than formatting it. Copied out at
once, each line's memory is reused by the next one. One thread, not
run_in_executor: batches must stay in order and a busy default executor
must not delay the log. The loop never waits for the disk: when the writer
still has more than `max_pending` bytes to write, a new batch is dropped and
its lines counted in `dropped` (exported as
novaedge_access_log_dropped_lines_total).

Rotation: rename the file, then call `reopen()` (the node calls it on
SIGUSR1); lines already queued go to the old file, later ones to the new.

Line fields: time (UTC, ms, of the request's end), id, client, country, method, host, path (no
query: it often carries tokens), status, bytes_in, bytes_out, total_ms,
upstream_ms (to the upstream's response head; null when no upstream
answered), route, region, backend, verdicts, error, retries.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import queue
from collections import deque
import threading
import time
from collections.abc import Callable
from math import floor, trunc
from typing import IO, TYPE_CHECKING, Any

try:
    import orjson
except ImportError:  # pragma: no cover - orjson is a dependency, json is the fallback
    orjson = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from proxy.context import RequestContext

log = logging.getLogger("novaedge.accesslog")

MAX_PATH_CHARS = 2048
_MILLIS = tuple(f".{ms:03d}Z" for ms in range(1000)) + (".999Z",)
# the line's keys, in order
LINE_FIELDS = ("time", "id", "client", "country", "method", "host", "path", "status", "bytes_in",
               "bytes_out", "total_ms", "upstream_ms", "route", "region", "backend", "verdicts",
               "error", "retries")
_REOPEN = object()
_STOP = object()


def _json_line(rec: dict[str, Any]) -> bytes:
    # ensure_ascii keeps lone surrogates (undecodable request bytes) writable
    return json.dumps(rec, ensure_ascii=True, separators=(",", ":")).encode() + b"\n"


if orjson is not None:
    _orjson_dumps = orjson.dumps
    _OPT = orjson.OPT_APPEND_NEWLINE
else:  # pragma: no cover
    _OPT = 0

    def _orjson_dumps(rec: dict[str, Any], option: int = 0) -> bytes:
        return _json_line(rec)


class _Writer(threading.Thread):
    """Writes handed-over batches in order; owns the file object."""

    def __init__(self, path: str) -> None:
        super().__init__(name="novaedge-accesslog", daemon=True)
        self.path = path
        self.q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.spare: deque[bytearray] = deque()   # written batches' buffers, for the loop to refill
        self.written = 0        # bytes done (written or failed); only this thread writes it
        self.errors = 0
        self._f: IO[bytes] | None = None

    def _open(self) -> IO[bytes]:
        if self.path == "-":
            return open(1, "wb", closefd=False)  # fd 1 itself, whatever wraps sys.stdout
        return open(self.path, "ab")

    def run(self) -> None:
        try:
            self._f = self._open()
        except OSError:
            log.exception("access log: cannot open %s", self.path)
        while True:
            item = self.q.get()
            if item is _STOP:
                break
            if item is _REOPEN:
                self._reopen()
                continue
            buf, nbytes = item
            try:
                if self._f is None:
                    self._f = self._open()
                with memoryview(buf) as whole, whole[:nbytes] as data:
                    self._f.write(data)
                self._f.flush()
            except OSError:
                self.errors += 1
                if self.errors == 1 or self.errors % 1000 == 0:
                    log.exception("access log: write to %s failed (%d times)", self.path, self.errors)
            if type(buf) is bytearray:
                self.spare.append(buf)   # back to the loop for reuse (deque.append is atomic)
            self.written += nbytes
        if self._f is not None:
            self._f.close()

    def _reopen(self) -> None:
        if self.path == "-":
            return
        try:
            new = open(self.path, "ab")
        except OSError:
            log.exception("access log: reopen of %s failed; keeping the old file", self.path)
            return
        if self._f is not None:
            self._f.close()
        self._f = new


class AccessLog:
    """Formats and buffers access-log lines; see the module docstring."""

    # The per-line state as slots: finish's C version reads and writes them by
    # offset (no attribute look-up a line); the rest lives in __dict__.
    __slots__ = ("_buf", "_view", "_buf_bytes", "_buf_lines", "_wall_offset", "_sec", "_sec_text",
                 "_rec", "_rec_short", "__dict__")

    def __init__(self, path: str = "-", *, max_pending: int = 4 << 20, flush_bytes: int = 256 * 1024,
                 flush_interval: float = 0.1, clock: Callable[[], float] = time.time,
                 mono: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.max_pending = max_pending
        self.flush_bytes = flush_bytes
        self.flush_interval = flush_interval
        self.dropped = 0
        self.lines = 0
        self._clock = clock
        self._mono = mono
        self._wall_offset = clock() - mono()   # refreshed on every flush (NTP steps)
        # Lines go into _buf[:_buf_bytes] through _view; the rest of _buf is old bytes.
        # Fixed capacity, flush_bytes (at most 1 MiB), reused: a memoryview copy is
        # ~80 ns cheaper than growing a bytearray; a line that does not fit takes
        # the slow path (_overflow), which flushes.
        self._cap = min(flush_bytes, 1 << 20)
        self._buf = bytearray(self._cap)
        self._view = memoryview(self._buf)
        self._buf_bytes = 0
        self._buf_lines = 0
        self._handed = 0           # bytes given to the writer; only the loop writes it
        self._writer = _Writer(path)
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sec = self._prev_sec = -1
        self._sec_text = self._prev_text = ""
        self._rec: dict[str, Any] = dict.fromkeys(LINE_FIELDS)
        # finish.observe_and_log's: the fields up to "route", which holds the rest as JSON text
        self._rec_short: dict[str, Any] = dict.fromkeys(LINE_FIELDS[:LINE_FIELDS.index("route") + 1])

    # -- formatting (pure) ---------------------------------------------------

    def _time_text(self, now: float) -> str:
        """The line time of wall time `now`; on the hot path only its per-second
        prefix is made here (on a change of second), the rest inline."""
        sec = floor(now)
        if sec != self._sec:
            # strftime is ~1.5 us: once a second, not per line. The previous
            # second is kept too: lines that end out of order around a second
            # boundary swap the two instead of formatting each time.
            if sec == self._prev_sec:
                text = self._prev_text
            else:
                text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
            self._prev_sec, self._prev_text = self._sec, self._sec_text
            self._sec, self._sec_text = sec, text
        # a table lookup and one concat: half the cost of an f-string with :03d
        # +1e-4 ms: 100.020 stored as 100.0199999 still prints .020 (truncating, as strftime)
        return self._sec_text + _MILLIS[trunc((now - sec) * 1000 + 1e-4)]

    def format(self, ctx: RequestContext) -> bytes:
        """The JSON line of a finished request (finish.observe_and_log inlines
        this; keep the two in step, tests/unit/observe checks they agree)."""
        geo = ctx.geo
        route = ctx.route
        start = ctx.start
        end = ctx.end
        up_at = ctx.upstream_headers_at
        # The line's time is the request's end on the wall clock: no clock call per
        # line, and the per-second prefix is cached (strftime is ~1.5 us).
        # math.floor/trunc rather than int(): ~30 ns less a call (int() goes through
        # the type call), the same values (trunc is int()'s rounding; now > 0).
        now = (end or start) + self._wall_offset
        sec = floor(now)
        if sec != self._sec:
            self._time_text(now)
        # One dict reused for every line, its values replaced: ~0.3 us cheaper
        # than building an 18-key dict per line. Key order is the line's order.
        rec = self._rec
        rec["time"] = self._sec_text + _MILLIS[trunc((now - sec) * 1000 + 1e-4)]
        rec["id"] = ctx.request_id
        rec["client"] = ctx.client_ip
        rec["country"] = geo.country if geo is not None else None
        rec["method"] = ctx.method
        rec["host"] = ctx.host
        rec["path"] = ctx.path[:MAX_PATH_CHARS]   # a full-length slice is the same object: free
        rec["status"] = ctx.status
        rec["bytes_in"] = ctx.bytes_in
        rec["bytes_out"] = ctx.bytes_out
        # trunc(us + .5) / 1000: ms rounded to 3 decimals at a third of round(x, 3)'s cost
        rec["total_ms"] = trunc((end - start) * 1e6 + 0.5) / 1000 if end else None
        rec["upstream_ms"] = trunc((up_at - ctx.upstream_start) * 1e6 + 0.5) / 1000 if up_at else None
        rec["route"] = route.name if route is not None else None
        rec["region"] = ctx.region
        rec["backend"] = ctx.backend
        rec["verdicts"] = ctx.verdicts
        rec["error"] = ctx.error
        rec["retries"] = ctx.retries
        try:
            return _orjson_dumps(rec, option=_OPT)
        except TypeError:  # orjson refuses lone surrogates (undecodable request bytes)
            return _json_line(rec)

    # -- hot path ----------------------------------------------------------

    @property
    def pending(self) -> int:
        """Bytes buffered here plus bytes the writer has not finished."""
        return self._buf_bytes + self._handed - self._writer.written

    def log(self, ctx: RequestContext) -> None:
        # Per line: format, copy, add. The bound is enforced per batch in flush():
        # checking it per line cost ~0.3 us (three attribute loads across objects).
        # The buffer holds flush_bytes: a line that does not fit raises (no cost
        # when none does) and _overflow flushes, so no size check per line.
        line = self.format(ctx)
        pos = self._buf_bytes
        n = pos + len(line)
        try:
            self._view[pos:n] = line
        except ValueError:   # past the buffer's end: the slice came out shorter than the line
            self._overflow(line)
            return
        self._buf_bytes = n
        self._buf_lines += 1

    def _overflow(self, line: bytes) -> None:
        """The line does not fit in the buffer: hand the buffer over, then
        start the next one with it (or, longer than a buffer, send it alone)."""
        self.flush()
        n = len(line)
        if n <= self._cap:
            self._view[:n] = line
            self._buf_bytes = n
            self._buf_lines = 1
        else:
            self._hand(line, n, 1)

    def flush(self) -> None:
        """Hand the buffered lines to the writer thread (never blocks).

        If the writer still has more than `max_pending` bytes to write, the
        batch is dropped and its lines counted in `dropped`: memory stays
        under max_pending + flush_bytes and the loop never waits.
        """
        self._wall_offset = self._clock() - self._mono()
        nbytes = self._buf_bytes
        if not nbytes:
            return
        nlines = self._buf_lines
        self._buf_bytes = self._buf_lines = 0
        if self._hand(self._buf, nbytes, nlines):
            spare = self._writer.spare
            self._buf = spare.pop() if spare else bytearray(self._cap)
            self._view = memoryview(self._buf)
        # else dropped: the buffer is refilled as it is

    def _hand(self, data: bytearray | bytes, nbytes: int, nlines: int) -> bool:
        """Give data[:nbytes] to the writer; False (and counted) if over max_pending."""
        if self._handed - self._writer.written + nbytes > self.max_pending:
            self.dropped += nlines
            return False
        self.lines += nlines
        self._writer.q.put((data, nbytes))
        self._handed += nbytes
        return True

    def reopen(self) -> None:
        """Reopen the file after rotation (call from the SIGUSR1 handler)."""
        self.flush()
        self._writer.q.put(_REOPEN)

    # -- lifecycle -----------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Start the writer thread and the periodic flush on `loop` (default: running loop)."""
        self._loop = loop or asyncio.get_running_loop()
        self._writer.start()
        self._timer = self._loop.call_later(self.flush_interval, self._tick)

    def _tick(self) -> None:
        self.flush()
        assert self._loop is not None
        self._timer = self._loop.call_later(self.flush_interval, self._tick)

    def _stop_writer(self) -> bool:
        """Stop the flush timer, hand over what is buffered, ask the writer to
        stop; True if there is a writer thread to join."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.flush()
        if not self._writer.is_alive():
            return False
        self._writer.q.put(_STOP)
        return True

    async def close(self) -> None:
        """Write out what is buffered and stop the writer."""
        if self._stop_writer():
            await asyncio.get_running_loop().run_in_executor(None, self._writer.join)

    def close_sync(self, timeout: float = 5.0) -> None:
        """close() for code without a loop (benchmarks, CLI one-shots)."""
        if self._stop_writer():
            self._writer.join(timeout)

    def start_thread_only(self) -> None:
        """Start the writer without a loop timer; the caller calls flush()."""
        self._writer.start()


def open_access_log(path: str, buffer_kib: int, flush_ms: int) -> AccessLog:
    """An AccessLog from AccessLogConfig values; call .start() inside the loop."""
    if path != "-":
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return AccessLog(path, max_pending=buffer_kib * 1024, flush_bytes=min(256, buffer_kib // 4) * 1024,
                     flush_interval=flush_ms / 1000)
