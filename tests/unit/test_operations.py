from __future__ import annotations

import pytest

from grpod.workers.operations import Operation, apply, consolidate, normalised, parse_operations, validate

LIBRARY = {3: "When a user asks about API keys, link the rotation page first.", 7: "When tests fail, read the log."}


def test_parse_tolerates_the_usual_variations() -> None:
    data = {
        "operations": [
            {"operation": "add", "content": "When X, do Y.", "reason": "new"},
            {"op": "UPDATE", "id": "E3", "text": "When X, do Z."},
            {"type": "Delete", "experience_id": "[7]", "content": None},
            {"kind": "none"},
        ]
    }
    operations, notes = parse_operations(data)
    assert [(o.kind, o.experience_id, o.text) for o in operations] == [
        ("ADD", None, "When X, do Y."),
        ("UPDATE", 3, "When X, do Z."),
        ("DELETE", 7, None),
        ("NONE", None, None),
    ]
    assert notes == []


@pytest.mark.parametrize(
    ("data", "why"),
    [
        ("not json at all", "no list of operations"),
        ({"ops": []}, "no list of operations"),
        ([42], "must be an object"),
        ([{"operation": "MERGE", "text": "x"}], "unknown operation 'MERGE'"),
        ([{"operation": "DELETE", "id": "seven"}], "is not a number"),
    ],
)
def test_parse_drops_what_it_cannot_read_with_a_reason(data: object, why: str) -> None:
    operations, notes = parse_operations(data)
    assert operations == []
    assert why in notes[0].why and notes[0].action == "dropped"


def test_a_delete_without_text_is_kept_and_an_unknown_delete_dropped() -> None:
    valid, notes = validate([Operation("DELETE", None, 7), Operation("DELETE", "x", 99)], LIBRARY)
    assert valid == [Operation("DELETE", None, 7)]
    assert notes[0].why == "DELETE of unknown experience 99"


def test_empty_text_is_dropped_and_over_long_text_cut() -> None:
    long_text = " ".join(f"word{i}" for i in range(60))
    valid, notes = validate(
        [Operation("ADD", None), Operation("UPDATE", "", 3), Operation("ADD", long_text)], LIBRARY, 10
    )
    assert [o.text for o in valid] == [" ".join(f"word{i}" for i in range(10))]
    assert [n.why for n in notes] == ["ADD without text", "UPDATE without text", "cut from 60 to 10 words"]


def test_unknown_update_becomes_an_add_and_duplicates_are_dropped() -> None:
    valid, notes = validate(
        [
            Operation("UPDATE", "When asked for refunds, check the order date.", 42),
            Operation("ADD", "when tests fail, read the log"),
            Operation("UPDATE", LIBRARY[3], 3),
            Operation("NONE"),
        ],
        LIBRARY,
    )
    assert valid == [Operation("ADD", "When asked for refunds, check the order date.", None)]
    assert notes[0].action == "repaired" and "unknown id 42" in notes[0].why
    assert notes[1].why == "the same as experience 7"


def test_consolidation_rules() -> None:
    operations = [
        Operation("UPDATE", "first", 3),
        Operation("UPDATE", "second", 3),
        Operation("UPDATE", "changed", 7),
        Operation("DELETE", None, 7),
        Operation("DELETE", None, 7),
        Operation("ADD", "When X, do Y."),
        Operation("ADD", "when x, do y"),
    ]
    merged, notes = consolidate(operations)
    assert merged == [Operation("DELETE", None, 7), Operation("UPDATE", "second", 3), Operation("ADD", "When X, do Y.")]
    assert {n.why for n in notes} == {
        "the experience is deleted in the same window",
        "several UPDATEs of one id: the last kept",
        "the same ADD came from another group",
    }


def test_apply_never_renumbers_and_never_reuses_ids() -> None:
    applied = apply(LIBRARY, [Operation("DELETE", None, 7), Operation("ADD", "A"), Operation("UPDATE", "B", 3)], 8)
    assert applied.library == {3: "B", 8: "A"}
    assert applied.next_id == 9 and applied.added == {8: "A"}
    again = apply(applied.library, [Operation("ADD", "C")], applied.next_id)
    assert 7 not in again.library and again.library[9] == "C"


def test_normalised_ignores_case_spacing_and_final_punctuation() -> None:
    assert normalised("  When X,   do Y. ") == normalised("when x, do y")


def test_a_text_too_short_to_be_a_rule_is_dropped() -> None:
    valid, notes = validate([Operation("ADD", "When..."), Operation("UPDATE", "When X, do", 1)], {1: "When A, do B."})
    assert valid == []
    assert [note.why for note in notes] == ["1 words are too few for a rule", "3 words are too few for a rule"]


def test_a_text_that_repeats_itself_is_dropped_and_a_real_rule_is_not() -> None:
    looping = "When " + " ".join(["2022"] * 30)
    rule = "When a query names an API key, search the security docs before answering, and quote the menu path."
    valid, notes = validate([Operation("ADD", looping), Operation("ADD", rule)], {})
    assert [op.text for op in valid] == [rule]
    assert [note.why for note in notes] == ["the text repeats itself (a degenerate answer)"]
