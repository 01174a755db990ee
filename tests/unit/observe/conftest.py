from __future__ import annotations

from collections.abc import Callable

import pytest
from observe_fixtures import make_ctx as _make_ctx

from proxy.context import RequestContext


@pytest.fixture
def make_ctx() -> Callable[..., RequestContext]:
    return _make_ctx
