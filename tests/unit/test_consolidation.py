"""Consolidation's decisions: near-duplicate clusters, the evidence rule, retirement within budgets."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from grpod.schema.library import block_tokens, render_prompt
from grpod.workers.consolidation import (
    Merge,
    closeness,
    merge_cluster,
    near_duplicate_clusters,
    plan,
    retirements,
    similarities,
)
from grpod.workers.distillation import LearningSettings
from grpod.workers.evidence import (
    DISTINCTNESS_WEIGHT,
    FRESHNESS_WEIGHT,
    Evidence,
    Outcome,
    evidence,
    lift,
    retirement_order,
)
from grpod.workers.ledger import Ledger
from grpod.workers.operations import Note
from grpod.workers.upkeep_settings import UpkeepSettings

from ..scripted_llm import ScriptedLLM

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def unit(*rows: Sequence[float]) -> np.ndarray[Any, np.dtype[np.float32]]:
    return np.asarray(rows, dtype=np.float32)


def plain(experience_id: int, usefulness_lift: float = 0.0, days: float | None = 0.0, close: float = 0.0) -> Evidence:
    return Evidence(experience_id, usefulness_lift, 0, days, close)


def test_clusters_are_complete_linkage_closest_pairs_first_and_bounded() -> None:
    # 1, 2, 3 within 0.1 of each other; 4 is close to 3 only (a chain that must not drift); 5 alone.
    angle = {1: 0.0, 2: 0.2, 3: 0.4, 4: 0.75, 5: 2.0}
    ids = sorted(angle)
    vectors = unit(*[(np.cos(a), np.sin(a)) for a in angle.values()])
    similarity = similarities(vectors)
    assert near_duplicate_clusters(ids, similarity, merge_distance=0.1) == [(1, 2, 3)]
    assert near_duplicate_clusters(ids, similarity, merge_distance=0.1, max_cluster=2) == [(1, 2), (3, 4)]
    assert near_duplicate_clusters(ids, similarity, merge_distance=0.0) == []
    assert near_duplicate_clusters(list(reversed(ids)), similarity[::-1, ::-1], 0.1) == [(1, 2, 3)]
    assert closeness(ids, similarity)[5] < 0.5 and closeness([1], similarity[:1, :1]) == {1: 0.0}
    # Once 1, 2, 3 are one experience, 1 is no longer close to 2 (a member it absorbs), only to 4.
    merged = closeness(ids, similarity, [(1, 2, 3)])
    assert abs(merged[1] - float(similarity[2, 3])) < 1e-6  # 3 is the member nearest to 4
    assert merged[4] == merged[1] and closeness(ids, similarity)[1] > merged[1]


def test_lift_weighs_each_version_against_its_parent_and_shrinks_small_samples() -> None:
    outcomes = {0: Outcome(0.5, 100), 1: Outcome(0.9, 100), 2: Outcome(0.2, 10)}
    parents = {1: 0, 2: 1}
    value, traces = lift([1], outcomes, parents)
    assert traces == 100 and abs(value - 0.4 * 100 / 120) < 1e-9
    value, traces = lift([2], outcomes, parents)
    assert traces == 10 and abs(value - (-0.7 * 10 / 30)) < 1e-9
    assert lift([3], outcomes, parents) == (0.0, 0)  # no record: no evidence either way


def test_usefulness_rewards_lift_freshness_and_distinctness() -> None:
    fresh = evidence(1, [], {}, {}, NOW, 0.0, NOW)
    assert fresh.usefulness == FRESHNESS_WEIGHT + DISTINCTNESS_WEIGHT
    stale = evidence(2, [], {}, {}, NOW - timedelta(days=30), 0.0, NOW)
    assert abs(stale.usefulness - (FRESHNESS_WEIGHT / 2 + DISTINCTNESS_WEIGHT)) < 1e-6
    never = evidence(3, [], {}, {}, None, 0.0, NOW)
    copy = evidence(4, [], {}, {}, NOW, 0.99, NOW)
    lifted = evidence(5, [1], {0: Outcome(0.5, 100), 1: Outcome(0.6, 100)}, {1: 0}, None, 0.0, NOW)
    assert lifted.usefulness > fresh.usefulness > copy.usefulness and fresh.usefulness > stale.usefulness
    assert never.usefulness < stale.usefulness
    assert json.dumps(fresh.to_json())


def test_retirement_takes_the_least_useful_first_and_the_newest_of_equals() -> None:
    scored = {1: plain(1, 0.1), 2: plain(2, -0.1), 3: plain(3), 4: plain(4)}
    assert retirement_order(scored) == [2, 4, 3, 1]


def test_retirement_stops_as_soon_as_both_budgets_hold() -> None:
    library = {i: f"When case {i} comes up, check the page for case {i} first." for i in range(1, 21)}
    scored = {i: plain(i, usefulness_lift=i / 100) for i in library}
    by_count = retirements(library, scored, UpkeepSettings(max_experiences=15, max_prompt_tokens=100_000))
    assert [r.experience_id for r in by_count] == [1, 2, 3, 4, 5]
    assert "over max_experiences 15" in by_count[0].why
    tokens = block_tokens({i: library[i] for i in range(11, 21)})
    by_tokens = retirements(library, scored, UpkeepSettings(max_experiences=100, max_prompt_tokens=tokens))
    assert [r.experience_id for r in by_tokens] == list(range(1, 11))
    assert "over max_prompt_tokens" in by_tokens[0].why
    assert retirements(library, scored, UpkeepSettings()) == []


def test_a_plan_merges_then_retires_and_scores_what_stays() -> None:
    library = {
        1: "When A happens, do B now.",
        2: "When A happens, do B at once.",
        3: "When C, do D first.",
        4: "x y z w",
    }
    scored = {1: plain(1, 0.0), 2: plain(2, 0.2), 3: plain(3, 0.1), 4: plain(4, -0.3)}
    merge = Merge((1, 2), "When A happens, do B at once.", "same rule")
    decided = plan(library, {}, scored, [merge], UpkeepSettings(max_experiences=2))
    kinds = [(op.kind, op.experience_id) for op in decided.operations]
    assert kinds == [("UPDATE", 1), ("DELETE", 2), ("DELETE", 4)]
    assert "merged near-duplicates [1], [2]" in (decided.operations[0].reason or "")
    assert decided.operations[1].reason == "merged into [1] with [1], [2]"
    assert decided.operations[2].reason.startswith("retired: the least useful left")
    # The keeper keeps its own reward record, confirmed now; the others keep theirs.
    assert decided.usefulness == {1: scored[1].usefulness, 3: scored[3].usefulness}
    assert decided.rescored == 2 and decided.changes
    stored = {1: scored[1].usefulness, 3: scored[3].usefulness + 0.005}  # moved by less than RESCORE_DELTA
    again = plan({1: library[1], 3: library[3]}, stored, scored, [], UpkeepSettings())
    assert not again.changes  # same scores, nothing over budget: no new version


def test_a_merge_is_one_call_and_an_unusable_answer_leaves_the_cluster() -> None:
    library = {3: "When the export fails, retry it.", 7: "When an export fails, retry the export."}
    good = ScriptedLLM({"merge": '{"text": "When an export fails, retry it once before reporting.", "reason": "same"}'})
    merged = merge_cluster(Ledger(good), LearningSettings(), (3, 7), library)
    assert isinstance(merged, Merge) and merged.keeper == 3 and merged.text.startswith("When an export fails")
    assert good.calls == ["merge"]
    same = ScriptedLLM({"merge": json.dumps({"text": library[3]})})
    kept = merge_cluster(Ledger(same), LearningSettings(), (3, 7), library)
    assert isinstance(kept, Merge) and kept.text == library[3]  # the keeper's own text: 7 goes, 3 stays
    decided = plan(library, {}, {3: plain(3), 7: plain(7)}, [kept], UpkeepSettings())
    assert [(op.kind, op.experience_id) for op in decided.operations] == [("DELETE", 7)]
    bad = ScriptedLLM({"merge": "I cannot help with that."})
    left = merge_cluster(Ledger(bad), LearningSettings(), (3, 7), library)
    assert isinstance(left, Note) and left.action == "dropped" and "stay as they are" in left.why
    assert bad.calls == ["merge"] * 3  # asked again, then given up


def test_serving_keeps_the_best_evidence_within_the_budget() -> None:
    experiences = {i: f"When case {i} comes up, check the page for case {i}." for i in range(1, 7)}
    usefulness: Mapping[int, float | None] = {1: 0.01, 2: 0.01, 3: 0.3, 4: None, 5: 0.2, 6: 0.25}
    budget = block_tokens({i: experiences[i] for i in (3, 5, 6)})
    prompt = render_prompt(experiences, budget, usefulness)
    shown = [int(line[1 : line.index("]")]) for line in prompt.splitlines()[1:]]
    assert shown == [3, 5, 6]  # the three best, in id order
    # An experience with no score yet ranks as a neutral one: above those with evidence against them.
    wider = render_prompt(experiences, block_tokens({i: experiences[i] for i in (3, 4, 5, 6)}), usefulness)
    assert [int(line[1 : line.index("]")]) for line in wider.splitlines()[1:]] == [3, 4, 5, 6]
    assert render_prompt(experiences, None, usefulness) == render_prompt(experiences)  # no budget: everything
