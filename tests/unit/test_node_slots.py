"""Node keeps what the hot path reads in __slots__, and the C parts read
them by offset (proxy/_heads.h: node_attr) while the node is exactly a Node
and the class still holds the slots' descriptors; otherwise they look the
attribute up as Python does. Here a class attribute that takes over a slot's
name, and a subclass's property, must be what the C reads."""
from __future__ import annotations

import os
from typing import Any

import pytest

from proxy.node import Node
from tests.unit.test_done_plain import PLAIN, REQUESTS, World, event_loop

pytestmark = pytest.mark.skipif(os.environ.get("NOVAEDGE_PURE_PYTHON") == "1", reason="NOVAEDGE_PURE_PYTHON=1")


def test_the_hot_attributes_are_slots() -> None:
    for name in ("snapshot", "hooks", "selector", "pools", "deadlines", "stats", "started", "now", "_finished"):
        assert type(vars(Node).get(name)).__name__ == "member_descriptor", name


class Counts(dict):  # type: ignore[type-arg]
    pass


def test_a_class_attribute_in_a_slots_place_is_read() -> None:
    """Node.stats replaced by a property: the C's counts go where Python's would."""
    mine = Counts(requests=0, connections=0, errors=0)
    with event_loop():
        w = World("c", 8, 1, "none")
        w.run(REQUESTS["plain"], PLAIN, False, "")
        assert w.node.stats["requests"] == 1
        saved = vars(Node)["stats"]
        Node.stats = property(lambda self: mine)  # type: ignore[assignment]
        try:
            w.run(REQUESTS["plain"], PLAIN, False, "")
            w.run(REQUESTS["plain"], PLAIN, False, "")
        finally:
            Node.stats = saved  # type: ignore[assignment]
        assert mine["requests"] == 2
        w.run(REQUESTS["plain"], PLAIN, False, "")   # the slot again, as it was
        assert w.node.stats["requests"] == 2 and mine["requests"] == 2


def test_a_subclass_is_read_the_generic_way() -> None:
    seen: list[Any] = []

    class Watched(Node):
        __slots__ = ()

        @property
        def now(self) -> Any:   # type: ignore[override]
            seen.append(1)
            return lambda: 1000.0

        @now.setter
        def now(self, value: Any) -> None:
            pass

    with event_loop():
        w = World("c", 8, 1, "none")
        w.node.__class__ = Watched
        w.run(REQUESTS["plain"], PLAIN, False, "")
        assert seen and w.node.stats["requests"] == 1
