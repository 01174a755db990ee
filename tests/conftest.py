from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import uvloop


def pytest_asyncio_loop_factories(config: Any, item: Any) -> Mapping[str, Callable[[], Any]]:
    # The node runs on uvloop in production; the tests run on the same loop.
    return {"uvloop": uvloop.new_event_loop}
