"""Consolidation on the real database, with the bundled embedder and a scripted LLM: planted
near-duplicates are merged under one stable id, a library over both budgets ends within them,
retirement follows the evidence rule, and each consolidation is a normal version."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import psycopg
import pytest

from grpod.schema.library import block_tokens
from grpod.sdk import LibraryCache
from grpod.workers import consolidation_store, library_store
from grpod.workers.embeddings import LocalEmbedder
from grpod.workers.operations import Operation

from ..factories import reward, trace
from ..scripted_llm import ScriptedLLM
from .stored import ingest, publish

DUPLICATES = [
    "When asked to rotate an API key, open Settings > Security > API keys.",
    "When asked to rotate an API key, open Settings > Security > API keys first.",
    "When a user asks to rotate an API key, open Settings > Security > API keys.",
]
DISTINCT = [
    "When an invoice total looks wrong, recompute it from the line items before answering.",
    "When a shipment is late, give the carrier's tracking link and the expected date.",
    "When someone forgot their password, send the reset link and never ask for the old one.",
]
MERGED = "When asked to rotate an API key, open Settings > Security > API keys, then revoke the old key."


@pytest.fixture(scope="module")
def embedder() -> LocalEmbedder:
    return LocalEmbedder()


def settle(conn: psycopg.Connection[Any], **settings: object) -> None:
    conn.execute("UPDATE domains SET settings = settings || %s::jsonb WHERE name = 'support'", [json.dumps(settings)])


def served(conn: psycopg.Connection[Any]) -> dict[int, str]:
    return library_store.load(conn, "support", library_store.labels(conn, "support")["production"]).texts()


def merge_llm() -> ScriptedLLM:
    return ScriptedLLM({"merge": json.dumps({"text": MERGED, "reason": "the three say the same"})})


def test_planted_near_duplicates_are_merged_under_the_oldest_id(
    conn: psycopg.Connection[Any], embedder: LocalEmbedder
) -> None:
    ingest(conn, trace("t1"))
    publish(conn, "support", [Operation("ADD", text) for text in [DISTINCT[0], *DUPLICATES, *DISTINCT[1:]]])
    llm = merge_llm()

    run = consolidation_store.consolidate(conn, llm, embedder, "support")

    assert run.status == "published" and run.parent == 1 and run.version == 2 and run.label == "production"
    assert llm.calls == ["merge"]  # one call for the one cluster
    assert [merge.cluster for merge in run.merges] == [(2, 3, 4)]
    assert served(conn) == {1: DISTINCT[0], 2: MERGED, 5: DISTINCT[1], 6: DISTINCT[2]}
    version = library_store.load(conn, "support", 2)
    assert version.experiences[2].provenance[-1] == {
        "version": 2,
        "operation": "UPDATE",
        "consolidation": True,
        "merged": [2, 3, 4],
    }
    row = conn.execute(
        "SELECT operations, created_by, llm_call_ids FROM library_versions WHERE domain = 'support' AND version = 2"
    ).fetchone()
    assert row is not None
    operations, created_by, calls = row
    assert created_by == "consolidation"
    assert [(op["operation"], op["id"]) for op in operations] == [("UPDATE", 2), ("DELETE", 3), ("DELETE", 4)]
    assert operations[1]["reason"] == "merged into [2] with [2], [3], [4]"
    assert conn.execute("SELECT purpose FROM llm_calls WHERE id = ANY(%s)", [calls]).fetchall() == [("merge",)]
    # Every experience left is scored, and the next run has nothing to do.
    assert all(e.usefulness is not None for e in version.experiences.values())
    again = consolidation_store.consolidate(conn, merge_llm(), embedder, "support")
    assert again.status == "no_change" and library_store.current_version(conn, "support") == 2


def test_a_library_over_both_budgets_ends_within_them(conn: psycopg.Connection[Any], embedder: LocalEmbedder) -> None:
    ingest(conn, trace("t1"))
    topics = ["invoices", "refunds", "shipping", "passwords", "webhooks", "exports", "teams", "billing", "quotas"]
    texts = [
        f"When a user asks about {topic} in region {n}, check the {topic} page for region {n}."
        for n in range(1, 5)
        for topic in topics
    ]
    publish(conn, "support", [Operation("ADD", text) for text in texts])
    settle(conn, max_experiences=20, max_prompt_tokens=300, merge_distance=0.0)

    run = consolidation_store.consolidate(conn, ScriptedLLM({}), embedder, "support")

    after = served(conn)
    assert run.status == "published" and run.experiences == (36, len(after))
    assert len(after) <= 20 and block_tokens(after) <= 300
    assert run.prompt_tokens[1] == block_tokens(after) and run.prompt_tokens[0] > 300
    assert len(run.retired) == 36 - len(after) and all(r["why"] for r in run.retired)
    # Within both, and no more was retired than needed: one more experience would break a budget.
    back = {r["id"]: r["text"] for r in run.retired[-1:]}
    assert len(after) + 1 > 20 or block_tokens(after | back) > 300


def test_retirement_follows_the_reward_record_of_the_versions_that_added_each(
    conn: psycopg.Connection[Any], embedder: LocalEmbedder, database_url: str
) -> None:
    ingest(conn, trace("t0"))
    publish(conn, "support", [Operation("ADD", DISTINCT[0])])  # version 1
    publish(conn, "support", [Operation("ADD", DISTINCT[1])])  # version 2
    publish(conn, "support", [Operation("ADD", DISTINCT[2])])  # version 3: added nothing to serve with yet
    # Served with the empty library: 0.5; with version 1: 0.9 (it helped); with version 2: 0.3 (it hurt).
    events: list[dict[str, Any]] = []
    for version, value in ((0, 0.5), (1, 0.9), (2, 0.3)):
        for n in range(40):
            trace_id = f"v{version}-{n}"
            events += [trace(trace_id, library_version=version or None), reward(trace_id, value)]
    ingest(conn, *events)
    settle(conn, max_experiences=2, merge_distance=0.0)

    run = consolidation_store.consolidate(conn, ScriptedLLM({}), embedder, "support")

    assert [r["id"] for r in run.retired] == [2]  # the one whose version lowered rewards
    assert run.retired[0]["lift"] < 0 and run.retired[0]["traces"] == 40
    scores: Mapping[int, float | None] = {
        i: e.usefulness for i, e in library_store.load(conn, "support", run.version or 0).experiences.items()
    }
    assert set(scores) == {1, 3}
    assert (scores[1] or 0) > (scores[3] or 0)  # the one with the reward record is served first
    # An agent whose budget holds one experience gets the one with the best evidence, not the oldest
    # or the newest, and the version it is told identifies exactly that.
    with LibraryCache(database_url, listen=False, token_budget=block_tokens({1: DISTINCT[0]})) as cache:
        library = cache.get("support")
    assert library.version == run.version
    assert library.prompt.splitlines()[1:] == [f"[1] {DISTINCT[0]}"]
    publish(conn, "support", [Operation("ADD", "When a refund is asked for, check the order's payment state first.")])
    with LibraryCache(database_url, listen=False, token_budget=block_tokens({1: DISTINCT[0]})) as cache:
        newer = cache.get("support")
    assert newer.version == (run.version or 0) + 1 and newer.prompt == library.prompt  # an unscored one waits


def test_a_consolidation_is_a_normal_version_gated_frozen_and_rolled_back(
    conn: psycopg.Connection[Any], embedder: LocalEmbedder
) -> None:
    ingest(conn, trace("t1"))
    publish(conn, "support", [Operation("ADD", text) for text in DUPLICATES])
    settle(conn, publish_policy="gated")
    conn.execute("UPDATE domains SET frozen_at = now() WHERE name = 'support'")
    assert consolidation_store.consolidate(conn, merge_llm(), embedder, "support").status == "frozen"
    conn.execute("UPDATE domains SET frozen_at = NULL WHERE name = 'support'")

    run = consolidation_store.consolidate(conn, merge_llm(), embedder, "support")

    assert run.status == "published" and run.label == "candidate"
    assert library_store.labels(conn, "support") == {"candidate": 2, "production": 1}
    with conn.transaction():
        library_store.lock_updates_now(conn, "support")
        library_store.discard_candidate(conn, "support", actor="operator", reason="not yet")
    assert library_store.labels(conn, "support") == {"production": 1}


def test_the_scheduled_consolidation_makes_one_version_per_slot_whoever_sends_it(
    conn: psycopg.Connection[Any], database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from grpod.daemon import resources
    from grpod.daemon.tasks import consolidate_libraries

    from ..scripted_llm import ScriptedEndpoint

    ingest(conn, trace("t1"))
    publish(conn, "support", [Operation("ADD", text) for text in DUPLICATES])
    with ScriptedEndpoint({"merge": json.dumps({"text": MERGED, "reason": "same"})}) as endpoint:
        monkeypatch.setenv("GRPOD_DATABASE_URL", database_url)
        monkeypatch.setenv("GRPOD_LLM_BASE_URL", endpoint.url)
        monkeypatch.setenv("GRPOD_LLM_MODEL", "scripted")
        resources.forget()
        slot = "2026-12-01T10:00:00+00:00"
        first = consolidate_libraries.apply(kwargs={"slot": slot}, task_id="beat-1").get()
        # The second beat's copy of the same slot; then a planted near-duplicate the next slot merges.
        second = consolidate_libraries.apply(kwargs={"slot": slot}, task_id="beat-2").get()
        publish(conn, "support", [Operation("ADD", DUPLICATES[0])])
        later = consolidate_libraries.apply(kwargs={"slot": "2026-12-01T11:00:00+00:00"}, task_id="beat-2").get()
        resources.forget()
    assert first == {"support": "published"} and later == {"support": "published"}
    assert second == {"skipped": f"slot {slot} of grpod.library.consolidate is claimed by another task"}
    assert endpoint.calls == ["merge", "merge"]
    made = conn.execute("SELECT count(*) FROM library_versions WHERE created_by = 'consolidation'").fetchone()
    assert made == (2,)
