"""The slot claim's decision and the maintenance sweep's report, as plain data."""

from __future__ import annotations

import pytest

from grpod.workers.maintenance_sweep import StepReport, SweepReport, summary
from grpod.workers.slot_claims import Outcome, may_act, outcome


@pytest.mark.parametrize(
    ("inserted", "holder", "expected"),
    [
        (True, "task-a", "claimed"),  # the first copy of the slot
        (False, "task-a", "held"),  # the same task id again: a retry, or a redelivery after its worker died
        (False, "task-b", "taken"),  # another beat's copy of the slot
        (False, None, "taken"),  # the claim vanished meanwhile (pruned): do nothing rather than act twice
    ],
)
def test_who_may_act_on_a_slot(inserted: bool, holder: str | None, expected: Outcome) -> None:
    assert outcome(inserted, holder, "task-a") == expected
    assert may_act(expected) is (expected != "taken")


def test_the_sweep_report_names_the_groups_to_send_and_a_failed_domain_as_a_whole() -> None:
    report = SweepReport(
        [
            StepReport(
                "lost_work", "a", {"stalled_distillations": [7], "failed_for_good": [], "groups_to_distill": [3, 1]}
            ),
            StepReport("expiry", "a", {"expired_traces": 2}),
            StepReport("lost_work", "b", error="RuntimeError: boom"),
            StepReport("lost_work", "c", {"groups_to_distill": [3, 9]}),
            StepReport("pruning", None, {"rejected_events": 4, "heartbeats": 0, "slot_claims": 1}),
        ]
    )
    assert report.groups_to_distill == [1, 3, 9]
    assert [(r.step, r.domain) for r in report.failed] == [("lost_work", "b")]
    assert report.to_json() == {
        "domains": {
            "a": {
                "lost_work": {"stalled_distillations": [7], "failed_for_good": [], "groups_to_distill": [3, 1]},
                "expiry": {"expired_traces": 2},
            },
            "b": {"error": "RuntimeError: boom"},
            "c": {"lost_work": {"groups_to_distill": [3, 9]}},
        },
        "deployment": {"pruning": {"rejected_events": 4, "heartbeats": 0, "slot_claims": 1}},
        "errors": 1,
    }
    assert summary({"stalled_distillations": [7, 8], "expired_traces": 3}) == {
        "stalled_distillations": 2,
        "expired_traces": 3,
    }
