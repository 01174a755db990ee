"""The optional C parts (setup.py builds them; an install without a C
compiler runs the Python versions, which stay the reference): load one,
or None when it was not built or NOVAEDGE_PURE_PYTHON=1 asks for the
Python versions (to compare, or to rule the C out)."""
from __future__ import annotations

import importlib
import os
from types import ModuleType


def load(name: str) -> ModuleType | None:
    """`name`, e.g. "proxy._hotpath", if it is there and wanted."""
    if os.environ.get("NOVAEDGE_PURE_PYTHON") == "1":
        return None
    try:
        return importlib.import_module(name)
    except ImportError:
        return None
