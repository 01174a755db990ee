"""Where a proxy's CPU goes under load, as text the lead can act on.

- `pyspy`: py-spy samples the NovaEdge process (``record -f raw -F``: one
  collapsed stack per line, frames aggregated by function) while wrk runs;
  `summarize` turns that into CPU microseconds per request, self and
  inclusive per function and self per source file, given the measured
  utime and stime per request.
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
from collections import defaultdict
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


# Leaf frames that are the kernel's time: libc's syscall wrappers. Their samples
# are scaled to the measured stime, every other sample to the measured utime.
SYSCALLS = frozenset({
    "write", "read", "writev", "readv", "send", "recv", "sendto", "recvfrom", "sendmsg",
    "recvmsg", "epoll_wait", "epoll_pwait", "epoll_ctl", "getsockname", "getpeername",
    "getsockopt", "setsockopt", "connect", "accept", "accept4", "close", "socket", "getpid",
    "shutdown", "syscall", "io_uring_enter", "ioctl", "fcntl",
})


@dataclass
class Profile:
    """Samples as CPU microseconds per request.

    py-spy samples wall-clock stacks: a thread preempted inside a syscall
    still counts as busy, so raw shares overstate the kernel's part on a
    loaded machine. Scaling the syscall-leaf samples to the measured
    stime/request and the rest to utime/request gives each function its CPU.
    """
    samples: int = 0
    kernel_samples: int = 0
    usr_us: float = 0.0
    sys_us: float = 0.0
    self_fn: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    total_fn: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    self_file: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))

    def top(self, which: str, n: int) -> list[tuple[str, float, float]]:
        """(name, us per request, share of usr+sys) for the largest ``n``."""
        c = {"self": self.self_fn, "total": self.total_fn, "file": self.self_file}[which]
        whole = self.usr_us + self.sys_us
        biggest = sorted(c.items(), key=lambda kv: -kv[1])[:n]
        return [(k, v, v / whole if whole else 0.0) for k, v in biggest]


def stacks(raw: str) -> list[tuple[list[tuple[str, str]], int]]:
    """py-spy ``-f raw`` lines -> ([(function, file)], samples), root first."""
    out = []
    for line in raw.splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        frames = [frame_name(f) for f in stack.split(";")
                  if not f.startswith("process ") and not f.startswith("thread ")]
        if frames:
            out.append((frames, int(count_s)))
    return out


def _is_syscall(frame: str) -> bool:
    fn, _, where = frame.partition(" (")
    return fn in SYSCALLS and where.startswith("libc")


def summarize(raw: str, usr_us: float = 1.0, sys_us: float = 0.0) -> Profile:
    """Attribute ``usr_us`` + ``sys_us`` (CPU per request) over the samples.

    With ``sys_us=0`` (or no syscall frames: Python-only stacks) every sample
    weighs the same and the figures are plain shares of ``usr_us``.
    """
    st = stacks(raw)
    prof = Profile(usr_us=usr_us, sys_us=sys_us)
    for frames, n in st:
        prof.samples += n
        if _is_syscall(frames[-1][0]):
            prof.kernel_samples += n
    user_samples = prof.samples - prof.kernel_samples
    if prof.kernel_samples == 0 or sys_us == 0.0:
        w_user = w_kern = (usr_us + sys_us) / prof.samples if prof.samples else 0.0
    else:
        w_user = usr_us / user_samples if user_samples else 0.0
        w_kern = sys_us / prof.kernel_samples
    for frames, n in st:
        leaf, leaf_file = frames[-1]
        w = n * (w_kern if _is_syscall(leaf) else w_user)
        prof.self_fn[leaf] += w
        prof.self_file[leaf_file] += w
        for name in {fn for fn, f in frames if f.endswith(".py")}:   # native loop frames: noise
            prof.total_fn[name] += w
    return prof


def pyspy_available() -> bool:
    return shutil.which("py-spy") is not None


def pyspy(pid: int, seconds: float, out: Path, cpu: int, native: bool, rate: int = 200) -> str:
    """Sample ``pid`` for ``seconds`` into ``out`` (raw collapsed stacks); returns the raw text."""
    argv = ["taskset", "-c", str(cpu), "py-spy", "record", "-p", str(pid), "-d", f"{seconds:g}",
            "-r", str(rate), "-f", "raw", "-F", "-o", str(out)]
    if native:
        argv.append("--native")
    res = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if res.returncode != 0 or not out.exists():
        msg = (res.stdout + res.stderr).strip()
        raise RuntimeError(f"py-spy exited {res.returncode}: {msg[-1500:]}")
    return out.read_text()


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
