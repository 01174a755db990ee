"""The status page file: self-contained (no external assets) and wired to the API."""
from __future__ import annotations

import importlib.resources
import re

PAGE = importlib.resources.files("proxy.observe").joinpath("static/status.html").read_text()


def test_no_external_assets() -> None:
    # no src/href to anything but fragments, no @import, no url() outside data:
    assert not re.search(r"""(?:src|href)\s*=\s*["'](?!#)""", PAGE)
    assert "@import" not in PAGE
    assert not re.search(r"url\((?!data:)", PAGE)
    # the only absolute URL in code is the SVG namespace (not fetched)
    urls = set(re.findall(r"https?://[^\s'\"<>)]+", PAGE.split("-->", 1)[1]))
    assert urls == {"http://www.w3.org/2000/svg"}


def test_polls_the_overview_every_two_seconds() -> None:
    assert "fetch('/api/overview'" in PAGE
    assert "const POLL_MS = 2000;" in PAGE


def test_api_strings_never_become_html() -> None:
    # every dynamic string goes through textContent; innerHTML would let a mitigation key inject markup
    assert "innerHTML" not in PAGE and "insertAdjacentHTML" not in PAGE and "document.write" not in PAGE
