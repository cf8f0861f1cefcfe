"""What a distillation prompt shows of a large library: the relevant experiences, within a budget."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import numpy as np

from grpod.schema.library import estimate_tokens
from grpod.workers.distillation import LearningSettings, Purpose, distill
from grpod.workers.ledger import Ledger
from grpod.workers.relevance import Vectors, ranked_by_relevance, within_budget

from ..scripted_llm import GOOD_SCRIPT, ScriptedLLM
from .test_distillation import near_at, samples


def unit(*rows: Sequence[float]) -> Vectors:
    vectors = np.asarray(rows, dtype=np.float32)
    normed: Vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return normed


def test_experiences_are_ranked_by_their_nearest_anchor_and_ties_go_to_the_older() -> None:
    vectors = unit([1, 0, 0], [0, 1, 0], [0.9, 0.1, 0], [0, 1, 0])
    ids = [7, 3, 9, 1]
    assert ranked_by_relevance(unit([1, 0, 0]), ids, vectors) == [7, 9, 1, 3]
    # With two anchors, each experience counts by the nearer one.
    assert ranked_by_relevance(unit([1, 0, 0], [0, 1, 0]), ids, vectors) == [1, 3, 7, 9]
    assert ranked_by_relevance(unit([1, 0, 0]), [], np.zeros((0, 3), dtype=np.float32)) == []
    assert ranked_by_relevance(np.zeros((0, 3), dtype=np.float32), ids, vectors) == [1, 3, 7, 9]


def test_the_budget_keeps_the_must_ones_then_the_most_relevant_that_fit() -> None:
    library = {1: "a" * 40, 2: "b" * 400, 3: "c" * 40, 4: "d" * 40}
    line = estimate_tokens("[1] " + "a" * 40) + 1
    shown = within_budget([2, 3, 1, 4], library, budget_tokens=2 * line, must=[4])
    assert shown == {3: library[3], 4: library[4]}  # 2 does not fit, 3 does; 4 whatever the rank
    assert list(within_budget([4, 1], library, 10_000)) == [1, 4]  # rendered by id
    assert within_budget([1], library, 0, must=[9]) == {}  # an id not in the library is no experience


def test_the_prompts_show_what_shown_picks_not_the_whole_library() -> None:
    library = {i: f"When case {i} comes up, do thing {i}." for i in range(1, 501)}
    asked: list[tuple[str, list[str], list[int]]] = []

    def shown(step: Purpose, texts: Sequence[str], must: Collection[int] = ()) -> Mapping[int, str]:
        asked.append((step, list(texts), sorted(must)))
        return {i: library[i] for i in (*must, 250)}

    prompts: dict[str, str] = {}

    def remember(step: str, answer: str) -> object:
        def answer_it(messages: Sequence[Mapping[str, str]]) -> str:
            prompts[step] = messages[-1]["content"]
            return answer

        return answer_it

    script = {**GOOD_SCRIPT, **{s: remember(s, str(GOOD_SCRIPT[s])) for s in ("advantage", "operations")}}
    sample_list = samples()
    result = distill(
        Ledger(ScriptedLLM(script)),  # type: ignore[arg-type]
        LearningSettings(),
        sample_list,
        library,
        3,
        near=near_at(library),  # every new experience is close to [1]
        shown=shown,
    )
    assert [step for step, _, _ in asked] == ["advantage", "operations"]
    assert asked[0][1] == [s.query for s in sample_list] and asked[0][2] == []
    assert asked[1][1] == result.new_experiences and asked[1][2] == [1]  # the neighbour it may update
    assert "[250] When case 250" in prompts["advantage"] and "[251]" not in prompts["advantage"]
    assert "[1] When case 1 comes up" in prompts["operations"] and "[250]" in prompts["operations"]
    assert "[2] " not in prompts["operations"]
