"""What a stored batch changes of each domain's counts, from what its statements returned."""

from __future__ import annotations

from grpod.workers.domain_counts import CountDelta, batch_deltas


def test_a_trace_with_no_reward_yet_counts_as_unrewarded() -> None:
    assert batch_deltas([("t1", "support", True), ("t2", "coding", True)], [], []) == {
        "support": CountDelta(traces=1, unrewarded=1),
        "coding": CountDelta(traces=1, unrewarded=1),
    }


def test_a_trace_and_its_reward_in_one_batch_make_a_rewarded_trace() -> None:
    # The trace is stored first (awaiting), then its reward takes it out: its first.
    deltas = batch_deltas([("t1", "support", True)], [], [("t1", "support", True)])
    assert deltas == {"support": CountDelta(traces=1, rewards=1)}


def test_a_reward_before_its_trace_counts_when_the_trace_comes() -> None:
    assert batch_deltas([], [], [("t1", None, False)]) == {}
    # The trace arrives: it does not await (its reward is there), and that reward counts now.
    assert batch_deltas([("t1", "support", False)], ["support"], []) == {"support": CountDelta(traces=1, rewards=1)}


def test_two_sources_of_one_trace_make_it_rewarded_once() -> None:
    deltas = batch_deltas([], [], [("t1", "support", True), ("t1", "support", True), ("t2", "support", False)])
    assert deltas == {"support": CountDelta(rewards=3, unrewarded=-1)}


def test_a_batch_that_changed_nothing_adds_no_delta() -> None:
    assert batch_deltas([], [], []) == {}
