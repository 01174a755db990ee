"""Where a proxy's CPU goes under load, as text the lead can act on.

- `pyspy`: py-spy samples the NovaEdge process (``record -f raw -F``: one
  collapsed stack per line, frames aggregated by function) while wrk runs;
  `summarize` turns that into self and inclusive shares per function and self
  shares per source file.
- `strace_counts`: ``strace -c`` attached to a proxy's processes while wrk
  runs, so syscalls per request can be compared between nginx and NovaEdge
  (strace slows the proxy a lot; the counts per request stay right).
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from . import servers

_FRAME = re.compile(r"^(?P<fn>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
_PREFIXES = sorted({p for p in (sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"],
                                sysconfig.get_paths()["stdlib"], str(servers.REPO)) if p},
                   key=len, reverse=True)


def _short(path: str) -> str:
    for p in _PREFIXES:
        if path.startswith(p + os.sep):
            return path[len(p) + 1:]
    return path


def frame_name(frame: str) -> tuple[str, str]:
    """``'fn (file:line)'`` -> (``'fn (short/file:line)'``, ``'short/file'``)."""
    m = _FRAME.match(frame)
    if not m:
        return frame, frame
    f = _short(m["file"])
    where = f"{f}:{m['line']}" if m["line"] else f
    return f"{m['fn']} ({where})", f


@dataclass
class Profile:
    samples: int = 0
    self_fn: Counter[str] = field(default_factory=Counter)
    total_fn: Counter[str] = field(default_factory=Counter)
    self_file: Counter[str] = field(default_factory=Counter)

    def top(self, which: str, n: int) -> list[tuple[str, float]]:
        c = {"self": self.self_fn, "total": self.total_fn, "file": self.self_file}[which]
        return [(k, v / self.samples) for k, v in c.most_common(n)] if self.samples else []


def summarize(raw: str) -> Profile:
    prof = Profile()
    for line in raw.splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        n = int(count_s)
        frames = [frame_name(f) for f in stack.split(";") if not f.startswith("process ")
                  and not f.startswith("thread ")]
        if not frames:
            continue
        prof.samples += n
        leaf, leaf_file = frames[-1]
        prof.self_fn[leaf] += n
        prof.self_file[leaf_file] += n
        for name in {fn for fn, _ in frames}:
            prof.total_fn[name] += n
    return prof


def pyspy_available() -> bool:
    return shutil.which("py-spy") is not None


def pyspy(pid: int, seconds: float, out: Path, cpu: int, native: bool, rate: int = 200) -> tuple[Profile, str]:
    """Sample ``pid`` for ``seconds``; returns the summary and py-spy's own messages."""
    argv = ["taskset", "-c", str(cpu), "py-spy", "record", "-p", str(pid), "-d", f"{seconds:g}",
            "-r", str(rate), "-f", "raw", "-F", "-o", str(out)]
    if native:
        argv.append("--native")
    res = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    msg = (res.stdout + res.stderr).strip()
    if res.returncode != 0 or not out.exists():
        raise RuntimeError(f"py-spy exited {res.returncode}: {msg[-1500:]}")
    return summarize(out.read_text()), msg


def pyspy_svg(pid: int, seconds: float, out: Path, cpu: int, rate: int = 200) -> None:
    subprocess.run(["taskset", "-c", str(cpu), "py-spy", "record", "-p", str(pid), "-d", f"{seconds:g}",
                    "-r", str(rate), "-F", "-o", str(out)],
                   capture_output=True, text=True, timeout=seconds + 60, check=False)


def strace_available() -> bool:
    return shutil.which("strace") is not None


class StraceCount:
    """``strace -c`` on a process tree: `start`, run the load, `stop` -> calls per syscall."""

    def __init__(self, root_pid: int, out: Path, cpu: int) -> None:
        self.out = out
        pids = servers._descendants(root_pid)   # nginx: master and the existing worker
        argv = ["taskset", "-c", str(cpu), "strace", "-c", "-f", "-q", "-o", str(out)]
        for p in pids:
            argv += ["-p", str(p)]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(1.0)   # attaching takes a moment; count only what follows

    def stop(self) -> dict[str, int]:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        return parse_strace_c(self.out.read_text() if self.out.exists() else "")


def parse_strace_c(text: str) -> dict[str, int]:
    calls: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 5 or not parts[0].replace(".", "").isdigit() or parts[-1] == "total":
            continue
        if parts[3].isdigit():
            calls[parts[-1]] = int(parts[3])
    return calls


def python_info() -> str:
    return f"Python {sys.version.split()[0]}"
