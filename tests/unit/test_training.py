"""Paper mode's decisions: the labelled set, the steps, the rollout prompt, the signal, the
report; and `grpod eval`'s scores, with their intervals and the paired difference."""

from __future__ import annotations

import math
import statistics

import pytest

from grpod.schema.errors import OperatorError
from grpod.workers.evaluation import Arm, ArmScore, difference, parse_against, plan_arms, report
from grpod.workers.training import (
    Problem,
    StepReport,
    Usage,
    has_signal,
    plan_steps,
    read_problems,
    rollout_messages,
    rollout_trace_id,
    run_key,
    step_cost,
)


def test_a_labelled_set_is_read_with_ids_made_safe_and_each_bad_line_named() -> None:
    lines = [
        '{"id": "2024-I-1", "question": "Find x.", "answer": "033"}\n',
        "\n",
        '{"problem": "Find y.", "answer": 7}\n',
        '{"id": "a b/c", "question": "Find z.", "answer": "1"}\n',
    ]
    problems = read_problems(lines, "set.jsonl")
    assert problems == [
        Problem("2024-I-1", "Find x.", "033"),
        Problem("3", "Find y.", "7"),  # no id: its line number
        Problem("a_b_c", "Find z.", "1"),  # safe in a trace id
    ]
    cases = {
        "{not json": "set.jsonl line 1 is not JSON",
        "[1, 2]": "set.jsonl line 1 is a JSON list",
        '{"question": "", "answer": "1"}': "set.jsonl line 1 has no question",
        '{"question": "q", "answer": true}': "set.jsonl line 1 has no answer",
        '{"question": "q"}': "set.jsonl line 1 has no answer",
    }
    for line, sentence in cases.items():
        with pytest.raises(OperatorError, match=sentence):
            read_problems([line], "set.jsonl")
    with pytest.raises(OperatorError, match="line 2 repeats the id 'x'"):
        read_problems(
            ['{"id": "x", "question": "a", "answer": "1"}', '{"id": "x", "question": "b", "answer": "2"}'], "s"
        )
    with pytest.raises(OperatorError, match="has no problem in it"):
        read_problems(["\n"], "empty.jsonl")


def test_steps_cover_every_question_once_per_epoch_and_are_the_same_when_planned_again() -> None:
    problems = [Problem(str(i), f"q{i}", "1") for i in range(10)]
    steps = plan_steps(problems, epochs=3, batch_size=4, seed="run")
    assert [s.number for s in steps] == list(range(1, 10))
    assert [len(s.problems) for s in steps] == [4, 4, 2] * 3
    for epoch in (1, 2, 3):
        seen = [p.id for s in steps if s.epoch == epoch for p in s.problems]
        assert sorted(seen, key=int) == [p.id for p in problems]
    assert steps == plan_steps(problems, epochs=3, batch_size=4, seed="run")  # a resumed run takes the same
    orders = {tuple(p.id for s in steps if s.epoch == e for p in s.problems) for e in (1, 2, 3)}
    assert len(orders) > 1  # each epoch shuffles


def test_the_run_key_changes_with_the_set_and_the_settings_only() -> None:
    problems = [Problem("1", "q", "1")]
    key = run_key("math", problems, {"group_size": 5})
    assert key == run_key("math", list(problems), {"group_size": 5})
    assert key != run_key("math", problems, {"group_size": 4})
    assert key != run_key("math", [Problem("1", "q", "2")], {"group_size": 5})
    assert key != run_key("other", problems, {"group_size": 5})
    assert len(rollout_trace_id(12, 3, "x" * 40, 64)) <= 128


def test_the_rollout_prompt_is_the_problem_then_the_experiences_to_read_first() -> None:
    (alone,) = rollout_messages("What is 2 + 2?", {})
    assert alone["role"] == "user"
    assert alone["content"].startswith("Please solve the problem:\nWhat is 2 + 2?\n")
    assert "experiences" not in alone["content"] and alone["content"].endswith("within \\boxed{}.")
    (taught,) = rollout_messages("What is $2 + 2$?", {3: "Check the units.", 1: "Read twice."})
    text = taught["content"]
    assert text.index("What is $2 + 2$?") < text.index("you MUST first carefully read") < text.index("[1] Read twice.")
    assert text.index("[1] Read twice.") < text.index("[3] Check the units.") < text.index("\\boxed{}")


def test_a_group_has_a_signal_only_when_its_rewards_differ() -> None:
    assert has_signal([1.0, 0.0, 1.0]) and has_signal([0.2, 0.3])
    assert not has_signal([1.0, 1.0, 1.0]) and not has_signal([0.0] * 5) and not has_signal([1.0])


def test_a_step_report_round_trips_and_costs_only_where_prices_are_set() -> None:
    policy, distiller = Usage(10, 20_000, 50_000), Usage(12, 30_000, 4_000)
    prices = {"policy_in": 0.5, "policy_out": 2.0, "llm_in": 0.27, "llm_out": 1.1}
    cost = step_cost(policy, distiller, prices)
    assert cost is not None and math.isclose(cost, (20_000 * 0.5 + 50_000 * 2.0 + 30_000 * 0.27 + 4_000 * 1.1) / 1e6)
    assert step_cost(policy, distiller, prices | {"llm_out": None}) is None
    row = StepReport(1, 1, 2, 10, 4, 2, 0, 3, 5, "production", policy, distiller, cost)
    assert row.accuracy == 0.4 and row.to_json()["accuracy"] == 0.4
    assert StepReport.from_json(row.to_json()) == row
    assert Usage(1, 2, 3) + Usage(4, 5, 6) == Usage(5, 7, 9)


def _score(name: str, version: int, correct: tuple[int, ...], k: int = 4) -> ArmScore:
    return ArmScore(Arm(name, version), k, correct, Usage(len(correct) * k, 100, 200))


def test_mean_at_k_pass_at_k_and_the_interval_over_questions() -> None:
    score = _score("version 2", 2, (4, 2, 0, 1))
    assert score.mean_at_k == pytest.approx((1 + 0.5 + 0 + 0.25) / 4)
    assert score.pass_at_k == 0.75
    low, high = score.to_json()["mean_at_k_interval"]
    half = 3.1824 * statistics.stdev([1, 0.5, 0, 0.25]) / 2  # t(0.975, 3), four questions
    assert low == pytest.approx(score.mean_at_k - half, abs=1e-3) and high == pytest.approx(
        score.mean_at_k + half, abs=1e-3
    )
    assert _score("one", 1, (3,)).to_json()["mean_at_k_interval"] is None  # one question: no interval


def test_the_difference_is_paired_by_question() -> None:
    # The library helps each question by one rollout in four: a constant paired difference, however
    # much the questions differ from each other.
    taught, plain = _score("version 2", 2, (4, 3, 1, 2)), _score("no library", 0, (3, 2, 0, 1))
    found = difference(taught, plain)
    assert found["mean_at_k"] == pytest.approx(0.25) and found["interval"] == pytest.approx([0.25, 0.25])
    assert found["pass_at_k"] == pytest.approx(0.25)
    both = report(taught, plain, domain="math", dataset="aime_2024.jsonl")
    assert [arm["arm"] for arm in both["arms"]] == ["version 2", "no library"] and both["k"] == 4
    with pytest.raises(ValueError, match="same questions"):
        difference(taught, _score("x", 1, (1,)))


def test_the_arms_by_default_and_as_asked() -> None:
    assert plan_arms(5, None, False, None) == (Arm("version 5", 5), Arm("no library", 0))
    assert plan_arms(5, 3, False, "production") == (Arm("version 3", 3), Arm("version 5", 5))
    assert plan_arms(5, None, True, None) == (Arm("no library", 0), Arm("version 5", 5))
    assert plan_arms(5, 4, False, "2") == (Arm("version 4", 4), Arm("version 2", 2))
    assert plan_arms(None, None, False, None) == (Arm("no library", 0), Arm("no library", 0))  # the CLI refuses it
    assert parse_against("7") == "7" and parse_against("none") == "none" and parse_against(None) is None
    with pytest.raises(ValueError, match="not 'latest'"):
        parse_against("latest")
