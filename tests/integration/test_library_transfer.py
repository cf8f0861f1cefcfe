"""Shareable libraries against the real PostgreSQL: a version learned by a real distillation (a
scripted LLM, the real ledger) exported with its models and provenance summarised, and imported
into another domain as a candidate that the judge's usual path promotes on live rewards."""

from __future__ import annotations

import json
import re
from typing import Any

import psycopg
import pytest

from grpod.daemon import library_admin
from grpod.schema.errors import OperatorError
from grpod.workers import consolidation_store, library_store
from grpod.workers.library_transfer import Document, parse_document
from grpod.workers.operations import Operation

from ..scripted_llm import ScriptedLLM
from .planted import OneTopic, applied_distillation
from .stored import publish
from .test_library import OPERATOR, events, make_domain, served

LEARNED = "When asked about account settings, search the documentation before answering."
OTHER = "When asked about account settings, search the documentation, then answer."
MERGED = "When asked about account settings, search the documentation first and then answer."


class Merger(ScriptedLLM):
    model = "merger-model"


def learned_support(conn: psycopg.Connection[Any]) -> int:
    """Domain support's version 1, made by a distillation and its update window; its distillation id."""
    distillation = applied_distillation(conn, "s-")
    assert library_store.load(conn, "support", 1).texts() == {1: LEARNED}
    return distillation


def exported(conn: psycopg.Connection[Any]) -> Document:
    """Support's production exported as a file holds it, read back."""
    text = json.dumps(library_admin.export_version(conn, "support", configured_model="configured-model"))
    return parse_document(json.loads(text), "support.json")


def test_an_export_names_the_models_behind_each_experience_and_summarises_its_provenance(
    conn: psycopg.Connection[Any],
) -> None:
    distillation = learned_support(conn)
    samples = conn.execute("SELECT samples FROM distillations WHERE id = %s", (distillation,)).fetchone()
    assert samples is not None and len(samples[0]) == 5

    document = library_admin.export_version(conn, "support", configured_model="configured-model")

    assert (document["format"], document["format_version"], document["domain"], document["version"]) == (
        "grpod-library",
        1,
        "support",
        1,
    )
    assert (document["models"], document["models_source"]) == (["scripted"], "recorded")
    assert (document["embedding_model"], document["labels"]) == ("one-topic-test", ["production"])
    (experience,) = document["experiences"]
    assert experience == {
        "id": 1,
        "text": LEARNED,
        "provenance": {
            "versions": [1],
            "operations": ["ADD"],
            "distillations": 1,
            "groups": 1,
            "traces": 5,
            "merged": [],
            "imported_from": [],
            "models": ["scripted"],
        },
    }

    # A version an operator's publish made (no LLM call) and a consolidation's merge (its own call).
    publish(conn, "support", [Operation("ADD", OTHER)])
    run = consolidation_store.consolidate(
        conn, Merger({"merge": json.dumps({"text": MERGED, "reason": "one rule"})}), OneTopic(), "support"
    )
    assert (run.status, run.version) == ("published", 3), run
    merged = library_admin.export_version(conn, "support", configured_model="configured-model")
    (kept,) = merged["experiences"]
    assert (kept["id"], kept["text"]) == (1, MERGED)
    assert kept["provenance"]["versions"] == [1, 3] and kept["provenance"]["merged"] == [2]
    assert kept["provenance"]["models"] == ["merger-model", "scripted"]
    assert merged["models"] == ["merger-model", "scripted"]

    # Version 2's new experience came from a publish with no LLM call: its summary names no model,
    # and a library with no call recorded at all names the configured model, and says so.
    bare = library_admin.export_version(conn, "support", 2, configured_model="configured-model")
    assert [e["provenance"]["models"] for e in bare["experiences"]] == [["scripted"], []]
    make_domain(conn, "fresh")
    publish(conn, "fresh", [Operation("ADD", OTHER)])
    unknown = library_admin.export_version(conn, "fresh", configured_model="configured-model")
    assert (unknown["models"], unknown["models_source"]) == (["configured-model"], "configured")


def test_exporting_what_does_not_exist_is_one_sentence(conn: psycopg.Connection[Any]) -> None:
    make_domain(conn)
    for version, sentence in [
        (None, "domain 'support' has no production version to export; give --version N."),
        (0, "version 0 is the empty library; there is nothing to export."),
        (4, "domain 'support' has no library version 4; `grpod library history support` lists them."),
    ]:
        with pytest.raises(OperatorError, match="^" + re.escape(sentence)):
            library_admin.export_version(conn, "support", version, configured_model="m")
    with pytest.raises(OperatorError, match=r"^there is no domain 'nowhere'"):
        library_admin.export_version(conn, "nowhere", configured_model="m")


def test_an_import_is_a_candidate_with_provenance_and_the_judge_promotes_it_on_rewards(
    conn: psycopg.Connection[Any],
) -> None:
    learned_support(conn)
    document = exported(conn)
    make_domain(conn, "billing", promotion_min_traces=20, promotion_margin=0.05)  # publish policy: auto
    own = publish(conn, "billing", [Operation("ADD", "When billing, check the plan first.")])
    assert library_store.labels(conn, "billing") == {"production": own}

    report = library_admin.import_document(
        conn, "billing", document, reason="share support's rules", actor=OPERATOR, configured_model="scripted"
    )

    assert (report["version"], report["parent"], report["label"], report["model_warning"]) == (2, 1, "candidate", None)
    assert report["source"] == {"domain": "support", "version": 1, "models": ["scripted"]}
    assert report["added"] == [{"id": 2, "text": LEARNED, "from": 1}] and report["skipped"] == []
    # Candidate, not production, under the default auto policy: production is unchanged.
    assert library_store.labels(conn, "billing") == {"production": own, "candidate": 2}
    imported = library_store.load(conn, "billing", 2)
    assert imported.texts() == {1: "When billing, check the plan first.", 2: LEARNED}
    assert imported.experiences[2].provenance == (
        {
            "version": 2,
            "operation": "ADD",
            "imported_from": {"domain": "support", "version": 1, "models": ["scripted"], "id": 1},
        },
    )
    assert imported.experiences[1] == library_store.load(conn, "billing", 1).experiences[1]
    (newest, *_) = library_admin.history(conn, "billing")
    assert (newest["created_by"], newest["reason"], newest["labels"]) == (
        "import",
        "share support's rules",
        ["candidate"],
    )
    assert [op["operation"] for op in newest["operations"]] == ["ADD"]
    assert events(conn, "billing")[-1] == ("publish", "candidate", None, 2, OPERATOR)

    # The same file again adds nothing and makes no version.
    again = library_admin.import_document(
        conn, "billing", document, reason="again", actor=OPERATOR, configured_model="scripted"
    )
    assert (again["version"], again["label"], again["added"]) == (None, None, [])
    assert again["skipped"] == [{"from": 1, "text": LEARNED, "same_as": 2}]
    assert library_admin.history(conn, "billing")[0]["version"] == 2
    assert library_store.labels(conn, "billing") == {"production": own, "candidate": 2}

    # The judge's usual path: the candidate is promoted on this domain's own rewards.
    served(conn, "billing", own, [0.0, 1.0] * 30, "base-")
    served(conn, "billing", 2, [1.0, 1.0, 1.0, 0.0] * 5, "imported-")
    judged = {j.label: (j.version, j.verdict.decision) for j in library_store.judge_domain(conn, "billing")}
    assert judged["candidate"] == (2, "promote")
    assert library_store.labels(conn, "billing") == {"production": 2}


def test_an_import_is_a_candidate_with_production_pinned_and_records_what_validation_cut(
    conn: psycopg.Connection[Any],
) -> None:
    make_domain(conn, "billing", experience_max_words=8)
    publish(conn, "billing", [Operation("ADD", "When billing, check the plan first.")])
    library_admin.pin(conn, "billing", None, reason="audit", actor=OPERATOR)
    long = "When a refund is asked for, check the order date and the payment method first."
    document = parse_document(
        {
            "format": "grpod-library",
            "format_version": 1,
            "domain": "support",
            "version": 7,
            "models": ["gpt-4o"],
            "experiences": [{"id": 3, "text": long}, {"id": 4, "text": "Be nice."}],
        },
        "hand-made.json",
    )

    report = library_admin.import_document(
        conn, "billing", document, reason="seed", actor=OPERATOR, configured_model="scripted"
    )

    assert report["label"] == "candidate" and library_store.labels(conn, "billing") == {"production": 1, "candidate": 2}
    assert report["added"] == [{"id": 2, "text": "When a refund is asked for, check the", "from": 3}]
    assert report["model_warning"] is not None and "learned with gpt-4o" in report["model_warning"]
    notes = library_admin.history(conn, "billing")[0]["notes"]
    assert [(n["action"], n["why"]) for n in notes] == [
        ("repaired", "cut from 15 to 8 words"),
        ("dropped", "2 words are too few for a rule"),
    ]
    assert library_store.judge_domain(conn, "billing") == []  # a pinned domain waits, as for learning

    with pytest.raises(OperatorError, match=r"^there is no domain 'nowhere'"):
        library_admin.import_document(conn, "nowhere", document, reason="x", actor=OPERATOR, configured_model="m")
    with pytest.raises(OperatorError, match=r"^--reason must say why"):
        library_admin.import_document(conn, "billing", document, reason=" ", actor=OPERATOR, configured_model="m")
    assert library_admin.history(conn, "billing")[0]["version"] == 2
