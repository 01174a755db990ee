from __future__ import annotations

from proxy.gossip.broadcast import TransmitLimitedQueue, retransmit_limit
from proxy.gossip.suspicion import Awareness, Suspicion, suspicion_timeout


def test_retransmit_limit_grows_with_log_of_cluster_size() -> None:
    assert retransmit_limit(4, 1) == 4
    assert retransmit_limit(4, 26) == 8
    assert retransmit_limit(4, 500) == 12


def test_each_update_is_sent_a_bounded_number_of_times() -> None:
    q = TransmitLimitedQueue(retransmit_mult=4)
    q.queue(("m", "b"), b"x" * 40)
    sends = 0
    while q.take(1000, n_nodes=26):
        sends += 1
    assert sends == 8 and len(q) == 0


def test_newer_update_replaces_queued_one_for_the_same_key() -> None:
    q = TransmitLimitedQueue(4)
    q.queue(("m", "b"), b"old" * 10)
    q.queue(("m", "b"), b"new" * 10)
    assert q.take(1000, 5) == [b"new" * 10]


def test_least_sent_then_newest_first_within_budget() -> None:
    q = TransmitLimitedQueue(4)
    q.queue(("m", "a"), b"a" * 30)
    q.take(1000, 5)  # "a" sent once
    q.queue(("m", "b"), b"b" * 30)
    q.queue(("m", "c"), b"c" * 30)
    assert q.take(62, 5) == [b"c" * 30, b"b" * 30]  # 31 bytes each with separator: no room for "a"
    q.take(31, 5)  # one of the three, now all sent once or twice
    q.queue(("m", "d"), b"d" * 30)
    assert q.take(31, 5) == [b"d" * 30]  # never sent beats everything


def test_items_larger_than_the_budget_wait() -> None:
    q = TransmitLimitedQueue(4)
    q.queue(("s", "big"), b"x" * 500)
    q.queue(("m", "small"), b"y" * 20)
    assert q.take(100, 5) == [b"y" * 20]
    assert q.has(("s", "big"))


def test_suspicion_timeout_scales_with_log10_of_cluster_size() -> None:
    assert suspicion_timeout(4, 1, 0.2) == 0.8
    assert abs(suspicion_timeout(4, 26, 0.2) - 4 * 1.41497 * 0.2) < 1e-3
    assert suspicion_timeout(4, 1000, 0.2) > suspicion_timeout(4, 100, 0.2)


def test_confirmations_move_the_deadline_from_max_to_min_on_a_log_scale() -> None:
    s = Suspicion("x", k=3, min_s=1.0, max_s=6.0, now=100.0)
    assert s.deadline == 106.0
    assert s.confirm("y") and s.deadline == 106.0 - 5.0 * 0.5  # log(2) / log(k + 1 = 4)
    first = s.deadline
    assert not s.confirm("y") and not s.confirm("x")
    assert s.confirm("z") and s.deadline < first
    assert s.confirm("w") and s.deadline == 101.0
    assert not s.confirm("v")  # k reached


def test_no_possible_confirmers_means_min_timeout() -> None:
    assert Suspicion("x", k=0, min_s=1.0, max_s=6.0, now=0.0).deadline == 1.0


def test_awareness_is_bounded_and_scales_timeouts() -> None:
    a = Awareness(max_multiplier=8)
    a.apply(-3)
    assert a.score == 0 and a.scale(0.5) == 0.5
    a.apply(20)
    assert a.score == 7 and a.scale(0.5) == 4.0
