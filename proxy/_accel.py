"""The optional C parts (setup.py builds them; an install without a C
compiler runs the Python versions, which stay the reference): load one and
set it up, or None when it was not built, its setup fails (a stale build
that no longer fits the Python side: the Python version runs, with a
warning) or NOVAEDGE_PURE_PYTHON=1 asks for the Python versions (to
compare, or to rule the C out). The tests fail a run in which a C part is
missing, so a stale or missing build cannot pass unnoticed."""
from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable
from types import ModuleType
from typing import TypeVar

log = logging.getLogger("novaedge.accel")
T = TypeVar("T")


def attach(name: str, setup: Callable[[ModuleType], T]) -> T | None:
    """setup(module) for the C module `name` (e.g. "proxy._hotpath"), if it is there and wanted."""
    if os.environ.get("NOVAEDGE_PURE_PYTHON") == "1":
        return None
    try:
        module = importlib.import_module(name)
    except ImportError:
        return None
    try:
        return setup(module)
    except Exception:   # a build that does not fit this source: rebuild with pip install -e .
        log.warning("%s does not fit this source (rebuild it: pip install -e .); "
                    "using the Python version", name, exc_info=True)
        return None
