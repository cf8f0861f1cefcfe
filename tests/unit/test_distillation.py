"""The distillation steps over plain data, with a scripted LLM: prompts, parsing, retries, windows, ledger."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from grpod.schema.errors import SettingError
from grpod.schema.library import Experience
from grpod.workers import distillation
from grpod.workers.distillation import (
    LearningSettings,
    Near,
    Neighbour,
    Sample,
    StepFailedError,
    consolidate_window,
    distill,
    input_key,
    nearest,
    pick_samples,
    render_trajectory,
    step_seed,
    triage,
    window_wait,
)
from grpod.workers.ledger import CallRecord, Ledger, NotRecordedError, prompt_hash
from grpod.workers.library import LibraryVersion, next_experiences
from grpod.workers.operations import Operation

from ..factories import agent_trace
from ..scripted_llm import GOOD_SCRIPT, ScriptedLLM, step_of

SETTINGS = LearningSettings()
LIBRARY = {4: "When asked about keys, check the docs."}


def near_at(library: Mapping[int, str], distance: float = 0.1) -> Near:
    """A ``near`` that puts every text at ``distance`` from the library's first experience."""

    def near(texts: Sequence[str]) -> list[Neighbour | None]:
        return [(min(library), distance) if library else None for _ in texts]

    return near


def samples(rewards: Sequence[float] = (1.0, 0.0, 1.0, 0.0, 0.5)) -> list[Sample]:
    result = []
    for index, value in enumerate(rewards):
        event = agent_trace(f"t{index}", "How do I rotate my API key?", good=value > 0.5)
        result.append(
            Sample(
                f"t{index}",
                value,
                event["query"],
                tuple(event["trajectory"]),
                event["answer"],
                critique="guessed the menu" if value < 0.5 else None,
                ground_truth="Settings > Security > API keys" if index == 0 else None,
            )
        )
    return result


def test_every_prompt_renders_with_its_values_and_says_what_the_paper_asks() -> None:
    group = samples()
    summary = distillation.summary_messages(SETTINGS, group[1], 0.0, 1.0)
    assert [m["role"] for m in summary] == ["system", "user"]
    assert SETTINGS.agent_objective in summary[0]["content"]
    assert "Critique: guessed the menu" in summary[1]["content"]
    assert "Reward: 0 (higher is better; the group's rewards range from 0 to 1)" in summary[1]["content"]
    assert (
        "Correct answer: Settings > Security > API keys"
        in distillation.summary_messages(SETTINGS, group[0], 0.0, 1.0)[1]["content"]
    )

    library = {3: "When asked about keys, check the docs.", 1: "When unsure, ask."}
    advantage = distillation.advantage_messages(SETTINGS, group, ["s0", "s1", "s2", "s3", "s4"], library)
    system, user = advantage[0]["content"], advantage[1]["content"]
    assert "at most 2 new experiences" in system and "at most 32 words" in system
    assert '"When [condition], [strategy]"' in system
    assert SETTINGS.learning_objective in system
    assert user.index("[1] When unsure") < user.index("[3] When asked")  # the paper's format, by id
    assert user.index("Attempt 1 (reward 1)") < user.index("Attempt 5 (reward 0)")  # best first

    operations = distillation.operations_messages(SETTINGS, ["When X, do Y."], {})
    assert "(none yet)" in operations[1]["content"] and "- When X, do Y." in operations[1]["content"]
    consolidation = distillation.consolidation_messages(
        SETTINGS, [Operation("UPDATE", "When X, do Z.", 3), Operation("DELETE", None, 3)], library
    )
    assert "1. UPDATE [3]: When X, do Z.\n2. DELETE [3]" in consolidation[1]["content"]
    for messages in (summary, advantage, operations, consolidation):
        assert "$" not in messages[0]["content"]  # every placeholder filled


def test_a_long_trajectory_keeps_its_beginning_and_end_and_shows_tool_calls() -> None:
    trajectory = agent_trace("t", "q", good=True)["trajectory"]
    rendered = render_trajectory(trajectory)
    assert "-> calls search_docs(" in rendered and rendered.startswith("user: q")
    long: list[dict[str, Any]] = [
        {"role": "user", "content": "start " + "x" * 50_000 + " end"},
        {"role": "assistant", "content": None},
    ]
    clipped = render_trajectory(long, limit=2000)
    assert len(clipped) < 2200 and "characters left out" in clipped and clipped.endswith("assistant: ")
    assert render_trajectory([]) == "(no steps recorded)"


def test_samples_are_picked_across_the_rewards_and_deterministically() -> None:
    many = [Sample(f"t{i:02}", float(i % 7)) for i in range(20)]
    picked = pick_samples(many, 5)
    assert len(picked) == 5
    assert picked[0].reward == 0.0 and picked[-1].reward == 6.0  # the worst and the best are in
    assert pick_samples(list(reversed(many)), 5) == picked
    assert pick_samples(many[:3], 5) == sorted(many[:3], key=lambda s: (s.reward, s.trace_id))


def test_the_input_key_changes_with_traces_rewards_and_parent_but_not_with_order() -> None:
    group = samples()
    key = input_key("support", 7, group, 3)
    assert key == input_key("support", 7, list(reversed(group)), 3)
    assert key != input_key("support", 7, group, 4)
    assert key != input_key("support", 7, group[:4], 3)
    changed = [Sample(s.trace_id, s.reward + (0.5 if i == 0 else 0)) for i, s in enumerate(group)]
    assert key != input_key("support", 7, changed, 3)
    assert len(key) == 32


def run(
    script: Mapping[str, Any], library: Mapping[int, str] | None = None, distance: float = 0.1
) -> tuple[Any, ScriptedLLM, Ledger]:
    llm = ScriptedLLM(script)
    ledger = Ledger(llm)
    library = library or {}
    result = distill(ledger, SETTINGS, samples(), library, distillation_id=11, near=near_at(library, distance))
    return result, llm, ledger


def test_a_distillation_makes_g_summaries_one_advantage_and_one_operations_call() -> None:
    result, llm, ledger = run(GOOD_SCRIPT, LIBRARY)
    assert sorted(llm.calls) == ["advantage", "operations"] + ["summary"] * 5
    assert [c.purpose for c in ledger.calls].count("summary") == 5
    assert result.new_experiences == ["When asked about account settings, search the documentation before answering."]
    (operation,) = result.operations
    assert (operation.kind, operation.sources) == ("ADD", (11,))
    assert result.neighbours == [(4, 0.1)]


def test_a_new_experience_no_experience_is_close_to_is_added_without_an_operations_call() -> None:
    # The operations step would answer with a degenerate ADD: it is never asked.
    looping = '{"operations": [{"operation": "ADD", "id": null, "text": "When ' + "reset " * 20 + '", "reason": ""}]}'
    for library, distance in (({}, 0.0), (LIBRARY, SETTINGS.close_distance)):
        result, llm, _ = run({**GOOD_SCRIPT, "operations": looping}, library, distance)
        assert "operations" not in llm.calls
        (operation,) = result.operations
        assert operation.kind == "ADD" and operation.text == result.new_experiences[0] and operation.sources == (11,)
        (note,) = result.notes
        assert note.action == "added" and "added without an operations call" in note.why
        assert ("the library is empty" in note.why) == (not library)


def test_an_unusable_operations_answer_keeps_the_far_experiences_and_changes_nothing_for_the_close_ones() -> None:
    texts = ["When asked about API keys, check the docs first.", "When a tool fails, retry."]
    advantage = json.dumps({"experiences": texts})
    llm = ScriptedLLM({**GOOD_SCRIPT, "advantage": advantage, "operations": "no json at all"})

    def near(texts: Sequence[str]) -> list[Neighbour | None]:
        return [(4, 0.05) if "API keys" in text else (4, 0.9) for text in texts]

    result = distill(Ledger(llm), SETTINGS, samples(), LIBRARY, 3, near=near)

    assert llm.calls.count("operations") == 3  # asked, then twice again warmer
    assert [(op.kind, op.text) for op in result.operations] == [("ADD", "When a tool fails, retry.")]
    by_action = {note.action: note for note in result.notes}
    assert "nearest, [4], is at 0.90" in by_action["added"].why
    assert "API keys" in by_action["dropped"].proposed
    assert "operations step gave no usable answer" in by_action["dropped"].why
    assert "an experience is close to it, so nothing changes" in by_action["dropped"].why


def test_the_triage_splits_new_experiences_at_the_close_distance() -> None:
    split = triage(["a a a a", "b b b b", "c c c c"], [(1, 0.39), (2, 0.4), None], 0.4)
    assert split.close == ["a a a a"] and split.far == ["b b b b", "c c c c"]
    assert [note.action for note in split.notes] == ["added", "added"]


def test_nearest_finds_each_texts_closest_experience_by_cosine_distance() -> None:
    import numpy as np

    experiences = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    texts = np.array([[0.6, 0.8], [1.0, 0.0]], dtype=np.float32)
    assert nearest(texts, experiences, [7, 9]) == [(9, 0.2), (7, 0.0)]
    assert nearest(texts, np.zeros((0, 2), dtype=np.float32), []) == [None, None]


def test_each_attempt_of_a_step_has_a_seed_drawn_from_its_input() -> None:
    messages = [{"role": "user", "content": "Summarise."}]
    assert step_seed(messages, 1) == step_seed([dict(m) for m in messages], 1)
    assert len({step_seed(messages, attempt) for attempt in range(3)}) == 3
    assert step_seed(messages, 0) != step_seed([{"role": "user", "content": "Other."}], 0)
    assert 0 <= step_seed(messages, 2) < 2**31


def test_an_empty_advantage_ends_the_distillation_without_an_operations_call() -> None:
    result, llm, _ = run({**GOOD_SCRIPT, "advantage": '{"experiences": []}'})
    assert result.operations == [] and "operations" not in llm.calls


def test_the_advantage_answer_is_read_tolerantly_and_capped() -> None:
    answer = (
        'Here you go:\n```json\n{"experiences": [{"text": "When A, do B."}, "  ", "when a, do b.", "When C, do D.",'
    )
    answer += ' "When E, do F."]}\n```'
    result, _, _ = run({**GOOD_SCRIPT, "advantage": answer})
    assert result.new_experiences == ["When A, do B.", "When C, do D."]  # no blank, no repeat, at most K=2


def test_a_step_is_asked_again_warmer_and_fails_after_three_unusable_answers() -> None:
    asked: list[tuple[float, int]] = []

    class Watching(ScriptedLLM):
        def complete(self, messages: Any, **kwargs: Any) -> Any:
            if step_of(messages) == "advantage":
                asked.append((kwargs["temperature"], kwargs["seed"]))
            return super().complete(messages, **kwargs)

    def answers() -> list[str]:
        return ["no json here", "", str(GOOD_SCRIPT["advantage"])]

    llm = Watching({**GOOD_SCRIPT, "advantage": answers()})  # type: ignore[dict-item]
    result = distill(Ledger(llm), SETTINGS, samples(), {}, 1, near=near_at({}))
    assert result.new_experiences and [temperature for temperature, _ in asked] == [0.0, 0.7, 0.7]
    assert len({seed for _, seed in asked}) == 3
    first_run = list(asked)
    asked.clear()
    distill(Ledger(Watching({**GOOD_SCRIPT, "advantage": answers()})), SETTINGS, samples(), {}, 1, near=near_at({}))  # type: ignore[dict-item]
    assert asked == first_run  # a rerun samples with the same seeds

    with pytest.raises(StepFailedError, match="advantage step gave no usable answer after 3 attempts"):
        distill(Ledger(ScriptedLLM({**GOOD_SCRIPT, "advantage": "{}"})), SETTINGS, samples(), {}, 1, near=near_at({}))
    with pytest.raises(StepFailedError, match="summary step"):
        distill(Ledger(ScriptedLLM({**GOOD_SCRIPT, "summary": "   "})), SETTINGS, samples(), {}, 1, near=near_at({}))


def test_operations_against_the_library_are_validated_with_reasons() -> None:
    library = {4: "When asked about keys, check the docs."}
    answer = json.dumps(
        {
            "operations": [
                {"operation": "UPDATE", "id": 4, "text": "When asked about keys, check the security docs."},
                {"operation": "DELETE", "id": 9, "text": None},
                {"operation": "DELETE", "id": 4, "text": None},
                {"operation": "NONE", "id": None, "text": None},
                {"operation": "ADD", "id": None, "text": "When asked about keys, check the docs."},
            ]
        }
    )
    result, _, _ = run({**GOOD_SCRIPT, "operations": answer}, library)
    assert [(op.kind, op.experience_id) for op in result.operations] == [("UPDATE", 4), ("DELETE", 4)]
    assert {note.why for note in result.notes} == {"DELETE of unknown experience 9", "the same as experience 4"}


def test_the_ledger_records_each_call_and_a_replay_answers_from_the_recording_only() -> None:
    recorded: list[CallRecord] = []

    def record(call: CallRecord) -> int:
        recorded.append(call)
        return len(recorded)

    ledger = Ledger(ScriptedLLM(GOOD_SCRIPT), record)
    near = near_at(LIBRARY)
    first = distill(ledger, SETTINGS, samples(), LIBRARY, 5, near=near)
    assert len(recorded) == 7
    assert sorted(c.id for c in ledger.calls if c.id is not None) == list(range(1, 8))  # ids from the store
    for call in recorded:
        assert call.prompt_hash == prompt_hash(call.request["messages"], call.request["schema"])
        assert call.model == "scripted" and call.tokens_in > 0
        assert isinstance(call.request["seed"], int)

    replay = Ledger(None, recorded=recorded)
    again = distill(replay, SETTINGS, samples(), LIBRARY, 5, near=near)
    assert again.operations == first.operations and replay.unused == 0
    assert all(call.replayed for call in replay.calls)

    other = LearningSettings(agent_objective="Other.")
    with pytest.raises(NotRecordedError, match="no summary call with this prompt"):
        distill(Ledger(None, recorded=recorded), other, samples(), LIBRARY, 5, near=near)


def test_a_resumed_step_gets_its_full_attempts_after_recorded_failures() -> None:
    failing = Ledger(ScriptedLLM({**GOOD_SCRIPT, "advantage": "nothing"}))
    with pytest.raises(StepFailedError):
        distill(failing, SETTINGS, samples(), LIBRARY, 1, near=near_at(LIBRARY))
    llm = ScriptedLLM(GOOD_SCRIPT)
    resumed = Ledger(llm, recorded=failing.calls)
    result = distill(resumed, SETTINGS, samples(), LIBRARY, 1, near=near_at(LIBRARY))
    assert result.operations and llm.calls == ["advantage", "operations"]


def test_the_window_is_due_after_its_seconds_or_its_groups() -> None:
    settings = LearningSettings(update_window_seconds=60, update_window_groups=3)
    assert window_wait([], settings) == float("inf")
    assert window_wait([10.0], settings) == 50.0
    assert window_wait([61.0, 1.0], settings) == 0.0
    assert window_wait([1.0, 1.0, 1.0], settings) == 0.0


def test_one_proposal_is_consolidated_by_the_rules_without_an_llm_call() -> None:
    llm = ScriptedLLM({})
    proposals = {3: [Operation("ADD", "When A, do B.", sources=(3,)), Operation("ADD", "when a, do b", sources=(3,))]}
    result = consolidate_window(Ledger(llm), SETTINGS, proposals, {})
    assert llm.calls == [] and not result.asked
    assert [op.text for op in result.operations] == ["When A, do B."]


def test_a_window_of_several_groups_is_merged_by_one_llm_call_within_the_rules() -> None:
    library = {1: "When X, do Y.", 2: "When P, do Q."}
    proposals = {
        7: [Operation("UPDATE", "When X, do Y carefully.", 1, sources=(7,)), Operation("ADD", "When M, do N.")],
        8: [Operation("DELETE", None, 1, sources=(8,)), Operation("UPDATE", "When X, do Z.", 1, sources=(8,))],
    }
    answer = json.dumps(
        {
            "operations": [
                {"operation": "UPDATE", "id": 1, "text": "When X, do Y and Z.", "merged_from": [1, 4], "reason": ""},
                {"operation": "DELETE", "id": 2, "text": None, "merged_from": [], "reason": "not asked"},
                {"operation": "ADD", "id": None, "text": "When M, do N.", "merged_from": [2], "reason": ""},
            ]
        }
    )
    llm = ScriptedLLM({"consolidation": answer})
    result = consolidate_window(Ledger(llm), SETTINGS, proposals, library)
    assert llm.calls == ["consolidation"] and result.asked
    by_kind = {(op.kind, op.experience_id): op for op in result.operations}
    # The DELETE of 1 (proposal 3, not merged by the answer) is kept and wins over the merged UPDATE;
    # the DELETE of 2, which no group proposed, is dropped.
    assert set(by_kind) == {("DELETE", 1), ("ADD", None)}
    assert by_kind[("DELETE", 1)].sources == (8,)
    assert by_kind[("ADD", None)].sources == (7,)
    whys = " | ".join(note.why for note in result.notes)
    assert "no group proposed to change experience 2" in whys and "deleted in the same window" in whys


def test_an_unusable_consolidation_falls_back_to_the_rules() -> None:
    proposals = {
        1: [Operation("ADD", "When A, do B.", sources=(1,))],
        2: [Operation("ADD", "When A, do B.", sources=(2,))],
    }
    result = consolidate_window(Ledger(ScriptedLLM({"consolidation": "???"})), SETTINGS, proposals, {})
    assert [(op.text, op.sources) for op in result.operations] == [("When A, do B.", (1, 2))]
    assert any("merged by the rules alone" in note.why for note in result.notes)


def test_next_version_keeps_ids_and_records_provenance_per_change() -> None:
    parent = LibraryVersion(
        "support",
        2,
        {1: Experience(1, "When A, B.", ({"version": 1, "operation": "ADD"},)), 2: Experience(2, "When C, D.")},
        next_experience_id=5,  # ids 3 and 4 were given out by a version since rolled back
    )
    operations = [
        Operation("UPDATE", "When A, B quickly.", 1, sources=(9,)),
        Operation("DELETE", None, 2),
        Operation("ADD", "When E, F.", sources=(9, 10)),
    ]
    experiences, next_id = next_experiences(parent, operations, 3, lambda op: {"distillations": list(op.sources)})
    assert sorted(experiences) == [1, 5] and next_id == 6
    assert experiences[1].provenance == (
        {"version": 1, "operation": "ADD"},
        {"version": 3, "operation": "UPDATE", "distillations": [9]},
    )
    assert experiences[5].provenance == ({"version": 3, "operation": "ADD", "distillations": [9, 10]},)


def test_learning_settings_are_validated_with_a_clear_reason() -> None:
    assert LearningSettings.from_json({}) == LearningSettings()
    assert LearningSettings.from_json({"max_new_experiences": 3, "group_size": 9}).max_new_experiences == 3
    cases: list[tuple[dict[str, object], str]] = [
        ({"max_new_experiences": 0}, "max_new_experiences must be a whole number from 1 to 10"),
        ({"experience_max_words": True}, "experience_max_words"),
        ({"update_window_seconds": -1}, "update_window_seconds"),
        ({"update_window_groups": 2.5}, "update_window_groups"),
        ({"agent_objective": " "}, "agent_objective must be a text"),
        ({"close_distance": 2.5}, "close_distance must be a cosine distance from 0 to 2"),
    ]
    for values, problem in cases:
        with pytest.raises(SettingError, match=problem):
            LearningSettings.from_json(values)


def test_a_consolidation_that_answers_too_little_keeps_the_proposals_it_did_not_account_for() -> None:
    proposals = {
        1: [Operation("ADD", "When A, do B.", sources=(1,))],
        2: [Operation("ADD", "When C, do D.", sources=(2,))],
    }
    empty = consolidate_window(Ledger(ScriptedLLM({"consolidation": '{"operations": []}'})), SETTINGS, proposals, {})
    assert [(op.text, op.sources) for op in empty.operations] == [("When A, do B.", (1,)), ("When C, do D.", (2,))]
    assert sum("left out by the consolidation; kept" in note.why for note in empty.notes) == 2

    dropping = json.dumps(
        {"operations": [{"operation": "NONE", "id": None, "text": None, "merged_from": [2], "reason": "too narrow"}]}
    )
    dropped = consolidate_window(Ledger(ScriptedLLM({"consolidation": dropping})), SETTINGS, proposals, {})
    assert [op.text for op in dropped.operations] == ["When A, do B."]


def test_an_operations_answer_is_held_to_the_schemas_item_limit_after_tolerant_extraction() -> None:
    many = [
        {"operation": "ADD", "id": None, "text": f"When case {i} comes up, handle it carefully.", "reason": ""}
        for i in range(40)
    ]
    answer = "Here they are: " + json.dumps({"operations": many})  # not valid JSON as a whole: extracted
    result, _, _ = run({**GOOD_SCRIPT, "operations": answer}, LIBRARY)
    assert len(result.operations) == 5  # for one close experience: the schema's maxItems
    assert any("the answer held 40 operations; the limit is 5" in note.why for note in result.notes)
