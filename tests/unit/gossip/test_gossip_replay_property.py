"""The replay window against a plain set model (property-based)."""

from __future__ import annotations

import pytest

pytest.importorskip("hypothesis", reason="hypothesis is not installed (not yet in the test extras)")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from proxy.gossip.wire import ReplayGuard  # noqa: E402

NOW = 1_700_000_000.0
NOW_MS = int(NOW * 1000)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=300), min_size=1, max_size=200))
def test_window_matches_a_set_model(seqs: list[int]) -> None:
    window = 64
    g = ReplayGuard(window=window)
    seen: set[int] = set()
    highest = -1
    for seq in seqs:
        expect_ok = seq not in seen and (highest < 0 or seq > highest - window)
        got = g.check("a", seq, NOW_MS, NOW)
        assert (got is None) == expect_ok, (seq, highest)
        if expect_ok:
            seen.add(seq)
            highest = max(highest, seq)
