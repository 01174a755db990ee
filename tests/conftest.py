import asyncio

import pytest
import uvloop


@pytest.fixture(scope="session")
def event_loop_policy() -> asyncio.AbstractEventLoopPolicy:
    # The node runs on uvloop in production; the tests use the same loop.
    return uvloop.EventLoopPolicy()
