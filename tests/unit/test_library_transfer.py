"""Shareable libraries, the pure part: a version as a document and back, bad documents refused
with their sentence, and an import that skips what the library has already."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from grpod.schema.errors import OperatorError
from grpod.schema.library import Experience
from grpod.workers.library import LibraryVersion, next_experiences
from grpod.workers.library_transfer import (
    MAX_DOCUMENT_BYTES,
    MAX_EXPERIENCES,
    CallModels,
    Document,
    SharedExperience,
    Source,
    build_document,
    imported_provenance,
    model_warning,
    parse_document,
    plan_import,
    provenance_references,
    read_document,
)

MOMENT = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
NO_CALLS = CallModels({}, {})

LEARNED = Experience(
    1,
    "When asked about API keys, search the documentation first.",
    (
        {"version": 1, "operation": "ADD", "distillations": [11], "groups": [4], "traces": ["tr-a", "tr-b", "tr-c"]},
        {"version": 3, "operation": "UPDATE", "distillations": [12, 11], "groups": [5], "traces": ["tr-c", "tr-d"]},
    ),
    usefulness=0.2,
)
MERGED = Experience(
    2,
    "When an invoice looks wrong, recompute it from the line items.",
    (
        {"version": 2, "operation": "ADD", "distillations": [13], "groups": [6], "traces": ["tr-e"]},
        {"version": 4, "operation": "UPDATE", "consolidation": True, "merged": [2, 7]},
    ),
)
IMPORTED = Experience(
    8,
    "When a refund is asked for, check the order's date first.",
    (
        {
            "version": 5,
            "operation": "ADD",
            "imported_from": {"domain": "billing", "version": 9, "models": ["deepseek-chat"], "id": 3},
        },
    ),
)
LIBRARY = LibraryVersion("support", 5, {1: LEARNED, 2: MERGED, 8: IMPORTED}, 9)
CALLS = CallModels({11: frozenset({"gpt-4o-mini"}), 12: frozenset({"gpt-4o"})}, {4: frozenset({"gpt-4o-mini"})})


def document(library: LibraryVersion = LIBRARY, calls: CallModels = CALLS, **fields: Any) -> dict[str, Any]:
    built = build_document(
        library,
        calls,
        configured_model="SmolLM2-135M-Instruct",
        embedding_model="all-MiniLM-L6-v2",
        labels=["production"],
        exported_at=MOMENT,
    )
    return built | fields


def raw(value: Any) -> bytes:
    return json.dumps(value).encode()


def test_the_document_names_its_source_its_models_and_summarises_each_experience() -> None:
    built = document()
    assert {key: value for key, value in built.items() if key != "experiences"} == {
        "format": "grpod-library",
        "format_version": 1,
        "domain": "support",
        "version": 5,
        "labels": ["production"],
        "exported_at": "2026-12-01T09:30:00+00:00",
        "models": ["deepseek-chat", "gpt-4o", "gpt-4o-mini"],
        "models_source": "recorded",
        "embedding_model": "all-MiniLM-L6-v2",
    }
    learned, merged, imported = built["experiences"]
    assert learned == {
        "id": 1,
        "text": LEARNED.text,
        "provenance": {
            "versions": [1, 3],
            "operations": ["ADD", "UPDATE"],
            "distillations": 2,
            "groups": 2,
            "traces": 4,
            "merged": [],
            "imported_from": [],
            "models": ["gpt-4o", "gpt-4o-mini"],
        },
    }
    # The merge's calls were the version's own (library_versions.llm_call_ids), not a distillation's.
    assert merged["provenance"]["merged"] == [7] and merged["provenance"]["models"] == ["gpt-4o-mini"]
    assert imported["provenance"]["imported_from"] == [
        {"domain": "billing", "version": 9, "models": ["deepseek-chat"], "id": 3}
    ]
    assert imported["provenance"]["models"] == ["deepseek-chat"]
    assert "tr-" not in json.dumps(built)  # counts, never trace ids


def test_with_no_call_recorded_the_document_names_the_configured_model_and_says_so() -> None:
    library = LibraryVersion("support", 1, {1: Experience(1, LEARNED.text, ({"version": 1, "operation": "ADD"},))}, 2)
    built = document(library, NO_CALLS)
    assert (built["models"], built["models_source"]) == (["SmolLM2-135M-Instruct"], "configured")
    assert built["experiences"][0]["provenance"]["models"] == []


def test_the_references_to_look_up_are_the_distillations_and_versions_of_the_provenance() -> None:
    assert provenance_references(LIBRARY) == ([11, 12, 13], [1, 2, 3, 4, 5])


def test_a_document_reads_back_as_its_source_and_texts() -> None:
    read = read_document(raw(document()), "shared.json")
    assert read.source == Source("support", 5, ("deepseek-chat", "gpt-4o", "gpt-4o-mini"))
    assert read.experiences == (
        SharedExperience(1, LEARNED.text),
        SharedExperience(2, MERGED.text),
        SharedExperience(8, IMPORTED.text),
    )
    # A byte order mark (an editor's) and missing ids (a hand-made file) are fine.
    bom = b"\xef\xbb\xbf" + raw(document(experiences=[{"text": LEARNED.text}]))
    assert read_document(bom, "x").experiences == (SharedExperience(None, LEARNED.text),)


def _bad(**fields: Any) -> bytes:
    return raw(document() | fields)


BAD_DOCUMENTS = [
    (b"{not json", "shared.json is not JSON (Expecting property name enclosed in double quotes at line 1, column 2)."),
    (b"\xff\xfe{}", "shared.json is not UTF-8 text; a library export is JSON."),
    (raw([1, 2]), 'shared.json is not a grpod library export: it has no "format": "grpod-library"'),
    (_bad(format="mem0"), 'shared.json is not a grpod library export: it has no "format": "grpod-library"'),
    (_bad(format_version="1"), "shared.json is not a grpod library export: its format_version is '1'"),
    (_bad(format_version=2), "shared.json is in format version 2 of a newer grpod; this one reads version 1."),
    (_bad(domain=""), "shared.json is not a grpod library export: it names no source domain"),
    (_bad(version=-1), "shared.json is not a grpod library export: its version is -1, not a version number"),
    (_bad(version=True), "shared.json is not a grpod library export: its version is True"),
    (_bad(models="gpt-4o"), "shared.json is not a grpod library export: its models are not a list of model names"),
    (_bad(experiences={"1": "x"}), "shared.json is not a grpod library export: it has no list of experiences"),
    (_bad(experiences=["When A, do B."]), "shared.json is not a grpod library export: experience 1 of its list is"),
    (_bad(experiences=[{"id": "one", "text": "x"}]), "shared.json is not a grpod library export: experience 1 of"),
    (_bad(experiences=[{"id": 4}]), "experience [4] of shared.json has no text."),
    (_bad(experiences=[{"id": 4, "text": "  \n"}]), "experience [4] of shared.json has an empty text."),
    (_bad(experiences=[{"text": 12}]), "experience 1 of the list of shared.json has no text."),
    (
        _bad(experiences=[{"id": 5, "text": "When A, " + "do B " * 500}]),
        "experience [5] of shared.json is 2508 characters long; an experience may have at most 2000.",
    ),
    (
        _bad(experiences=[{"text": "When A, do B."}] * (MAX_EXPERIENCES + 1)),
        f"shared.json holds {MAX_EXPERIENCES + 1} experiences; at most {MAX_EXPERIENCES} are imported at once.",
    ),
    (b" " * (MAX_DOCUMENT_BYTES + 1), f"shared.json is over {MAX_DOCUMENT_BYTES} bytes"),
]


@pytest.mark.parametrize(("content", "sentence"), BAD_DOCUMENTS)
def test_a_bad_document_is_refused_with_its_sentence(content: bytes, sentence: str) -> None:
    with pytest.raises(OperatorError) as refused:
        read_document(content, "shared.json")
    message = str(refused.value)
    assert message.startswith(sentence), message
    assert "\n" not in message and message.endswith(".")


def shared(*texts: str, domain: str = "billing", version: int = 9) -> Document:
    experiences = tuple(SharedExperience(i, text) for i, text in enumerate(texts, start=1))
    return Document(Source(domain, version, ("deepseek-chat",)), experiences)


def test_texts_the_library_has_are_skipped_and_the_rest_become_adds() -> None:
    library = {1: "When asked about API keys, search the documentation first.", 4: "When unsure, ask a question."}
    plan = plan_import(
        shared(
            "when asked about API keys,   search the documentation first",  # the same, written otherwise
            "When a refund is asked for, check the order's date first.",
            "WHEN A REFUND IS ASKED FOR, CHECK THE ORDER'S DATE FIRST!",  # twice in the file
            "When the invoice is wrong, recompute it.",
        ),
        library,
        32,
    )
    assert [(op.kind, op.text, op.experience_id) for op in plan.operations] == [
        ("ADD", "When a refund is asked for, check the order's date first.", None),
        ("ADD", "When the invoice is wrong, recompute it.", None),
    ]
    assert {op.reason for op in plan.operations} == {"imported from billing version 9"}
    assert [(s.source_id, s.same_as) for s in plan.skipped] == [(1, 1), (3, None)]
    assert [(n.action, n.why) for n in plan.notes] == [
        ("dropped", "already in the library as experience 1"),
        ("dropped", "twice in the file"),
    ]
    again = plan_import(shared("When A happens, do B."), {7: "When A happens, do B."}, 32)
    assert again.operations == () and [s.same_as for s in again.skipped] == [7]


def test_texts_are_validated_as_any_operation_is() -> None:
    long = " ".join(f"word{i}" for i in range(40))
    plan = plan_import(shared("Be nice.", long, "When 2022 2022 2022 2022 2022 2022 2022 2022"), {}, 32)
    ((kind, text),) = [(op.kind, op.text) for op in plan.operations]
    assert kind == "ADD" and text == " ".join(f"word{i}" for i in range(32))
    assert [(n.action, n.why) for n in plan.notes] == [
        ("dropped", "2 words are too few for a rule"),
        ("repaired", "cut from 40 to 32 words"),
        ("dropped", "the text repeats itself (a degenerate answer)"),
    ]
    # Two long texts that agree up to the limit are one experience.
    twins = plan_import(shared(long, long + " more"), {}, 32)
    assert len(twins.operations) == 1 and [s.source_id for s in twins.skipped] == [2]


def test_each_imported_experience_records_where_it_came_from() -> None:
    given = shared("When a refund is asked for, check the order's date first.", "When the invoice is wrong, fix it.")
    plan = plan_import(given, {}, 32)
    parent = LibraryVersion("support", 3, {}, 12)
    made, next_id = next_experiences(parent, plan.operations, 4, imported_provenance(plan, given.source))
    assert next_id == 14
    assert [(e.id, e.provenance) for e in made.values()] == [
        (
            12,
            (
                {
                    "version": 4,
                    "operation": "ADD",
                    "imported_from": {"domain": "billing", "version": 9, "models": ["deepseek-chat"], "id": 1},
                },
            ),
        ),
        (
            13,
            (
                {
                    "version": 4,
                    "operation": "ADD",
                    "imported_from": {"domain": "billing", "version": 9, "models": ["deepseek-chat"], "id": 2},
                },
            ),
        ),
    ]


def test_an_exported_version_imported_elsewhere_keeps_its_texts_and_names_its_models_and_source() -> None:
    read = parse_document(document(), "shared.json")
    plan = plan_import(read, {}, 48)
    parent = LibraryVersion("elsewhere", 0, {}, 1)
    made, _ = next_experiences(parent, plan.operations, 1, imported_provenance(plan, read.source))
    assert [e.text for e in made.values()] == [e.text for e in LIBRARY.experiences.values()]
    assert {e.provenance[0]["imported_from"]["domain"] for e in made.values()} == {"support"}
    # Exported again, the new library still names the models that learned the experiences first.
    again = document(LibraryVersion("elsewhere", 1, made, 4), NO_CALLS)
    assert (again["models"], again["models_source"]) == (["deepseek-chat", "gpt-4o", "gpt-4o-mini"], "recorded")


def test_another_model_than_this_deployments_gets_a_warning_not_a_refusal() -> None:
    assert model_warning(Source("billing", 9, ("gpt-4o",)), "gpt-4o") is None
    warning = model_warning(Source("billing", 9, ("gpt-4o", "gpt-4o-mini")), "gpt-4o")
    assert warning is not None and warning.startswith(
        "the experiences of billing version 9 were learned with gpt-4o, gpt-4o-mini, and this deployment's LLM is "
        "gpt-4o; experiences learned with one model may not serve another"
    )
    assert "no model it names" in (model_warning(Source("billing", 9, ()), "gpt-4o") or "")
