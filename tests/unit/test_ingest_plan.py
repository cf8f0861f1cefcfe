from __future__ import annotations

import json

from grpod.schema.events import Limits, RejectReason, parse_event
from grpod.workers.ingest import Insertion, bound_payload, plan_batch, split_existing

from ..factories import raw, reward, trace

LIMITS = Limits()


def _plan(*payloads: bytes):  # type: ignore[no-untyped-def]
    return plan_batch([parse_event(p, LIMITS) for p in payloads])


def test_new_traces_and_rewards_become_candidates() -> None:
    plan = _plan(raw(trace("t-1")), raw(reward("t-1")), raw(reward("t-1", source="tests")), raw(trace("t-2")))
    assert [c.key for c in plan.traces] == ["t-1", "t-2"]
    assert [c.key for c in plan.rewards] == [("t-1", "user_thumbs"), ("t-1", "tests")]
    assert plan.duplicates == [] and plan.rejections == {}


def test_the_same_event_twice_in_a_batch_is_a_duplicate_even_reordered() -> None:
    event = trace("t-1")
    reordered = json.dumps(dict(reversed(list(event.items())))).encode()
    plan = _plan(raw(event), reordered)
    assert len(plan.traces) == 1
    assert plan.duplicates == [1]


def test_a_different_trace_with_the_same_id_in_a_batch_is_a_conflict() -> None:
    plan = _plan(raw(trace("t-1")), raw(trace("t-1", answer="other")))
    assert len(plan.traces) == 1
    assert plan.rejections[1].reason is RejectReason.CONFLICT
    assert "t-1" in plan.rejections[1].detail


def test_a_different_reward_from_the_same_source_is_a_conflict() -> None:
    plan = _plan(raw(reward("t-1", 1.0)), raw(reward("t-1", 0.0)))
    assert plan.rejections[1].reason is RejectReason.CONFLICT
    assert "send a new source" in plan.rejections[1].detail


def test_a_trace_and_a_reward_never_collide() -> None:
    plan = _plan(raw(trace("t-1")), raw(reward("t-1")))
    assert len(plan.traces) == 1 and len(plan.rewards) == 1


def test_rejections_keep_their_position() -> None:
    plan = _plan(raw(trace("t-1")), b"garbage", raw(trace("t-2", domain="BAD")))
    assert set(plan.rejections) == {1, 2}
    assert plan.rejections[1].reason is RejectReason.UNPARSABLE
    assert plan.rejections[2].reason is RejectReason.BAD_DOMAIN


def test_split_existing_against_what_is_stored() -> None:
    new = Insertion(0, "t-new", b"a")
    same = Insertion(1, "t-same", b"b")
    changed = Insertion(2, "t-changed", b"c")
    stored, duplicates, conflicts = split_existing(
        [new, same, changed], inserted={"t-new"}, stored_hashes={"t-same": b"b", "t-changed": b"zzz"}
    )
    assert stored == [new] and duplicates == [same] and conflicts == [changed]


def test_payloads_are_bounded() -> None:
    assert bound_payload(b"12345", 10) == (b"12345", False)
    assert bound_payload(b"1234567890abc", 10) == (b"1234567890", True)
