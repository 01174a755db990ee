"""The locust scenarios run headless against the demo, bounded in users and time,
and report no failures."""
from __future__ import annotations

import asyncio
import csv
import importlib.util
import sys
from pathlib import Path

import pytest

from tests.support.proc import REPO, free_port, node_process

# Never import locust here: it monkey-patches the process with gevent.
if importlib.util.find_spec("locust") is None:
    pytest.skip("locust not installed (pip install -e '.[test]')", allow_module_level=True)


async def test_locust_scenarios_against_the_demo(tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    async with node_process(["demo", "--listen", f"127.0.0.1:{port}", "--admin", f"127.0.0.1:{admin}"],
                            tmp_path, port):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "locust", "-f", str(REPO / "loadtests" / "locustfile.py"),
            "--host", f"http://127.0.0.1:{port}", "--headless", "-u", "10", "-r", "10", "-t", "4s",
            "--csv", str(tmp_path / "run"), "--only-summary",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=REPO)
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
    with open(tmp_path / "run_stats.csv") as f:
        rows = list(csv.DictReader(f))
    total = next(r for r in rows if r["Name"] == "Aggregated")
    assert int(total["Request Count"]) > 20, out.decode()[-2000:]
    assert int(total["Failure Count"]) == 0, out.decode()[-2000:]
