"""Distillation against the real PostgreSQL with pgvector, on groups built from stored traces and rewards.

The full run uses the real bundled model (SmolLM2 via llama.cpp) and checks structure and
invariants, not wording; the store's rules (idempotency, windows, failures, ids) are pinned with
a scripted LLM, whose answers are known, against the same real database.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import psycopg
import pytest

from grpod.schema.errors import OperatorError
from grpod.workers import distillation_store, grouping_store, library_store, replay, update_window
from grpod.workers.distillation import PURPOSES
from grpod.workers.embeddings import LocalEmbedder
from grpod.workers.llm import LocalLLM
from grpod.workers.operations import Operation

from ..factories import KEY_QUERIES, agent_trace, reward
from ..scripted_llm import GOOD_SCRIPT, ScriptedLLM
from .stored import ingest, publish

EXPORT_QUERIES = [
    "Export all my data as CSV",
    "how do I download an export of my account data",
    "data export to csv?",
    "can I export my account data to a CSV file",
    "export my data please",
]


@pytest.fixture(scope="module")
def embedder() -> LocalEmbedder:
    return LocalEmbedder()


@pytest.fixture(scope="module")
def local_llm() -> LocalLLM:
    return LocalLLM()


def ready_group(
    conn: psycopg.Connection[Any],
    embedder: LocalEmbedder,
    prefix: str,
    queries: list[str],
    *,
    domain: str = "support",
    rewards: tuple[float, ...] = (1.0, 0.0, 1.0, 0.0, 0.0),
) -> int:
    """A group of stored traces with differing rewards, marked ready by the grouping stage."""
    ingest(
        conn,
        *(
            agent_trace(f"{prefix}{i}", query, good=value > 0.5, domain=domain)
            for i, (query, value) in enumerate(zip(queries, rewards, strict=True))
        ),
        *(
            reward(f"{prefix}{i}", value, critique=None if value > 0.5 else "The answer guessed a wrong menu.")
            for i, value in enumerate(rewards)
        ),
    )
    run = grouping_store.group_domain(conn, embedder, domain)
    groups = {gid for gid, row in _groups(conn, domain).items() if row & {f"{prefix}{i}" for i in range(len(queries))}}
    assert len(groups) == 1, f"the queries did not share one group: {groups}"
    (group_id,) = groups
    assert group_id in run.ready
    return group_id


def _groups(conn: psycopg.Connection[Any], domain: str) -> dict[int, set[str]]:
    return {row["id"]: set(row["trace_ids"]) for row in grouping_store.list_groups(conn, domain)}


def ledger_rows(conn: psycopg.Connection[Any], distillation_id: int) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT purpose, model, prompt_hash, request, response, tokens_in, tokens_out, latency_seconds "
        "FROM llm_calls WHERE distillation_id = %s ORDER BY id",
        (distillation_id,),
    ).fetchall()


def test_a_full_distillation_with_the_local_model(
    conn: psycopg.Connection[Any], embedder: LocalEmbedder, local_llm: LocalLLM
) -> None:
    group_id = ready_group(conn, embedder, "k", KEY_QUERIES)

    run = distillation_store.distill_group(conn, local_llm, embedder, group_id)

    assert run.status in ("distilled", "failed"), run.reason
    assert run.id is not None
    rows = ledger_rows(conn, run.id)
    purposes = [row[0] for row in rows]
    assert purposes.count("summary") >= 5  # one per trajectory (more if one had to be asked again)
    assert len(rows) == len(run.calls)  # every call is in the ledger
    for purpose, model, digest, request, response, tokens_in, tokens_out, latency in rows:
        assert purpose in PURPOSES
        assert model == "SmolLM2-135M-Instruct"
        assert len(bytes(digest)) == 32
        assert request["messages"][0]["role"] == "system"
        assert isinstance(response, str)
        assert tokens_in > 0 and tokens_out >= 0 and latency > 0
    if run.status == "failed":  # the tiny model may fail a step: the group stays ready, nothing is used
        pytest.fail(f"the bundled model failed a step on a plain group: {run.reason}")
    assert purposes.count("advantage") >= 1
    used = conn.execute("SELECT count(*) FROM traces WHERE used_by_distillation = %s", (run.id,)).fetchone()
    assert used == (5,)
    assert conn.execute("SELECT ready_at FROM groups WHERE id = %s", (group_id,)).fetchone() == (None,)
    for operation in run.operations:  # validated against the empty library: only ADDs can survive
        assert operation.kind == "ADD" and operation.text and len(operation.text.split()) <= 32
        assert operation.sources == (run.id,)

    window = update_window.run_window(conn, local_llm, "support", force=True)

    assert window.distillation_ids == [run.id]
    status = conn.execute("SELECT status, version FROM distillations WHERE id = %s", (run.id,)).fetchone()
    if run.operations:
        assert window.status == "published" and window.version == 1
        assert status == ("applied", 1)
        library = library_store.load(conn, "support", 1)
        assert sorted(library.experiences) == list(range(1, len(library.experiences) + 1))
        for experience in library.experiences.values():
            (origin,) = experience.provenance
            assert origin["distillations"] == [run.id]
            assert origin["groups"] == [group_id]
            assert set(origin["traces"]) == {f"k{i}" for i in range(5)}
    else:
        assert window.status == "no_change" and status == ("applied", None)

    # The replay runs the same steps from the recording, with no LLM, and gives the same operations.
    replayed = replay.replay(conn, run.id)
    assert replayed.same
    assert all(call.replayed for call in replayed.calls)
    assert len(replayed.calls) == len(rows)


def test_a_duplicate_or_concurrent_task_makes_no_second_distillation(
    conn: psycopg.Connection[Any], database_url: str, embedder: LocalEmbedder
) -> None:
    group_id = ready_group(conn, embedder, "k", KEY_QUERIES)
    llm = ScriptedLLM(GOOD_SCRIPT, delay=0.2)
    results: list[distillation_store.DistillationRun] = []

    def run() -> None:
        with psycopg.connect(database_url, autocommit=True) as own:
            results.append(distillation_store.distill_group(own, llm, embedder, group_id))

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(r.status for r in results).count("distilled") == 1, [(r.status, r.reason) for r in results]
    assert conn.execute("SELECT count(*) FROM distillations").fetchone() == (1,)
    assert llm.calls.count("advantage") == 1
    # Redelivered afterwards: the group is no longer ready, its traces are used.
    again = distillation_store.distill_group(conn, llm, embedder, group_id, require_marked=False)
    assert again.status == "not_ready"
    assert conn.execute("SELECT count(*) FROM distillations").fetchone() == (1,)

    first = update_window.run_window(conn, llm, "support", force=True)
    second = update_window.run_window(conn, llm, "support", force=True)
    assert (first.status, first.version) == ("published", 1)
    assert second.status == "empty"
    assert conn.execute("SELECT count(*) FROM library_versions").fetchone() == (1,)


def test_a_window_publishes_one_version_for_several_groups_and_ids_are_never_reused(
    conn: psycopg.Connection[Any], embedder: LocalEmbedder
) -> None:
    keys = ready_group(conn, embedder, "k", KEY_QUERIES)
    exports = ready_group(conn, embedder, "e", EXPORT_QUERIES)
    script = dict(GOOD_SCRIPT)
    script["operations"] = lambda messages: (
        '{"operations": [{"operation": "ADD", "id": null, "text": "When asked about '
        + ("API keys" if "rotate" in messages[1]["content"] else "exports")
        + ', search the documentation first.", "reason": "r"}]}'
    )
    script["advantage"] = lambda messages: (
        '{"experiences": ["When asked about '
        + ("API keys" if "rotate" in messages[1]["content"].lower() else "exports")
        + ', search the documentation first."]}'
    )
    script["consolidation"] = (
        '{"operations": [{"operation": "ADD", "id": null, "text": "When asked about API keys, search the '
        'documentation first.", "merged_from": [1], "reason": "kept"}, {"operation": "ADD", "id": null, '
        '"text": "When asked about exports, search the documentation first.", "merged_from": [2], "reason": "kept"},'
        ' {"operation": "DELETE", "id": 99, "text": null, "merged_from": [], "reason": "invented"}]}'
    )
    llm = ScriptedLLM(script)
    a = distillation_store.distill_group(conn, llm, embedder, keys)
    b = distillation_store.distill_group(conn, llm, embedder, exports)
    assert (a.status, b.status) == ("distilled", "distilled")
    assert a.id is not None and b.id is not None

    # Not due yet: the default window is 60 s and 4 groups.
    assert update_window.run_window(conn, llm, "support").status == "waiting"
    window = update_window.run_window(conn, llm, "support", force=True)

    assert window.status == "published" and window.version == 1
    assert llm.calls.count("consolidation") == 1
    assert [c.purpose for c in window.calls] == ["consolidation"]
    stored = conn.execute("SELECT llm_call_ids, distillation_ids FROM library_versions").fetchone()
    assert stored is not None and len(stored[0]) == 1 and sorted(stored[1]) == sorted([a.id, b.id])
    library = library_store.load(conn, "support", 1)
    assert sorted(library.texts().values()) == [
        "When asked about API keys, search the documentation first.",
        "When asked about exports, search the documentation first.",
    ]
    # The invented DELETE of an experience no group named was dropped, with its reason.
    assert any("no group proposed" in note.why for note in window.notes)
    by_text = {e.text: e for e in library.experiences.values()}
    assert by_text["When asked about exports, search the documentation first."].provenance[0]["groups"] == [exports]

    # Version 2 deletes experience 2 and adds one: the new one gets id 3, never 2 again.
    parent = library_store.load(conn, "support", 1)
    with conn.transaction():
        version = library_store.publish(
            conn,
            parent,
            [Operation("DELETE", experience_id=2), Operation("ADD", "When unsure, ask the user.")],
            [],
            created_by="operator",
            reason="test",
            provenance=lambda op: {},
        )
    assert version == 2
    assert sorted(library_store.load(conn, "support", 2).experiences) == [1, 3]
    # Built on version 1 again (as after a rollback), an ADD still gets a fresh id.
    with conn.transaction():
        library_store.publish(
            conn,
            parent,
            [Operation("ADD", "When stuck, say so.")],
            [],
            created_by="operator",
            reason="t",
            provenance=lambda op: {},
        )
    assert sorted(library_store.load(conn, "support", 3).experiences) == [1, 2, 4]

    with pytest.raises(psycopg.errors.RaiseException, match="immutable"):
        conn.execute("UPDATE library_versions SET reason = 'rewritten' WHERE version = 1")
    with pytest.raises(psycopg.errors.RaiseException, match="immutable"):
        conn.execute("DELETE FROM library_versions WHERE version = 1")


def test_a_step_that_cannot_be_parsed_fails_that_distillation_only_and_a_retry_resumes(
    conn: psycopg.Connection[Any], embedder: LocalEmbedder
) -> None:
    group_id = ready_group(conn, embedder, "k", KEY_QUERIES)
    broken = ScriptedLLM({**GOOD_SCRIPT, "advantage": "I cannot answer in JSON, sorry."})

    failed = distillation_store.distill_group(conn, broken, embedder, group_id)

    assert failed.status == "failed"
    assert "advantage step gave no usable answer after 3 attempts" in failed.reason
    assert broken.calls.count("advantage") == 3
    row = conn.execute(
        "SELECT status, error, next_attempt_at > now(), attempts FROM distillations WHERE id = %s", (failed.id,)
    ).fetchone()
    assert row is not None and row[0] == "failed" and "advantage" in row[1] and row[2] and row[3] == 1
    assert conn.execute("SELECT ready_at IS NOT NULL FROM groups WHERE id = %s", (group_id,)).fetchone() == (True,)
    assert conn.execute("SELECT count(*) FROM traces WHERE used_by_distillation IS NOT NULL").fetchone() == (0,)

    # The sweep leaves it alone while it backs off ...
    assert distillation_store.groups_to_distill(conn, "support") == []
    conn.execute("UPDATE distillations SET next_attempt_at = now() - interval '1 second'")
    assert distillation_store.groups_to_distill(conn, "support") == [(group_id, "support")]

    # ... then the retry resumes: the recorded summaries are not asked for again.
    good = ScriptedLLM(GOOD_SCRIPT)
    retried = distillation_store.distill_group(conn, good, embedder, group_id)

    assert retried.status == "distilled" and retried.id == failed.id
    assert failed.id is not None
    assert good.calls == ["advantage"]  # the library is empty: the new experience is added without an operations call
    assert conn.execute("SELECT attempts, status FROM distillations WHERE id = %s", (failed.id,)).fetchone() == (
        2,
        "distilled",
    )
    replayed = replay.replay(conn, failed.id)
    assert replayed.same and [op.text for op in replayed.operations] == [op.text for op in retried.operations]


def test_bad_operations_are_repaired_or_dropped_and_recorded(
    conn: psycopg.Connection[Any], embedder: LocalEmbedder
) -> None:
    group_id = ready_group(conn, embedder, "k", KEY_QUERIES)
    # An experience close to the new one: the operations step decides.
    publish(conn, "support", [Operation("ADD", "When asked about account settings, search the documentation first.")])
    long_text = "When asked " + " ".join(f"step{i}" for i in range(60)) + " search first."
    script = {
        **GOOD_SCRIPT,
        "operations": '```json\n{"operations": [{"op": "delete", "id": 7}, {"operation": "ADD", "text": ""},'
        ' {"operation": "UPDATE", "id": "E42", "text": "When asked about keys, check the docs."},'
        ' {"operation": "FROB"}, {"operation": "ADD", "text": "' + long_text + '"}',  # cut short, no closing
    }
    run = distillation_store.distill_group(conn, ScriptedLLM(script), embedder, group_id)

    assert run.status == "distilled"
    kinds = [(op.kind, op.experience_id) for op in run.operations]
    assert kinds == [("ADD", None), ("ADD", None)]  # the UPDATE of an unknown id became an ADD
    assert len(run.operations[1].text.split()) == 32  # type: ignore[union-attr]
    whys = [note.why for note in run.notes]
    assert any("DELETE of unknown experience 7" in why for why in whys)
    assert any("ADD without text" in why for why in whys)
    assert any("unknown operation 'FROB'" in why for why in whys)
    assert any("cut from" in why for why in whys)
    stored = conn.execute("SELECT notes, neighbours FROM distillations WHERE id = %s", (run.id,)).fetchone()
    assert stored is not None and len(stored[0]) == len(run.notes)
    (neighbour,) = stored[1]
    assert neighbour["id"] == 1 and neighbour["distance"] < 0.4


def test_a_usable_new_experience_is_not_lost_to_a_degenerate_operations_answer(
    conn: psycopg.Connection[Any], embedder: LocalEmbedder
) -> None:
    # The bundled model's answer to a held-out password-reset group: a usable new experience, then an
    # operations answer that repeats itself. With nothing close in the library, the experience is added.
    queries = [
        "I forgot my password, how do I reset it",
        "how can I reset my password",
        "password reset not working",
        "reset my account password please",
        "where do I change a forgotten password",
    ]
    group_id = ready_group(conn, embedder, "p", queries)
    learned = "When I'm trying to reset my password, I'm using a password reset link."
    looping = "When I'm trying to reset my password, " + "I'm using " * 30
    script = {
        **GOOD_SCRIPT,
        "advantage": json.dumps({"experiences": [learned]}),
        "operations": json.dumps({"operations": [{"operation": "ADD", "id": None, "text": looping, "reason": ""}]}),
    }
    llm = ScriptedLLM(script)

    run = distillation_store.distill_group(conn, llm, embedder, group_id)

    assert run.status == "distilled" and "operations" not in llm.calls
    assert [(op.kind, op.text) for op in run.operations] == [("ADD", learned)]
    assert [note.action for note in run.notes] == ["added"] and "the library is empty" in run.notes[0].why
    window = update_window.run_window(conn, llm, "support", force=True)
    assert window.status == "published" and window.version == 1
    assert list(library_store.load(conn, "support", 1).texts().values()) == [learned]

    # Version 1 holds it now: the same experience again is close, so the operations step decides;
    # its degenerate answer changes nothing, and says why.
    more = [f"{query} again" for query in queries]
    again = ready_group(conn, embedder, "q", more)
    second = distillation_store.distill_group(conn, llm, embedder, again)
    assert second.status == "distilled" and llm.calls.count("operations") == 1
    assert second.operations == [] and any("repeats itself" in note.why for note in second.notes)
    assert run.id is not None and second.id is not None
    for distillation_id in (run.id, second.id):  # the replay takes the recorded neighbours
        assert replay.replay(conn, distillation_id).same


def test_unknown_distillation_or_unfinished_one_cannot_be_replayed(conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(OperatorError, match="there is no distillation 404"):
        replay.replay(conn, 404)


def test_an_answer_that_deletes_everything_it_is_shown_leaves_production_as_it_was(
    conn: psycopg.Connection[Any], embedder: LocalEmbedder
) -> None:
    from grpod.daemon import library_admin

    topics = ["account settings", "API keys", "billing", "exports", "invoices", "passwords", "tickets", "SSO"]
    texts = [f"When asked about {topic}, search the documentation first." for topic in topics]
    ingest(conn, agent_trace("seed", "seed", good=True))
    v1 = publish(conn, "support", [Operation("ADD", text) for text in texts])
    group_id = ready_group(conn, embedder, "k", KEY_QUERIES)
    # What a prompt injection inside a trajectory would make the operations step answer.
    hostile = json.dumps(
        {"operations": [{"operation": "DELETE", "id": i, "text": None, "reason": "obsolete"} for i in range(1, 9)]}
    )
    llm = ScriptedLLM({**GOOD_SCRIPT, "operations": hostile})
    run = distillation_store.distill_group(conn, llm, embedder, group_id)
    assert run.status == "distilled" and "operations" in llm.calls
    # The answer is held to the schema's item limit (5 for one new experience); still too many.
    assert len([op for op in run.operations if op.kind == "DELETE"]) == 5

    window = update_window.run_window(conn, llm, "support", force=True)

    assert window.status == "refused" and window.label is None and window.version == v1 + 1
    assert window.refused is not None and "max_deletes_per_version (3)" in window.refused
    assert library_store.labels(conn, "support") == {"production": v1}
    assert len(library_store.load(conn, "support", v1).experiences) == 8
    assert conn.execute("SELECT status FROM distillations WHERE id = %s", (run.id,)).fetchone() == ("refused",)
    (refusal,) = [entry for entry in library_admin.events(conn, "support") if entry["action"] == "refuse"]
    assert refusal["to_version"] == window.version and "max_deletes_per_version" in refusal["reason"]
    # Learning goes on from production, and an operator may still publish the refused version.
    assert library_store.current_version(conn, "support") == v1
    library_admin.promote(conn, "support", window.version, reason="reviewed: intended", actor="operator:test")
    assert library_store.labels(conn, "support") == {"production": v1 + 1}


def test_a_distillation_fails_for_good_after_its_attempts_until_an_operator_retries_it(
    conn: psycopg.Connection[Any], embedder: LocalEmbedder
) -> None:
    from grpod.daemon.distill_domain import distill_domain

    group_id = ready_group(conn, embedder, "k", KEY_QUERIES)
    broken = ScriptedLLM({**GOOD_SCRIPT, "advantage": "no JSON at all"})
    for attempt in range(1, distillation_store.MAX_ATTEMPTS + 1):
        run = distillation_store.distill_group(conn, broken, embedder, group_id)
        assert run.status == "failed", attempt
        conn.execute("UPDATE distillations SET next_attempt_at = now() WHERE next_attempt_at IS NOT NULL")
    row = conn.execute("SELECT status, attempts, next_attempt_at, error FROM distillations").fetchone()
    assert row is not None and row[:3] == ("failed", distillation_store.MAX_ATTEMPTS, None) and "advantage" in row[3]
    assert distillation_store.groups_to_distill(conn, "support") == []  # the sweep leaves it for good

    good = ScriptedLLM(GOOD_SCRIPT)
    report = distill_domain(conn, lambda: good, lambda: embedder, "support", retry_failed=True)

    assert [r.status for r in report.distillations] == ["distilled"]
    assert report.window is not None and report.window.status == "published"
    assert conn.execute("SELECT status, attempts FROM distillations").fetchone() == ("applied", 1)


def test_traces_another_distillation_used_meanwhile_are_not_learned_from_twice(
    conn: psycopg.Connection[Any], database_url: str, embedder: LocalEmbedder
) -> None:
    group_id = ready_group(conn, embedder, "k", KEY_QUERIES)
    other: list[distillation_store.DistillationRun] = []
    started: list[bool] = []

    def advantage(messages: Any) -> str:
        if not started:  # while this one waits on its LLM, a reward changes the group's input and a second runs
            started.append(True)
            ingest(conn, reward("k1", 0.5, source="grader"))
            with psycopg.connect(database_url, autocommit=True) as own:
                grouping_store.prepare(own)
                other.append(distillation_store.distill_group(own, llm, embedder, group_id, require_marked=False))
        return str(GOOD_SCRIPT["advantage"])

    llm = ScriptedLLM({**GOOD_SCRIPT, "advantage": advantage})
    first = distillation_store.distill_group(conn, llm, embedder, group_id)

    (second,) = other
    assert second.status == "distilled" and first.status == "superseded"
    assert f"by distillation {second.id}" in first.reason
    used = conn.execute("SELECT DISTINCT used_by_distillation FROM traces WHERE group_id = %s", (group_id,)).fetchall()
    assert used == [(second.id,)]
    assert conn.execute("SELECT status FROM distillations WHERE id = %s", (first.id,)).fetchone() == ("superseded",)
    assert update_window.run_window(conn, llm, "support", force=True).distillation_ids == [second.id]
