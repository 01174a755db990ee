"""The status page in a real headless Chromium against a running admin server.

The admin server serves a FakeNodeView (three regions: one healthy, one
degraded, one down; a 3x3 latency matrix with one pair not measured). The
page's JS must have fetched /api/overview and drawn the heatmap and the
region health; Chromium's --dump-dom after --virtual-time-budget gives the
DOM as the JS left it. Screenshots (light and dark) go to artifacts/.

Needs Debian's `chromium` (/usr/bin/chromium); skipped without it. No
chromedriver or selenium: Chromium's own headless switches are enough.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import struct
from html.parser import HTMLParser
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from proxy.observe.admin import build_admin_app
from proxy.observe.fake import FakeNodeView

pytestmark = pytest.mark.e2e

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
CHROMIUM = next((p for p in (os.environ.get("NOVAEDGE_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"))
                 if p and os.path.exists(p)), None)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--virtual-time-budget=5000", "--window-size=1400,1000"]


class _Dom(HTMLParser):
    """Collects the attributes of every element (the page marks its data with data-*)."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))

    def having(self, attr: str, tag: str | None = None) -> list[dict[str, str | None]]:
        return [a for t, a in self.elements if attr in a and (tag is None or t == tag)]


async def _chromium(tmp: Path, *args: str) -> bytes:
    proc = await asyncio.create_subprocess_exec(
        CHROMIUM, *FLAGS, f"--user-data-dir={tmp}", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, f"chromium exited with {proc.returncode}"
    return out


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not found at /usr/bin/chromium "
                                             "(apt-get install chromium); status page browser test skipped")
async def test_status_page_renders_heatmap_and_region_health(tmp_path: Path) -> None:
    view = FakeNodeView()
    server = TestServer(build_admin_app(view, token=None), host="127.0.0.1")
    await server.start_server()
    url = str(server.make_url("/"))
    try:
        dom_text = (await _chromium(tmp_path / "p1", "--dump-dom", url)).decode()
        ARTIFACTS.mkdir(exist_ok=True)
        shots = {"light": ARTIFACTS / "status-page.png", "dark": ARTIFACTS / "status-page-dark.png"}
        for f in shots.values():
            f.unlink(missing_ok=True)
        await _chromium(tmp_path / "p2", f"--screenshot={shots['light']}", url)
        await _chromium(tmp_path / "p3", "--force-dark-mode", "--blink-settings=preferredColorScheme=0",
                        f"--screenshot={shots['dark']}", url)
    finally:
        await server.close()

    dom = _Dom()
    dom.feed(dom_text)
    body = next(a for t, a in dom.elements if t == "body")
    assert body.get("data-loaded") == "1", "the page's JS never rendered /api/overview"
    assert not body.get("data-error"), body.get("data-error")

    # heatmap: one cell per (from, to) pair, carrying the matrix's numbers
    cells = {(a["data-from"], a["data-to"]): a["data-ms"] for a in dom.having("data-from", "td")}
    matrix = view.latency_matrix()
    assert len(cells) == 9
    for (src, dst), ms in cells.items():
        want = matrix[src][dst]
        assert ms == ("na" if want is None else str(want)), (src, dst)
    assert "background:hsl(" in dom_text               # coloured by latency

    # region health: on the map (SVG groups) and in the backends table
    expected = {"us-east-1": "healthy", "eu-west-1": "degraded", "ap-northeast-1": "down"}
    on_map = {a["data-region"]: a["data-health"] for a in dom.having("data-health", "g")}
    in_table = {a["data-region"]: a["data-health"] for a in dom.having("data-health", "tr")}
    assert on_map == expected
    assert in_table == expected
    states = {a["data-backend"]: a["data-state"] for a in dom.having("data-backend")}
    assert states["eu-west-1/10.1.0.6:8080"] == "ejected" and states["ap-northeast-1/10.2.0.5:8080"] == "down"
    assert {a["data-mitigation"] for a in dom.having("data-mitigation")} == {"m-17", "m-18"}

    for f in shots.values():
        assert f.exists() and f.stat().st_size > 20_000, f
        assert _png_size(f) == (1400, 1000)


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not found at /usr/bin/chromium "
                                             "(apt-get install chromium); status page browser test skipped")
async def test_status_page_of_a_running_node_with_three_regions(tmp_path: Path) -> None:
    """The same page against a real node: `novaedge demo` (three regions, gossip
    measuring the emulated WAN, active health checks)."""
    import aiohttp

    from tests.support.proc import free_port, node_process, wait_port
    port, admin = free_port(), free_port()
    async with node_process(["demo", "--listen", f"127.0.0.1:{port}", "--admin", f"127.0.0.1:{admin}"],
                            tmp_path, port):
        await wait_port(admin)   # the admin API comes up just after the data listener
        async with aiohttp.ClientSession() as s:
            for _ in range(80):   # wait until gossip has measured every pair
                async with s.get(f"http://127.0.0.1:{admin}/api/matrix") as r:
                    rtt = (await r.json())["rtt_ms"]
                if len(rtt) == 3 and all(len(row) == 2 for row in rtt.values()):
                    break
                await asyncio.sleep(0.25)
            for _ in range(20):   # and let a request or two show in the rates
                async with s.get(f"http://127.0.0.1:{port}/hello") as r:
                    await r.read()
        url = f"http://127.0.0.1:{admin}/"
        dom_text = (await _chromium(tmp_path / "p1", "--dump-dom", url)).decode()
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "status-page-demo.png"
        shot.unlink(missing_ok=True)
        await _chromium(tmp_path / "p2", f"--screenshot={shot}", url)

    dom = _Dom()
    dom.feed(dom_text)
    body = next(a for t, a in dom.elements if t == "body")
    assert body.get("data-loaded") == "1", "the page's JS never rendered /api/overview"
    cells = {(a["data-from"], a["data-to"]): a["data-ms"] for a in dom.having("data-from", "td")}
    regions = {"us-east-1", "eu-west-1", "ap-northeast-1"}
    assert {src for src, _dst in cells} == regions and len(cells) == 9
    measured = [float(ms) for (src, dst), ms in cells.items() if src != dst and ms not in (None, "na")]
    assert len(measured) == 6 and all(50 < ms < 260 for ms in measured), cells
    on_map = {a["data-region"]: a["data-health"] for a in dom.having("data-health", "g")}
    assert on_map == {r: "healthy" for r in regions}
    assert shot.exists() and shot.stat().st_size > 20_000
