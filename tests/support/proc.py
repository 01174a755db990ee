"""Run `novaedge` as a real process (for signals, workers, memory)."""
from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, AsyncIterator

import yaml

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    end = time.monotonic() + timeout
    while True:
        try:
            _r, w = await asyncio.open_connection(host, port)
            w.close()
            return
        except OSError:
            if time.monotonic() > end:
                raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")
            await asyncio.sleep(0.05)


class NodeProcess:
    def __init__(self, proc: subprocess.Popen[bytes], log_path: Path) -> None:
        self.proc = proc
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def write_config(path: Path, data: dict[str, Any]) -> Path:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    os.replace(tmp, path)
    return path


@contextlib.asynccontextmanager
async def node_process(args: list[str], tmp_path: Path, wait_for: int | None,
                       env: dict[str, str] | None = None) -> AsyncIterator[NodeProcess]:
    log_path = tmp_path / f"node-{len(list(tmp_path.glob('node-*.log')))}.log"
    with open(log_path, "wb") as logf:
        proc = subprocess.Popen([sys.executable, "-m", "proxy", *args], cwd=REPO,
                                stdout=logf, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})})
    node = NodeProcess(proc, log_path)
    try:
        if wait_for is not None:
            await wait_port(wait_for)
        yield node
    finally:
        node.stop()
