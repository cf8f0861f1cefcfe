"""The maintenance sweeps and the slot claims on the real PostgreSQL: each sweep does its job."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from celery import shared_task

from grpod.daemon.tasks import one_effect_per_slot
from grpod.schema.errors import OperatorError
from grpod.workers import distillation_store, grouping_store, maintenance, replay, slot_claims
from grpod.workers.maintenance_sweep import DeploymentUpkeep, sweep
from grpod.workers.operations import Operation
from grpod.workers.upkeep_settings import UpkeepSettings

from ..factories import reward, trace
from ..scripted_llm import GOOD_SCRIPT, ScriptedLLM
from .planted import OneTopic, applied_distillation, group_of, traces
from .stored import ingest, publish

SLOT = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


def _crash(_: Any) -> str:
    raise RuntimeError("the worker fell over")  # not an LLM failure: the distillation is left running


CRASHING = ScriptedLLM({**GOOD_SCRIPT, "summary": _crash})


def _found(report: Any, step: str, domain: str | None = "support") -> dict[str, Any]:
    (found,) = [r.found for r in report.steps if r.step == step and r.domain == domain and r.error is None]
    return dict(found)


# Slot claims --------------------------------------------------------------------------------------


def test_a_slot_is_claimed_once_its_holder_may_come_again_and_other_copies_are_counted(
    conn: psycopg.Connection[Any],
) -> None:
    assert slot_claims.claim(conn, "grpod.maintenance.sweep", SLOT, "task-a") is True
    assert slot_claims.claim(conn, "grpod.maintenance.sweep", SLOT, "task-a") is True  # a retry, a redelivery
    assert slot_claims.claim(conn, "grpod.maintenance.sweep", SLOT, "task-b") is False
    assert slot_claims.claim(conn, "grpod.maintenance.sweep", SLOT, "task-c") is False
    assert slot_claims.claim(conn, "grpod.group.sweep", SLOT, "task-b") is True  # another task, the same slot
    slot_claims.finish(conn, "grpod.maintenance.sweep", SLOT, "task-b")  # not the holder: changes nothing
    (claim, other) = sorted(slot_claims.claims(conn), key=lambda c: c.task, reverse=True)
    assert (claim.task, claim.slot, claim.task_id, claim.duplicates) == ("grpod.maintenance.sweep", SLOT, "task-a", 2)
    assert claim.finished_at is None
    slot_claims.finish(conn, "grpod.maintenance.sweep", SLOT, "task-a")
    finished = next(c for c in slot_claims.claims(conn) if c.task == "grpod.maintenance.sweep")
    assert finished.finished_at is not None and finished.finished_at >= finished.claimed_at
    assert (other.task_id, other.duplicates, other.finished_at) == ("task-b", 0, None)


def test_two_copies_of_a_slot_racing_give_exactly_one_holder(database_url: str) -> None:
    start = threading.Barrier(4)
    won: list[str] = []

    def run(task_id: str) -> None:
        with psycopg.connect(database_url, autocommit=True) as own:
            start.wait()
            if slot_claims.claim(own, "grpod.distill.sweep", SLOT, task_id):
                won.append(task_id)

    threads = [threading.Thread(target=run, args=(f"copy-{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with psycopg.connect(database_url, autocommit=True) as conn:
        (claim,) = slot_claims.claims(conn)
    assert won == [claim.task_id] and claim.duplicates == 3


@shared_task(name="grpod.maintenance.slot_effect_for_test")
@one_effect_per_slot
def _effect(key: str, slot: str | None = None) -> int:
    EFFECTS.append(key)
    return len(EFFECTS)


EFFECTS: list[str] = []


def test_a_scheduled_task_acts_once_per_slot_its_retries_too_and_always_without_a_slot(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from grpod.daemon import resources

    monkeypatch.setenv("GRPOD_DATABASE_URL", database_url)
    resources.forget()
    EFFECTS.clear()
    slot = SLOT.isoformat()

    assert _effect.apply(kwargs={"key": "first", "slot": slot}, task_id="copy-1").get() == 1
    assert _effect.apply(kwargs={"key": "retry", "slot": slot}, task_id="copy-1").get() == 2  # the same task id
    skipped = _effect.apply(kwargs={"key": "second beat", "slot": slot}, task_id="copy-2").get()
    assert skipped == {"skipped": f"slot {slot} of grpod.maintenance.slot_effect_for_test is claimed by another task"}
    assert _effect.apply(kwargs={"key": "by hand"}, task_id="copy-3").get() == 3  # no slot: no claim
    assert _effect.apply(kwargs={"key": "bad", "slot": "Tuesday"}, task_id="copy-4").get() == {
        "skipped": "slot 'Tuesday' is not an ISO 8601 time"
    }
    assert EFFECTS == ["first", "retry", "by hand"]
    with psycopg.connect(database_url, autocommit=True) as conn:
        (claim,) = slot_claims.claims(conn)
    assert (claim.task, claim.slot, claim.task_id, claim.duplicates) == (
        "grpod.maintenance.slot_effect_for_test",
        SLOT,
        "copy-1",
        1,
    )
    assert claim.finished_at is not None


# Lost and stalled work ----------------------------------------------------------------------------


def test_a_ready_group_whose_distillation_never_ran_is_named_to_be_sent_again(conn: psycopg.Connection[Any]) -> None:
    lost = group_of(conn, traces(conn, "l", [1.0, 0.0, 1.0, 0.0, 0.0])[0])
    fresh = group_of(conn, traces(conn, "f", [1.0, 0.0, 1.0, 0.0, 0.0], domain="coding")[0])
    conn.execute("UPDATE groups SET ready_at = now() - interval '11 minutes' WHERE id = %s", (lost,))

    report = sweep(conn, DeploymentUpkeep())

    assert _found(report, "lost_work")["groups_to_distill"] == [lost]
    # Ready for a moment only: its task is most likely still queued.
    assert conn.execute("SELECT ready_at IS NOT NULL FROM groups WHERE id = %s", (fresh,)).fetchone() == (True,)
    assert _found(report, "lost_work", "coding")["groups_to_distill"] == []
    assert report.groups_to_distill == [lost]


def test_a_stalled_distillation_is_found_and_can_be_taken_again(
    conn: psycopg.Connection[Any], database_url: str
) -> None:
    group_id = group_of(conn, traces(conn, "s", [1.0, 0.0, 1.0, 0.0, 0.0])[0])
    with pytest.raises(RuntimeError):
        distillation_store.distill_group(conn, CRASHING, OneTopic(), group_id)
    ((distillation_id, status),) = conn.execute("SELECT id, status FROM distillations").fetchall()
    assert status == "running"

    # While a live process holds its lock, it is not stalled.
    with psycopg.connect(database_url, autocommit=True) as runner:
        runner.execute(
            "SELECT pg_advisory_lock(hashtext('grpod.distill'), hashtext(encode(input_key, 'hex'))) "
            "FROM distillations WHERE id = %s",
            (distillation_id,),
        )
        held = sweep(conn, DeploymentUpkeep())
        assert _found(held, "lost_work")["stalled_distillations"] == []
        assert conn.execute("SELECT status FROM distillations").fetchone() == ("running",)

    report = sweep(conn, DeploymentUpkeep())  # the runner's session ended: nobody holds it

    found = _found(report, "lost_work")
    assert found["stalled_distillations"] == [distillation_id]
    assert found["failed_for_good"] == []
    assert found["groups_to_distill"] == [group_id]  # sent again at once, whatever the group's age
    row = conn.execute("SELECT status, error, next_attempt_at <= now() FROM distillations").fetchone()
    assert row is not None and row[0] == "failed" and row[1].startswith("stalled") and row[2] is True
    assert distillation_store.groups_to_distill(conn, "support") == [(group_id, "support")]

    run = distillation_store.distill_group(conn, ScriptedLLM(GOOD_SCRIPT), OneTopic(), group_id)

    assert (run.status, run.id) == ("distilled", distillation_id)  # the same distillation, taken over
    assert conn.execute("SELECT attempts FROM distillations").fetchone() == (2,)
    assert _found(sweep(conn, DeploymentUpkeep()), "lost_work")["stalled_distillations"] == []


def test_a_stalled_distillation_whose_traces_were_used_since_is_superseded(conn: psycopg.Connection[Any]) -> None:
    # Its worker died; the task ran again on another worker after the library had moved on, so
    # with another input (a new parent version): that distillation used the traces.
    group_id = group_of(conn, traces(conn, "s", [1.0, 0.0, 1.0, 0.0, 0.0])[0])
    with pytest.raises(RuntimeError):
        distillation_store.distill_group(conn, CRASHING, OneTopic(), group_id)
    ((stalled_id,),) = conn.execute("SELECT id FROM distillations").fetchall()
    publish(conn, "support", [Operation("ADD", "Check the docs before answering.")])
    rerun = distillation_store.distill_group(conn, ScriptedLLM(GOOD_SCRIPT), OneTopic(), group_id)
    assert rerun.status == "distilled" and rerun.id != stalled_id

    found = _found(sweep(conn, DeploymentUpkeep()), "lost_work")

    assert found["stalled_distillations"] == [stalled_id] and found["superseded"] == [stalled_id]
    assert found["failed_for_good"] == [] and found["groups_to_distill"] == []  # nothing to do again
    row = conn.execute(
        "SELECT status, error, next_attempt_at FROM distillations WHERE id = %s", (stalled_id,)
    ).fetchone()
    assert row is not None and row[0] == "superseded" and "used its traces" in row[1] and row[2] is None


def test_a_failed_distillation_whose_traces_were_used_since_is_superseded(conn: psycopg.Connection[Any]) -> None:
    # The sweep found it stalled first (failed, due now); then the task ran again on a newer library.
    group_id = group_of(conn, traces(conn, "s", [1.0, 0.0, 1.0, 0.0, 0.0])[0])
    with pytest.raises(RuntimeError):
        distillation_store.distill_group(conn, CRASHING, OneTopic(), group_id)
    first = _found(sweep(conn, DeploymentUpkeep()), "lost_work")
    (failed_id,) = first["stalled_distillations"]
    assert first["superseded"] == [] and first["groups_to_distill"] == [group_id]
    assert _found(sweep(conn, DeploymentUpkeep()), "lost_work")["superseded"] == []  # its traces are unused yet
    publish(conn, "support", [Operation("ADD", "Check the docs before answering.")])
    assert distillation_store.distill_group(conn, ScriptedLLM(GOOD_SCRIPT), OneTopic(), group_id).id != failed_id

    found = _found(sweep(conn, DeploymentUpkeep()), "lost_work")

    assert found == {
        "stalled_distillations": [],
        "failed_for_good": [],
        "superseded": [failed_id],
        "groups_to_distill": [],
    }
    assert conn.execute("SELECT status FROM distillations WHERE id = %s", (failed_id,)).fetchone() == ("superseded",)


def test_a_distillation_that_stalls_on_its_last_attempt_fails_for_good(conn: psycopg.Connection[Any]) -> None:
    group_id = group_of(conn, traces(conn, "s", [1.0, 0.0, 1.0, 0.0, 0.0])[0])
    with pytest.raises(RuntimeError):
        distillation_store.distill_group(conn, CRASHING, OneTopic(), group_id)
    conn.execute("UPDATE distillations SET attempts = %s", (distillation_store.MAX_ATTEMPTS,))

    found = _found(sweep(conn, DeploymentUpkeep()), "lost_work")

    (distillation_id,) = found["stalled_distillations"]
    assert found["failed_for_good"] == [distillation_id] and found["groups_to_distill"] == []
    assert conn.execute("SELECT status, next_attempt_at FROM distillations").fetchone() == ("failed", None)


# Expiry -------------------------------------------------------------------------------------------


def test_a_trace_unrewarded_for_its_ttl_expires_and_never_counts_toward_readiness(
    conn: psycopg.Connection[Any],
) -> None:
    ids = traces(conn, "e", [1.0, 0.0, 1.0, 0.0, None, None])
    group_id = group_of(conn, ids[0])
    # e4 waited 8 days for a reward (the default ttl is 7); e0 is as old but rewarded; e5 is recent.
    conn.execute("UPDATE traces SET received_at = now() - interval '8 days' WHERE trace_id IN ('e0', 'e4')")

    report = sweep(conn, DeploymentUpkeep())

    assert _found(report, "expiry") == {"expired_traces": 1}
    expired = conn.execute("SELECT trace_id FROM traces WHERE expired_at IS NOT NULL").fetchall()
    assert expired == [("e4",)]
    # Of the traces awaiting a reward, the dashboard counts only the recent one; e4 stays listed,
    # expired, so that a late reward still makes it a rewarded trace in the domain's counts.
    awaiting = conn.execute("SELECT trace_id, expired_at IS NOT NULL FROM traces_awaiting_reward ORDER BY 1")
    assert awaiting.fetchall() == [("e4", True), ("e5", False)]
    assert _found(sweep(conn, DeploymentUpkeep()), "expiry") == {"expired_traces": 0}  # once

    # A late reward for it is stored, but does not make the group ready (4 of 5 rewarded).
    ingest(conn, reward("e4", 0.5))
    assert conn.execute("SELECT value FROM rewards WHERE trace_id = 'e4'").fetchall() == [(0.5,)]
    (verdict,) = grouping_store.check_readiness(conn, [group_id]).values()
    assert (verdict.ready, verdict.rewarded, verdict.reason) == (False, 4, "4 of 5 rewarded traces")
    # A reward for the recent trace does.
    ingest(conn, reward("e5", 0.5))
    (verdict,) = grouping_store.check_readiness(conn, [group_id]).values()
    assert verdict.ready and verdict.rewarded == 5
    run = distillation_store.distill_group(conn, ScriptedLLM(GOOD_SCRIPT), OneTopic(), group_id)
    assert run.status == "distilled"
    used = conn.execute("SELECT trace_id FROM traces WHERE used_by_distillation IS NOT NULL ORDER BY 1").fetchall()
    assert used == [("e0",), ("e1",), ("e2",), ("e3",), ("e5",)]


def test_a_domains_own_ttl_applies(conn: psycopg.Connection[Any]) -> None:
    traces(conn, "q", [None])
    traces(conn, "w", [None], domain="coding")
    conn.execute("UPDATE traces SET received_at = now() - interval '2 hours'")
    grouping_store.set_settings(
        conn, "coding", grouping_store.domain_state(conn, "coding").settings, {"trace_ttl_seconds": 3600}
    )

    report = sweep(conn, DeploymentUpkeep())

    assert _found(report, "expiry") == {"expired_traces": 0}
    assert _found(report, "expiry", "coding") == {"expired_traces": 1}


# Retention ----------------------------------------------------------------------------------------


def test_retention_drops_what_was_learned_from_and_keeps_provenance(conn: psycopg.Connection[Any]) -> None:
    distillation_id = applied_distillation(conn, "r")
    traces(conn, "u", [None, 1.0])  # not learned from: never dropped, however old
    conn.execute("UPDATE traces SET received_at = now() - interval '90 days'")
    before = dict(conn.execute("SELECT trace_id, sha256(convert_to(trajectory::text, 'UTF8')) FROM traces").fetchall())
    requests = dict(conn.execute("SELECT id, sha256(convert_to(request::text, 'UTF8')) FROM llm_calls").fetchall())
    responses = conn.execute("SELECT id, response, prompt_hash FROM llm_calls ORDER BY id").fetchall()
    assert len(requests) == 6  # 5 summaries and the group advantage

    young = sweep(conn, DeploymentUpkeep())  # applied just now: within the 30 days

    assert _found(young, "retention") == {"trajectories_dropped": 0, "request_bodies_dropped": 0}
    conn.execute("UPDATE distillations SET applied_at = now() - interval '31 days'")
    conn.execute("UPDATE llm_calls SET created_at = now() - interval '31 days'")

    report = sweep(conn, DeploymentUpkeep())

    assert _found(report, "retention") == {"trajectories_dropped": 5, "request_bodies_dropped": 6}
    rows = conn.execute(
        "SELECT trace_id, query, trajectory, trajectory_hash, trajectory_dropped_at IS NOT NULL, answer "
        "FROM traces ORDER BY trace_id"
    ).fetchall()
    for trace_id, query, trajectory, digest, dropped, answer in rows:
        assert query and answer  # provenance: the query and the answer stay
        if trace_id.startswith("r"):
            assert trajectory is None and dropped and bytes(digest) == bytes(before[trace_id])
        else:
            assert trajectory is not None and digest is None and not dropped
    assert conn.execute("SELECT count(*) FROM rewards WHERE trace_id LIKE 'r%'").fetchone() == (5,)
    samples = conn.execute("SELECT samples FROM distillations WHERE id = %s", (distillation_id,)).fetchone()
    assert samples is not None and sorted(s["trace_id"] for s in samples[0]) == [f"r{i}" for i in range(5)]
    calls = conn.execute("SELECT id, request, request_hash FROM llm_calls ORDER BY id").fetchall()
    assert all(request is None and bytes(digest) == bytes(requests[i]) for i, request, digest in calls)
    assert conn.execute("SELECT id, response, prompt_hash FROM llm_calls ORDER BY id").fetchall() == responses
    with pytest.raises(OperatorError) as refused:
        replay.replay(conn, distillation_id)
    assert str(refused.value).startswith(f"distillation {distillation_id} cannot be replayed: retention dropped")
    assert _found(sweep(conn, DeploymentUpkeep()), "retention") == {
        "trajectories_dropped": 0,
        "request_bodies_dropped": 0,
    }


def test_retention_keeps_the_requests_a_failed_distillation_may_resume_from(conn: psycopg.Connection[Any]) -> None:
    group_id = group_of(conn, traces(conn, "x", [1.0, 0.0, 1.0, 0.0, 0.0])[0])
    failing = ScriptedLLM({**GOOD_SCRIPT, "advantage": "not json at all"})
    assert distillation_store.distill_group(conn, failing, OneTopic(), group_id).status == "failed"
    conn.execute("UPDATE llm_calls SET created_at = now() - interval '90 days'")
    conn.execute("UPDATE distillations SET finished_at = now() - interval '90 days'")
    conn.execute("UPDATE traces SET received_at = now() - interval '90 days'")

    found = _found(sweep(conn, DeploymentUpkeep()), "retention")

    assert found == {"trajectories_dropped": 0, "request_bodies_dropped": 0}
    assert conn.execute("SELECT count(*) FROM llm_calls WHERE request IS NULL").fetchone() == (0,)


def test_a_domains_own_retention_period_applies(conn: psycopg.Connection[Any]) -> None:
    applied_distillation(conn, "r")
    conn.execute("UPDATE distillations SET applied_at = now() - interval '2 days'")
    conn.execute("UPDATE llm_calls SET created_at = now() - interval '2 days'")
    assert _found(sweep(conn, DeploymentUpkeep()), "retention")["trajectories_dropped"] == 0
    grouping_store.set_settings(
        conn, "support", grouping_store.domain_state(conn, "support").settings, {"retention_seconds": 86_400}
    )
    assert _found(sweep(conn, DeploymentUpkeep()), "retention") == {
        "trajectories_dropped": 5,
        "request_bodies_dropped": 6,
    }


# Pruning ------------------------------------------------------------------------------------------


def test_pruning_removes_only_what_is_older_than_its_period(conn: psycopg.Connection[Any]) -> None:
    ingest(conn, trace("p1"))
    for _ in range(3):  # three rejected events (a reward in words)
        conn.execute(
            "INSERT INTO rejected_events (reason, detail, origin, payload, payload_size, payload_truncated) "
            "VALUES ('schema_violation', 'value: not a number', 'test', '{}', 2, false)"
        )
    conn.execute(
        "UPDATE rejected_events SET received_at = now() - interval '31 days' "
        "WHERE id = (SELECT min(id) FROM rejected_events)"
    )
    conn.execute(
        "UPDATE rejected_events SET received_at = now() - interval '29 days' "
        "WHERE id = (SELECT max(id) FROM rejected_events)"
    )
    now = datetime.now(UTC)
    maintenance.record_heartbeats(
        conn,
        [
            maintenance.Heartbeat("worker", "gone-host", 1, "0.1", now),
            maintenance.Heartbeat("worker", "live-host", 2, "0.1", now),
            maintenance.Heartbeat("beat", "gone-host", 3, "0.1", now),
        ],
    )
    conn.execute("UPDATE heartbeats SET seen_at = now() - interval '8 days' WHERE hostname = 'gone-host'")
    slot_claims.claim(conn, "grpod.group.sweep", datetime(2020, 1, 1, tzinfo=UTC), "old")
    slot_claims.claim(conn, "grpod.group.sweep", datetime.now(UTC), "new")

    report = sweep(conn, DeploymentUpkeep())

    assert _found(report, "pruning", None) == {"rejected_events": 1, "heartbeats": 2, "slot_claims": 1}
    assert conn.execute("SELECT count(*) FROM rejected_events").fetchone() == (2,)
    assert conn.execute("SELECT role, hostname FROM heartbeats").fetchall() == [("worker", "live-host")]
    assert [c.task_id for c in slot_claims.claims(conn)] == ["new"]
    assert conn.execute("SELECT count(*) FROM traces").fetchone() == (1,)
    # Periods of the deployment's own: a shorter one prunes the younger ones too.
    shorter = sweep(conn, DeploymentUpkeep(rejected_retention_seconds=28 * 86_400, heartbeat_retention_seconds=60))
    assert _found(shorter, "pruning", None)["rejected_events"] == 1
    assert conn.execute("SELECT count(*) FROM rejected_events").fetchone() == (1,)


# The sweep as a whole ------------------------------------------------------------------------------


def test_a_failing_domain_is_rolled_back_and_holds_back_no_other(conn: psycopg.Connection[Any]) -> None:
    traces(conn, "a", [None], domain="alpha")
    traces(conn, "b", [None], domain="beta")
    traces(conn, "c", [None], domain="gamma")
    conn.execute("UPDATE traces SET received_at = now() - interval '8 days'")
    from grpod.workers.maintenance_sweep import DOMAIN_STEPS

    def breaks_on_beta(conn: psycopg.Connection[Any], domain: str, upkeep: UpkeepSettings) -> dict[str, int]:
        if domain == "beta":
            raise RuntimeError("a bug in one domain's step")
        return {"checked": 1}

    report = sweep(conn, DeploymentUpkeep(), domain_steps=[*DOMAIN_STEPS, ("breaks", breaks_on_beta)])

    assert [(r.step, r.domain, r.error) for r in report.failed] == [
        ("breaks", "beta", "RuntimeError: a bug in one domain's step")
    ]
    expired = conn.execute("SELECT trace_id FROM traces WHERE expired_at IS NOT NULL ORDER BY 1").fetchall()
    assert expired == [("a0",), ("c0",)]  # beta's expiry was rolled back with its failing step
    assert _found(report, "breaks", "gamma") == {"checked": 1}
    assert _found(report, "pruning", None)["rejected_events"] == 0  # the deployment's steps ran too
    assert report.to_json()["domains"]["beta"] == {"error": "RuntimeError: a bug in one domain's step"}


def test_the_sweep_merges_groups_that_never_reach_g_and_names_the_ready_survivor(
    conn: psycopg.Connection[Any],
) -> None:
    from .test_group_merging import _split_groups

    first, second = _split_groups(conn, wait_seconds=0)  # 3 + 2 traces of one topic, apart

    report = sweep(conn, DeploymentUpkeep())

    found = _found(report, "group_merges")
    assert (found["merged_groups"], found["traces_moved"]) == (1, 2)
    (survivor,) = {first, second} & {row[0] for row in conn.execute("SELECT id FROM groups")}
    assert found["groups_to_distill"] == [survivor] and report.groups_to_distill == [survivor]
    assert conn.execute("SELECT size, ready_at IS NOT NULL FROM groups WHERE id = %s", (survivor,)).fetchone() == (
        5,
        True,
    )
