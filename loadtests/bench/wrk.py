"""The load: one wrk run, pinned, with a Lua script that sets the header set and
prints the result as one JSON line (latency percentiles in exact microseconds,
not wrk's rounded "1.23ms" text).
"""
from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

# A desktop Chrome navigation, as a browser sends it: 13 headers besides Host
# (wrk adds Host), Cookie about 200 bytes.
BROWSER_HEADERS: list[tuple[str, str]] = [
    ("User-Agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
                   "Chrome/124.0.0.0 Safari/537.36"),
    ("Accept", "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,"
               "image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7"),
    ("Accept-Language", "en-US,en;q=0.9,fr;q=0.8,de;q=0.7"),
    ("Accept-Encoding", "gzip, deflate, br"),
    ("Cookie", "_ga=GA1.2.1234567890.1700000000; _gid=GA1.2.987654321.1700000000; "
               "session=eyJ1aWQiOjQyLCJyb2xlIjoidXNlciIsImV4cCI6MTcwMDAwMDAwMH0.c2lnbmF0dXJl; "
               "theme=dark; consent=analytics%3Dyes%26ads%3Dno; lang=en"),
    ("Referer", "https://www.example.com/products/category/shoes?page=2&sort=price"),
    ("Sec-Fetch-Dest", "document"),
    ("Sec-Fetch-Mode", "navigate"),
    ("Sec-Fetch-Site", "same-origin"),
    ("Sec-Fetch-User", "?1"),
    ("Cache-Control", "max-age=0"),
    ("Upgrade-Insecure-Requests", "1"),
    ("DNT", "1"),
]

HEADER_SETS = {"minimal": [], "browser": BROWSER_HEADERS}

_DONE = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests":%.0f,"duration_us":%.0f,"bytes":%.0f,' ..
    '"p50_us":%.0f,"p90_us":%.0f,"p99_us":%.0f,"max_us":%.0f,"mean_us":%.1f,' ..
    '"err_connect":%.0f,"err_read":%.0f,"err_write":%.0f,"err_status":%.0f,"err_timeout":%.0f}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def _lua_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


# Paced load: wrk calls delay() when a connection is ready to send its next
# request (after its previous response, and before its first) and sends once
# the returned milliseconds have passed; the latency it records starts at the
# send (c->start is set after the delay), so think time is not in p50/p99.
# delay() has no connection argument, so the script keeps one send schedule for
# the thread (we run -t1): slot k at t0 + k/RATE, each call takes the next slot
# and waits until it. With C connections each one waits about C/RATE s between
# requests, and the rate is RATE whatever the proxy's latency (a fixed think
# time would give C/(think + latency), i.e. a slower proxy would get less load).
# A slot already past (the proxy fell behind) is sent at once: the schedule is
# kept, so a stall is followed by catch-up, as an open-loop client would; a
# proxy that cannot keep up runs saturated and its achieved rate shows it.
# wrk truncates the delay to whole ms, so the script rounds: a request goes out
# within 0.5 ms of its slot, the average rate is exact. wrk's (ae) timers have
# ms resolution, so the sends come in bursts of about RATE/1000 per ms tick. The clock is LuaJIT's
# ffi clock_gettime(CLOCK_MONOTONIC); without ffi (a wrk built on plain Lua)
# it falls back to a fixed think time of C/RATE s per connection.
_PACED = r"""
local interval_ms = 1000 / %(rate)r
local fallback_ms = math.floor(%(conns)d * interval_ms + 0.5)
local ok, ffi = pcall(require, "ffi")
local now_ms = nil
if ok then
  ffi.cdef[[
    typedef struct { long tv_sec; long tv_nsec; } bench_timespec_t;
    int clock_gettime(int clk_id, bench_timespec_t *tp);
  ]]
  local ts = ffi.new("bench_timespec_t")
  now_ms = function()
    ffi.C.clock_gettime(1, ts)   -- CLOCK_MONOTONIC
    return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
  end
end
local slot = nil
delay = function()
  if now_ms == nil then return fallback_ms end
  local now = now_ms()
  slot = slot and slot + interval_ms or now
  local d = slot - now
  if d <= 0 then return 0 end
  return math.floor(d + 0.5)
end
"""


def write_script(path: Path, headers: list[tuple[str, str]], rate: float | None = None,
                 conns: int = 64) -> Path:
    """The header set and the BENCHJSON line; with ``rate`` (requests/s for the
    whole run, one wrk thread) also the paced ``delay()`` hook above, ``conns``
    being the connections (only for the fixed-think-time fallback)."""
    lines = [f"wrk.headers[{_lua_str(k)}] = {_lua_str(v)}" for k, v in headers]
    paced = _PACED % {"rate": float(rate), "conns": conns} if rate else ""
    path.write_text("\n".join(lines) + "\n" + paced + _DONE)
    return path


def request_head_bytes(headers: list[tuple[str, str]], path: str, port: int) -> int:
    """Size of the request head wrk sends (request line, Host, the set, CRLFs)."""
    head = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    return len(head.encode())


@dataclass(frozen=True)
class WrkResult:
    requests: int
    duration_s: float
    bytes: int
    p50_us: float
    p90_us: float
    p99_us: float
    max_us: float
    mean_us: float
    errors: dict[str, int]

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


def parse(stdout: str) -> WrkResult:
    for line in stdout.splitlines():
        if line.startswith("BENCHJSON "):
            d = json.loads(line[len("BENCHJSON "):])
            errors = {k[4:]: int(v) for k, v in d.items() if k.startswith("err_")}
            return WrkResult(int(d["requests"]), d["duration_us"] / 1e6, int(d["bytes"]),
                             d["p50_us"], d["p90_us"], d["p99_us"], d["max_us"], d["mean_us"], errors)
    raise ValueError("no BENCHJSON line in wrk output:\n" + stdout[-2000:])


def wrk_argv(url: str, conns: int, duration_s: float, script: Path, cpu: int) -> list[str]:
    return ["taskset", "-c", str(cpu), "wrk", "-t1", f"-c{conns}", f"-d{duration_s:g}s",
            "--latency", "--timeout", "5s", "-s", str(script), url]


def run(url: str, conns: int, duration_s: float, script: Path, cpu: int) -> WrkResult:
    out = subprocess.run(wrk_argv(url, conns, duration_s, script, cpu), capture_output=True,
                         text=True, timeout=duration_s + 30, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"wrk exited {out.returncode}: {out.stderr.strip()[-1000:]}")
    return parse(out.stdout)


def start(url: str, conns: int, duration_s: float, script: Path, cpu: int) -> "subprocess.Popen[str]":
    """wrk in the background (the profiler samples meanwhile); `finish` reads it."""
    return subprocess.Popen(wrk_argv(url, conns, duration_s, script, cpu), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc: "subprocess.Popen[str]", timeout: float) -> WrkResult:
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk exited {proc.returncode}: {err.strip()[-1000:]}")
    return parse(out)
