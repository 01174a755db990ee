"""AccessLog: line format, bounded buffer, writer thread, reopen for rotation."""
from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from observe_fixtures import Geo, make_ctx as build_ctx

from proxy.observe.accesslog import MAX_PATH_CHARS, AccessLog


def fixed_log(path: str = os.devnull, **kw) -> AccessLog:
    # wall = monotonic + 1_700_000_000: a request ending at mono 100.02 ends at ...100.020 UTC
    return AccessLog(path, clock=lambda: 1_700_000_000.0, mono=lambda: 0.0, **kw)


def test_line_has_every_field(make_ctx) -> None:
    log = fixed_log()
    ctx = make_ctx(status=201, bytes_in=12, bytes_out=345, verdicts=["ratelimit:per-ip:shadow"], retries=1,
                   geo=Geo("IE", "EU"))
    rec = json.loads(log.format(ctx))
    assert rec == {
        "time": "2023-11-14T22:15:00.020Z", "id": "req-1", "client": "198.51.100.7", "country": "IE",
        "method": "GET", "host": "api.example.com", "path": "/api/items/1", "status": 201,
        "bytes_in": 12, "bytes_out": 345, "total_ms": 20.0, "upstream_ms": 14.0, "route": "api",
        "region": "eu-west-1", "backend": "eu-west-1/10.0.0.1:80", "verdicts": ["ratelimit:per-ip:shadow"],
        "error": None, "retries": 1}
    assert log.format(ctx).endswith(b"}\n") and log.format(ctx).count(b"\n") == 1


def test_no_query_string_in_the_log(make_ctx) -> None:
    assert b"token=abc" not in fixed_log().format(make_ctx())


def test_missing_parts_are_null(make_ctx) -> None:
    rec = json.loads(fixed_log().format(make_ctx(route=None, region=None, backend=None, geo=None, upstream=None,
                                                 status=0, error="client-gone")))
    assert rec["route"] is None and rec["country"] is None and rec["upstream_ms"] is None
    assert rec["status"] == 0 and rec["error"] == "client-gone"


def test_undecodable_bytes_and_long_paths_still_make_one_line(make_ctx) -> None:
    log = fixed_log()
    bad = b"/caf\xe9\"\n".decode("utf-8", "surrogateescape")   # a lone surrogate, a quote, a newline
    line = log.format(make_ctx(path=bad))
    assert line.count(b"\n") == 1
    assert json.loads(line)["path"] == bad
    long = json.loads(log.format(make_ctx(path="/" + "a" * 10_000)))["path"]
    assert len(long) == MAX_PATH_CHARS


def test_buffer_is_bounded_and_drops_are_counted(make_ctx) -> None:
    log = fixed_log(max_pending=4096, flush_bytes=1024)   # writer never started: nothing drains
    ctx = make_ctx()
    for _ in range(100):
        log.log(ctx)
    log.flush()
    assert log.dropped > 0
    assert log.lines + log.dropped == 100                  # every line written or counted
    assert log.pending <= 4096 + 1024                     # memory stays bounded
    before = log.dropped
    log.log(ctx)
    log.flush()
    assert log.dropped == before + 1


def test_writer_writes_in_order_and_reopens_after_rotation(tmp_path: Path, make_ctx) -> None:
    path = tmp_path / "access.log"
    log = fixed_log(str(path), flush_bytes=1 << 30)
    log.start_thread_only()
    try:
        for i in range(5):
            log.log(make_ctx(request_id=f"a{i}"))
        log.flush()
        rotated = tmp_path / "access.log.1"
        _wait_for(lambda: path.exists() and path.read_bytes().count(b"\n") == 5)
        path.rename(rotated)           # logrotate: rename, then signal
        log.reopen()
        for i in range(3):
            log.log(make_ctx(request_id=f"b{i}"))
    finally:
        log.close_sync()
    old = [json.loads(x)["id"] for x in rotated.read_text().splitlines()]
    new = [json.loads(x)["id"] for x in path.read_text().splitlines()]
    assert old == [f"a{i}" for i in range(5)]
    assert new == ["b0", "b1", "b2"]
    assert log.pending == 0


def test_write_errors_do_not_kill_the_writer(tmp_path: Path, make_ctx) -> None:
    log = fixed_log(str(tmp_path / "no-such-dir" / "access.log"))
    log.start_thread_only()
    log.log(make_ctx())
    log.flush()
    _wait_for(lambda: log.pending == 0)     # counted as done even though it failed
    assert log._writer.errors >= 1 and log._writer.is_alive()
    log.close_sync()


async def test_periodic_flush_on_the_loop(tmp_path: Path, make_ctx) -> None:
    path = tmp_path / "a.log"
    log = AccessLog(str(path), flush_interval=0.01)
    log.start()
    log.log(make_ctx())
    for _ in range(200):   # no flush() call: only the loop timer can write this line
        if path.exists() and path.read_bytes():
            break
        await asyncio.sleep(0.01)
    await log.close()
    assert path.read_bytes().count(b"\n") == 1


def _wait_for(cond, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.005)


@settings(max_examples=200, deadline=None)
@given(path=st.text(), host=st.text(max_size=50), error=st.none() | st.text(max_size=20),
       verdicts=st.lists(st.text(max_size=20), max_size=3))
def test_any_request_strings_make_exactly_one_json_line(path: str, host: str, error: str | None,
                                                        verdicts: list[str]) -> None:
    # st.text() includes lone surrogates, quotes, backslashes, newlines, NULs
    line = fixed_log().format(build_ctx(path=path, host=host, error=error, verdicts=verdicts))
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    rec = json.loads(line)
    assert rec["path"] == path[:MAX_PATH_CHARS] and rec["host"] == host
    assert rec["error"] == error and rec["verdicts"] == verdicts


def test_lines_past_a_buffer_and_longer_than_one_keep_their_order(tmp_path: Path, make_ctx) -> None:
    # flush_bytes beyond the buffer's capacity: lines that do not fit hand the
    # buffer over; a line longer than a whole buffer goes to the writer alone
    path = tmp_path / "access.log"
    log = fixed_log(str(path), flush_bytes=1 << 30)
    log.start_thread_only()
    huge = "h" * (log._cap + 10)
    try:
        ids = []
        for i in range(log._cap // 300 + 50):
            rid = f"r{i}"
            log.log(make_ctx(request_id=rid, host=huge if i in (3, 500) else "api.example.com"))
            ids.append(rid)
        log.flush()
    finally:
        log.close_sync()
    recs = [json.loads(x) for x in path.read_bytes().splitlines()]
    assert [r["id"] for r in recs] == ids
    assert recs[3]["host"] == huge and recs[4]["host"] == "api.example.com"
    assert log.lines == len(ids) and log.dropped == 0 and log.pending == 0


def test_buffers_are_reused_once_written(tmp_path: Path, make_ctx) -> None:
    log = fixed_log(str(tmp_path / "a.log"))
    log.start_thread_only()
    try:
        first = log._buf
        log.log(make_ctx())
        log.flush()
        _wait_for(lambda: log.pending == 0)
        log.log(make_ctx())
        log.flush()                       # takes the written buffer back
        assert log._buf is first
    finally:
        log.close_sync()
