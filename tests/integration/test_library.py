"""Versioned libraries against the real PostgreSQL: labels, the audit log, operator actions, NOTIFY,
publish policies, reward-gated promotion and automatic rollback on stored traces and rewards."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from typing import Any

import psycopg
import pytest

from grpod.daemon import distill_domain, library_admin
from grpod.schema.errors import OperatorError
from grpod.workers import library_store, update_window
from grpod.workers.grouping import DomainSettings
from grpod.workers.grouping_store import set_settings
from grpod.workers.operations import Operation

from ..factories import agent_trace, reward, trace
from ..scripted_llm import ScriptedLLM
from .stored import ingest, publish

OPERATOR = "operator:test"


def make_domain(conn: psycopg.Connection[Any], domain: str = "support", **settings: object) -> None:
    ingest(conn, trace(f"{domain}-seed", domain=domain))
    if settings:
        set_settings(conn, domain, DomainSettings(), settings)


def served(conn: psycopg.Connection[Any], domain: str, version: int, values: Sequence[float], prefix: str) -> None:
    """Traces that ran with ``version`` and their rewards, as agents would record them."""
    ingest(
        conn,
        *(trace(f"{prefix}{i}", domain=domain, library_version=version) for i in range(len(values))),
        *(reward(f"{prefix}{i}", value) for i, value in enumerate(values)),
    )


def events(conn: psycopg.Connection[Any], domain: str) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT action, label, from_version, to_version, actor FROM library_events WHERE domain = %s ORDER BY id",
        (domain,),
    ).fetchall()


def test_versions_labels_show_history_and_diff(conn: psycopg.Connection[Any]) -> None:
    make_domain(conn)
    assert library_admin.show(conn, "support") == {
        "domain": "support",
        "version": 0,
        "labels": [],
        "pinned": None,
        "frozen": False,
        "experiences": [],
    }
    v1 = publish(conn, "support", [Operation("ADD", "When A, do B.", sources=(1,)), Operation("ADD", "When C, do D.")])
    v2 = publish(
        conn,
        "support",
        [
            Operation("UPDATE", "When A, do B twice.", 1, sources=(2,)),
            Operation("DELETE", None, 2),
            Operation("ADD", "When E, F."),
        ],
    )
    assert (v1, v2) == (1, 2)
    assert library_store.labels(conn, "support") == {"production": 2}

    shown = library_admin.show(conn, "support")
    assert shown["version"] == 2 and shown["labels"] == ["production"]
    assert [(e["id"], e["text"]) for e in shown["experiences"]] == [(1, "When A, do B twice."), (3, "When E, F.")]
    assert [p["operation"] for p in shown["experiences"][0]["provenance"]] == ["ADD", "UPDATE"]
    assert shown["experiences"][0]["provenance"][1]["distillations"] == [2]
    assert library_admin.show(conn, "support", version=1)["labels"] == []
    assert library_admin.show(conn, "support", label="production")["version"] == 2

    rows = library_admin.history(conn, "support")
    assert [row["version"] for row in rows] == [2, 1]
    assert set(rows[0]) >= {"version", "parent", "created_at", "created_by", "reason", "operations", "labels", "reward"}
    assert rows[0]["parent"] == 1 and rows[0]["labels"] == ["production"] and rows[1]["labels"] == []
    assert [op["operation"] for op in rows[0]["operations"]] == ["UPDATE", "DELETE", "ADD"]

    changes = library_admin.diff(conn, "support", 1, 2)
    assert [e["id"] for e in changes["added"]] == [3]
    assert [e["id"] for e in changes["removed"]] == [2]
    assert changes["changed"] == [{"id": 1, "from": "When A, do B.", "to": "When A, do B twice."}]
    assert events(conn, "support") == [
        ("publish", "production", None, 1, "distillation"),
        ("publish", "production", 1, 2, "distillation"),
    ]


def test_a_rollback_moves_the_label_keeps_history_and_learning_builds_on_it(conn: psycopg.Connection[Any]) -> None:
    make_domain(conn)
    publish(conn, "support", [Operation("ADD", "When A, do B.")])
    publish(conn, "support", [Operation("ADD", "When C, do D.")])

    report = library_admin.rollback(conn, "support", 1, reason="v2 confuses the agent", actor=OPERATOR)

    assert report["from"] == 2 and report["to"] == 1
    assert library_store.labels(conn, "support") == {"production": 1}
    assert [row["version"] for row in library_admin.history(conn, "support")] == [2, 1]  # nothing deleted
    assert events(conn, "support")[-1] == ("rollback", "production", 2, 1, OPERATOR)
    reason = conn.execute("SELECT reason FROM library_events ORDER BY id DESC LIMIT 1").fetchone()
    assert reason == ("v2 confuses the agent",)
    # Learning goes on from the rolled-back version, and id 2 (given out by v2) is never reused.
    assert library_store.current_version(conn, "support") == 1
    v3 = publish(conn, "support", [Operation("ADD", "When E, do F.")])
    row = conn.execute("SELECT parent FROM library_versions WHERE version = %s", (v3,)).fetchone()
    assert row == (1,)
    assert sorted(library_store.load(conn, "support", v3).experiences) == [1, 3]


def test_bad_operator_requests_change_nothing(conn: psycopg.Connection[Any]) -> None:
    make_domain(conn)
    make_domain(conn, "billing")
    publish(conn, "support", [Operation("ADD", "When A, do B.")])
    for _ in range(3):
        publish(conn, "billing", [Operation("ADD", "When X, do Y.")])
    before = (events(conn, "support"), library_store.labels(conn, "support"))
    cases: list[tuple[Any, str]] = [
        (lambda: library_admin.rollback(conn, "support", 9, reason="r", actor=OPERATOR), "has no library version 9"),
        (lambda: library_admin.rollback(conn, "support", 1, reason="r", actor=OPERATOR), "is production already"),
        (
            lambda: library_admin.rollback(conn, "nowhere", 1, reason="r", actor=OPERATOR),
            "there is no domain 'nowhere'",
        ),
        (lambda: library_admin.show(conn, "support", label="staging"), "there is no label 'staging'"),
        (lambda: library_admin.show(conn, "support", label="candidate"), "has no candidate version now"),
        (lambda: library_admin.show(conn, "support", version=5), "has no library version 5"),
        (lambda: library_admin.promote(conn, "support", 3, reason="r", actor=OPERATOR), "has no library version 3"),
        (lambda: library_admin.diff(conn, "support", 1, 7), "has no library version 7"),
        (lambda: library_admin.unpin(conn, "support", reason="r", actor=OPERATOR), "is not pinned"),
        (lambda: library_admin.set_frozen(conn, "support", False, reason="r", actor=OPERATOR), "not frozen already"),
    ]
    for call, message in cases:
        with pytest.raises(OperatorError, match=message):
            call()
    assert (events(conn, "support"), library_store.labels(conn, "support")) == before


def test_pin_holds_production_and_freeze_stops_learning(conn: psycopg.Connection[Any]) -> None:
    make_domain(conn)
    publish(conn, "support", [Operation("ADD", "When A, do B.")])
    library_admin.pin(conn, "support", None, reason="holiday season", actor=OPERATOR)
    with pytest.raises(OperatorError, match="pinned at version 1"):
        library_admin.rollback(conn, "support", 1, reason="r", actor=OPERATOR)

    v2 = publish(conn, "support", [Operation("ADD", "When C, do D.")])  # auto policy, but pinned

    assert library_store.labels(conn, "support") == {"production": 1, "candidate": v2}
    served(conn, "support", 1, [0.0, 1.0] * 20, "p")  # production's traffic, then the candidate's
    served(conn, "support", v2, [1.0] * 40, "c")
    assert library_store.judge_domain(conn, "support") == []  # a pinned domain is not judged
    library_admin.unpin(conn, "support", reason="over", actor=OPERATOR)
    (judgement,) = [j for j in library_store.judge_domain(conn, "support") if j.label == "candidate"]
    assert judgement.verdict.decision == "promote" and judgement.acted
    assert library_store.labels(conn, "support") == {"production": v2}

    library_admin.set_frozen(conn, "support", True, reason="incident 42", actor=OPERATOR)
    ingest(conn, trace("after-freeze"), reward("after-freeze", 1.0))  # events are still stored
    assert conn.execute("SELECT count(*) FROM traces WHERE trace_id = 'after-freeze'").fetchone() == (1,)
    assert update_window.run_window(conn, ScriptedLLM({}), "support", force=True).status == "frozen"
    with pytest.raises(OperatorError, match="is frozen"):
        distill_domain.distill_domain(conn, lambda: ScriptedLLM({}), lambda: pytest.fail("no embedding"), "support")
    library_admin.set_frozen(conn, "support", False, reason="resolved", actor=OPERATOR)
    actions = [row[0] for row in events(conn, "support")]
    assert actions[-5:] == ["unpin", "promote", "promote", "freeze", "unfreeze"]


def test_moving_a_label_notifies_listeners(conn: psycopg.Connection[Any], database_url: str) -> None:
    make_domain(conn)
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute("LISTEN grpod_library")
        publish(conn, "support", [Operation("ADD", "When A, do B.")])
        (note,) = list(listener.notifies(timeout=5, stop_after=1))
    assert json.loads(note.payload) == {"domain": "support", "label": "production", "version": 1}


def test_gated_candidates_are_promoted_or_discarded_on_live_rewards(conn: psycopg.Connection[Any]) -> None:
    make_domain(conn, publish_policy="gated", promotion_min_traces=20, promotion_margin=0.05)
    v1 = publish(conn, "support", [Operation("ADD", "When A, do B.")])
    assert library_store.labels(conn, "support") == {"candidate": v1}
    served(conn, "support", 0, [0.0, 1.0] * 30, "base")  # traffic before anything was learned
    served(conn, "support", v1, [1.0, 1.0, 1.0, 0.0] * 5, "v1-")

    (judgement,) = library_store.judge_domain(conn, "support")

    assert (judgement.verdict.decision, judgement.acted) == ("promote", True)
    assert library_store.labels(conn, "support") == {"production": v1}
    statistics = conn.execute(
        "SELECT statistics FROM library_events WHERE action = 'promote' AND label = 'production'"
    ).fetchone()
    assert statistics is not None and statistics[0]["tested"]["traces"] == 20 and statistics[0]["production"] == 0

    v2 = publish(conn, "support", [Operation("ADD", "When C, always guess.")])
    assert library_store.labels(conn, "support") == {"production": v1, "candidate": v2}
    served(conn, "support", v2, [0.0] * 19, "v2-")
    assert library_store.judge_domain(conn, "support")[0].verdict.decision == "wait"  # 19 of 20
    served(conn, "support", v2, [0.0], "v2-last")
    decisions = {j.label: j.verdict.decision for j in library_store.judge_domain(conn, "support")}
    assert decisions["candidate"] == "discard"
    assert library_store.labels(conn, "support") == {"production": v1}
    history = {row["version"]: row for row in library_admin.history(conn, "support")}
    assert history[v2]["reward"]["traces"] == 20 and history[v2]["reward"]["mean"] == 0.0
    assert history[v1]["reward"]["mean"] == 0.75


def test_a_regressing_production_is_rolled_back_unless_turned_off(conn: psycopg.Connection[Any]) -> None:
    make_domain(conn, rollback_min_traces=20, rollback_margin=0.1)
    v1 = publish(conn, "support", [Operation("ADD", "When A, do B.")])
    served(conn, "support", v1, [1.0, 1.0, 1.0, 0.0] * 10, "v1-")
    v2 = publish(conn, "support", [Operation("DELETE", None, 1)])
    served(conn, "support", v2, [0.0, 0.0, 0.0, 1.0] * 5, "v2-")

    set_settings(conn, "support", DomainSettings(), {"auto_rollback": False})
    assert library_store.judge_domain(conn, "support") == []
    assert library_store.labels(conn, "support") == {"production": v2}

    set_settings(conn, "support", DomainSettings(), {"auto_rollback": True})
    (judgement,) = library_store.judge_domain(conn, "support")

    assert judgement.verdict.decision == "rollback" and judgement.acted
    assert library_store.labels(conn, "support") == {"production": v1}
    row = conn.execute(
        "SELECT actor, from_version, to_version, statistics FROM library_events ORDER BY id DESC"
    ).fetchone()
    assert row is not None and row[:3] == ("auto-rollback", v2, v1)
    assert row[3]["tested"]["mean"] == 0.25 and row[3]["reference"]["mean"] == 0.75 and row[3]["predecessor"] == v1
    # After a rollback, nothing judges the version that production went back to against the bad one.
    assert library_store.judge_domain(conn, "support") == []


def test_an_operator_rollback_racing_a_publish_is_consistent_and_explained(
    conn: psycopg.Connection[Any], database_url: str
) -> None:
    make_domain(conn, update_window_seconds=0)
    publish(conn, "support", [Operation("ADD", "When A, do B.")])
    publish(conn, "support", [Operation("ADD", "When C, do D.")])
    # Two distillations waiting, so the window asks the (slow) LLM to consolidate them.
    for number in (1, 2):
        conn.execute(
            "INSERT INTO distillations (domain, input_key, parent_version, samples, settings, status, operations, "
            "finished_at) VALUES ('support', %s, 2, '[]', '{}', 'distilled', %s, now())",
            (
                bytes([number]) * 32,
                json.dumps([Operation("ADD", f"When E{number}, do F.", sources=(number,)).to_json()]),
            ),
        )
    slow = ScriptedLLM({"consolidation": '{"operations": []}'}, delay=1.0)
    results: dict[str, Any] = {}
    finished: dict[str, float] = {}

    def publish_window() -> None:
        with psycopg.connect(database_url, autocommit=True) as own:
            results["window"] = update_window.run_window(own, slow, "support")
        finished["window"] = time.monotonic()

    def roll_back() -> None:
        with psycopg.connect(database_url, autocommit=True) as own:
            results["rollback"] = library_admin.rollback(own, "support", 1, reason="race", actor=OPERATOR)
        finished["rollback"] = time.monotonic()

    window = threading.Thread(target=publish_window)
    window.start()
    while not slow.calls:  # the window waits on the LLM, holding no lock
        threading.Event().wait(0.01)
    rollback = threading.Thread(target=roll_back)
    rollback.start()
    window.join()
    rollback.join()

    # The rollback did not wait behind the LLM; the window saw the library change under its
    # consolidation, consolidated again on the rolled-back version, and published on it.
    assert finished["rollback"] < finished["window"]
    assert results["rollback"]["from"] == 2 and results["rollback"]["to"] == 1
    assert slow.calls == ["consolidation", "consolidation"]
    assert results["window"].status == "published" and results["window"].version == 3
    log = events(conn, "support")
    assert log[-2:] == [("rollback", "production", 2, 1, OPERATOR), ("publish", "production", 1, 3, "distillation")]
    assert library_store.labels(conn, "support") == {"production": 3}
    assert library_store.load(conn, "support", 3).texts() == {
        1: "When A, do B.",
        3: "When E1, do F.",
        4: "When E2, do F.",
    }


def test_agent_traces_name_the_version_they_ran_with(conn: psycopg.Connection[Any]) -> None:
    make_domain(conn)
    ingest(conn, agent_trace("with-v", "How do I rotate my API key?", good=True) | {"library_version": 4})
    assert conn.execute("SELECT library_version FROM traces WHERE trace_id = 'with-v'").fetchone() == (4,)
