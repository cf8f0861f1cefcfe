"""The library as an agent sees it: the prompt block within a token budget, and version diffs."""

from __future__ import annotations

import random

import pytest

from grpod.schema.library import (
    PROMPT_HEADER,
    Experience,
    Library,
    estimate_tokens,
    experience_lines,
    render_prompt,
)
from grpod.workers.library import LibraryVersion as StoredLibrary
from grpod.workers.library import diff_libraries


def _cost(prompt: str) -> int:
    """What render_prompt charges for a block: the header, then each experience line and its line break."""
    header, *lines = prompt.split("\n")
    return estimate_tokens(header) + sum(estimate_tokens(line) + 1 for line in lines)


def _ids(prompt: str) -> list[int]:
    return [int(line[1 : line.index("]")]) for line in prompt.split("\n")[1:]]


def _text(tokens: int, fill: str = "x") -> str:
    """A text whose line ``[7] ...`` is exactly ``tokens`` tokens long (4 characters each)."""
    return fill * (4 * tokens - len("[7] "))


def test_an_empty_library_has_no_prompt() -> None:
    assert render_prompt({}) == ""
    assert render_prompt({}, token_budget=1000) == ""
    assert experience_lines({}) == []


def test_one_line_per_experience_by_id_after_the_header() -> None:
    experiences = {
        3: "When C, check D.",
        1: "When A, try B.",
        10: "Always cite the source.",
        2: "Prefer short answers.",
    }
    assert experience_lines(experiences) == [
        "[1] When A, try B.",
        "[2] Prefer short answers.",
        "[3] When C, check D.",
        "[10] Always cite the source.",
    ]
    prompt = render_prompt(experiences)
    assert prompt.split("\n") == [PROMPT_HEADER, *experience_lines(experiences)]
    assert render_prompt(experiences, token_budget=10_000) == prompt


def test_estimate_tokens_rounds_characters_up_to_tokens() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("abcd") == 1
    assert estimate_tokens("abcde") == 2


def test_a_small_budget_leaves_the_highest_ids_out_first() -> None:
    experiences = {7: _text(5), 8: _text(5), 9: _text(5)}
    header = estimate_tokens(PROMPT_HEADER)
    everything = render_prompt(experiences)
    assert _cost(everything) == header + 3 * 6

    assert render_prompt(experiences, token_budget=header + 3 * 6) == everything
    two = render_prompt(experiences, token_budget=header + 3 * 6 - 1)
    assert _ids(two) == [7, 8]
    assert _cost(two) == header + 2 * 6
    assert render_prompt(experiences, token_budget=header + 2 * 6) == two
    assert _ids(render_prompt(experiences, token_budget=header + 2 * 6 - 1)) == [7]
    for prompt in (everything, two):
        assert estimate_tokens(prompt) <= _cost(prompt)


def test_a_long_experience_is_not_skipped_to_fit_a_newer_one() -> None:
    experiences = {1: _text(3), 2: _text(50), 3: _text(3)}
    prompt = render_prompt(experiences, token_budget=estimate_tokens(PROMPT_HEADER) + 20)
    assert _ids(prompt) == [1]


def test_a_budget_too_small_for_any_experience_gives_no_prompt() -> None:
    experiences = {4: _text(10), 5: _text(1)}
    header = estimate_tokens(PROMPT_HEADER)
    assert render_prompt(experiences, token_budget=header + 10) == ""
    assert _ids(render_prompt(experiences, token_budget=header + 11)) == [4]
    for budget in (0, 1, header, -5):
        assert render_prompt(experiences, token_budget=budget) == ""


def test_the_prompt_is_the_longest_run_of_lowest_ids_within_the_budget() -> None:
    rng = random.Random(1)
    for _ in range(300):
        ids = rng.sample(range(1, 60), rng.randint(1, 8))
        experiences = {i: "When " + "y" * rng.randint(0, 80) + "." for i in ids}
        budget = rng.randint(0, 150)
        prompt = render_prompt(experiences, token_budget=budget)
        lines = experience_lines(experiences)
        if prompt == "":
            assert estimate_tokens(PROMPT_HEADER) + estimate_tokens(lines[0]) + 1 > budget
            continue
        kept = prompt.split("\n")
        assert kept[0] == PROMPT_HEADER
        assert kept[1:] == lines[: len(kept) - 1]  # a prefix, by id
        assert _cost(prompt) <= budget
        assert estimate_tokens(prompt) <= budget
        if len(kept) - 1 < len(lines):  # the next line would not have fit
            assert _cost(prompt) + estimate_tokens(lines[len(kept) - 1]) + 1 > budget


def test_library_from_rows() -> None:
    rows = [{"id": 2, "text": "When B, C."}, {"id": 1, "text": "When A, B."}]
    library = Library.from_rows("support", "production", 3, rows, None)
    assert library.domain == "support" and library.label == "production"
    assert library.version == 3
    assert sorted((e.id, e.text) for e in library.experiences) == [(1, "When A, B."), (2, "When B, C.")]
    assert all(isinstance(e, Experience) for e in library.experiences)
    assert library.prompt == f"{PROMPT_HEADER}\n[1] When A, B.\n[2] When B, C."
    assert library.prompt.index("[1] When A, B.") < library.prompt.index("[2] When B, C.")


def test_library_from_rows_within_a_budget_keeps_every_experience() -> None:
    rows: list[dict[str, object]] = [{"id": "5", "text": "When E, F."}, {"id": 6, "text": _text(40)}]
    header = estimate_tokens(PROMPT_HEADER)
    library = Library.from_rows("support", "candidate", 4, rows, header + estimate_tokens("[5] When E, F.") + 1)
    assert [e.id for e in library.experiences] == [5, 6]
    assert library.prompt == f"{PROMPT_HEADER}\n[5] When E, F."
    assert Library.from_rows("support", "production", 0, [], None) == Library("support", "production", 0)


def _stored(version: int, texts: dict[int, str]) -> StoredLibrary:
    experiences = {i: Experience(i, text, ({"version": version, "operation": "ADD"},)) for i, text in texts.items()}
    return StoredLibrary("support", version, experiences, max(texts, default=0) + 1)


def test_diff_libraries_lists_added_removed_and_changed() -> None:
    before = _stored(1, {1: "When A, B.", 2: "When B, C.", 3: "When C, D.", 5: "When E, F."})
    after = _stored(2, {2: "When B, C.", 3: "When C, do D.", 4: "When D, E.", 5: "When E, G.", 6: "When F, G."})
    diff = diff_libraries(before, after)
    assert diff["added"] == [
        {"id": 4, "text": "When D, E.", "provenance": [{"version": 2, "operation": "ADD"}]},
        {"id": 6, "text": "When F, G.", "provenance": [{"version": 2, "operation": "ADD"}]},
    ]
    assert diff["removed"] == [{"id": 1, "text": "When A, B.", "provenance": [{"version": 1, "operation": "ADD"}]}]
    assert diff["changed"] == [
        {"id": 3, "from": "When C, D.", "to": "When C, do D."},
        {"id": 5, "from": "When E, F.", "to": "When E, G."},
    ]


@pytest.mark.parametrize("texts", [{}, {1: "When A, B."}, {1: "When A, B.", 2: "When B, C."}])
def test_diff_of_a_library_with_itself_is_empty(texts: dict[int, str]) -> None:
    library = _stored(1, texts)
    assert diff_libraries(library, library) == {"added": [], "removed": [], "changed": []}
    empty = _stored(0, {})
    assert [entry["id"] for entry in diff_libraries(empty, library)["added"]] == sorted(texts)
    assert [entry["id"] for entry in diff_libraries(library, empty)["removed"]] == sorted(texts)


def test_an_experience_keeps_its_score_while_its_text_stays() -> None:
    from grpod.workers.library import next_experiences
    from grpod.workers.operations import Operation

    parent = StoredLibrary(
        "support", 3, {1: Experience(1, "When A, B.", (), 0.3), 2: Experience(2, "When C, D.", (), 0.2)}, 3
    )
    operations = [Operation("UPDATE", "When C, do D.", 2), Operation("ADD", "When E, F.")]
    experiences, _ = next_experiences(parent, operations, 4, lambda op: {})
    assert {i: e.usefulness for i, e in experiences.items()} == {1: 0.3, 2: None, 3: None}
    scored, _ = next_experiences(parent, [], 4, lambda op: {}, {1: 0.5})
    assert {i: e.usefulness for i, e in scored.items()} == {1: 0.5, 2: 0.2}
    assert Experience.from_json(experiences[1].to_json()) == experiences[1]
    assert "usefulness" not in experiences[3].to_json()
