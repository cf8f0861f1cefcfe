"""The ingestion commands as a user runs them: ingest (file and stdin), rejected, replay, domains, status."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from ..broker import delete_broker_objects
from ..conftest import new_queue_prefix
from ..factories import raw, reward, trace
from .helpers import GRPOD, grpod_env, run_grpod


def _file(tmp_path: Path) -> Path:
    lines = [
        raw(trace("t-1")),
        raw(reward("t-1", 1.0)),
        raw(reward("t-2", 0.0, source="tests")),  # before its trace
        raw(trace("t-2", domain="billing")),
        raw(trace("t-1")),  # a duplicate
        raw(trace("t-1", answer="changed")),  # a conflict
        b"",  # blank lines are skipped
        b"{broken",
        raw(trace("t-3", domain="Not Valid")),
        raw(trace("t-4", query="q" * 2000)),
    ]
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_ingest_a_file_then_list_and_replay_rejections(tmp_path: Path, database_url: str) -> None:
    env = grpod_env(tmp_path / "home", database_url=database_url, max_query_bytes="1024")
    result = run_grpod(["ingest", str(_file(tmp_path)), "--json"], env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "accepted": 4,
        "duplicates": 1,
        "rejected": {"bad_domain": 1, "conflict": 1, "query_too_large": 1, "unparsable": 1},
    }

    domains = json.loads(run_grpod(["domains", "--json"], env).stdout)
    assert domains == [
        {"domain": "billing", "traces": 1, "rewarded_traces": 1},
        {"domain": "support", "traces": 1, "rewarded_traces": 1},
    ]

    listed = run_grpod(["rejected", "--json"], env)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert len(rows) == 4
    assert {"id", "reason", "received_at", "payload"} <= set(rows[0])
    too_long = next(row for row in rows if row["reason"] == "query_too_large")
    assert json.loads(too_long["payload"])["trace_id"] == "t-4"
    table = run_grpod(["rejected", "--reason", "query_too_large"], {**env, "COLUMNS": "250"}).stdout
    assert "the query is 2000 bytes; the limit is 1024" in table
    assert "bad_domain" not in table

    # The operator raises the limit and replays the event.
    raised = grpod_env(tmp_path / "home", database_url=database_url, max_query_bytes="4096")
    replayed = run_grpod(["rejected", "replay", str(too_long["id"]), "--json"], raised)
    assert replayed.returncode == 0, replayed.stderr
    assert json.loads(replayed.stdout)["outcome"] == "accepted"

    status = json.loads(run_grpod(["status", "--json"], env).stdout)
    assert status["schema_version"] >= 3
    assert {d["domain"]: d["traces"] for d in status["domains"]} == {"billing": 1, "support": 2}
    assert status["pending_rewards"] == 0
    assert status["expired_rewards"] == 0
    assert status["rejected"] == 4
    assert status["last_accepted_at"] is not None
    assert set(status["queues"]) == {"events", "ingest", "group", "distill", "library", "maintenance"}


def test_ingest_from_standard_input(tmp_path: Path, database_url: str) -> None:
    env = grpod_env(tmp_path / "home", database_url=database_url)
    lines = b"\n".join([raw(trace("s-1")), raw(reward("s-1")), raw(reward("s-9"))]) + b"\n"
    result = subprocess.run([*GRPOD, "ingest", "-", "--json"], env=env, input=lines, capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"accepted": 3, "duplicates": 0, "rejected": {}}
    status = json.loads(run_grpod(["status", "--json"], env).stdout)
    assert status["pending_rewards"] == 1


def test_operator_mistakes_are_one_sentence(tmp_path: Path, database_url: str) -> None:
    env = grpod_env(tmp_path / "home", database_url=database_url)
    missing = run_grpod(["ingest", str(tmp_path / "absent.jsonl")], env)
    assert missing.returncode == 2
    assert missing.stderr.strip() == f"grpod: {tmp_path / 'absent.jsonl'} is not a readable file."
    unknown = run_grpod(["rejected", "replay", "999999"], env)
    assert unknown.returncode == 2
    assert unknown.stderr.strip() == "grpod: there is no rejected event 999999; `grpod rejected` lists them."


def test_an_unmigrated_external_database_is_refused_with_the_fix(tmp_path: Path, empty_database_url: str) -> None:
    env = grpod_env(tmp_path / "home", database_url=empty_database_url)
    result = run_grpod(["domains"], env)
    assert result.returncode == 2
    assert "has schema version 0 but this grpod needs" in result.stderr
    assert result.stderr.strip().endswith("run `grpod migrate` first.")


def test_the_embedded_database_needs_no_manual_migration(tmp_path: Path) -> None:
    env = grpod_env(tmp_path / "home")
    path = tmp_path / "one.jsonl"
    path.write_bytes(raw(trace("e-1")) + b"\n")
    result = run_grpod(["ingest", str(path), "--json"], env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["accepted"] == 1


def test_migrate_declares_the_queues_so_any_amqp_client_can_publish_before_a_worker_starts(
    tmp_path: Path, database_url: str, rabbitmq_url: str
) -> None:
    import threading

    from kombu.connection import Connection

    from grpod.daemon.ingest import consumer_from_settings
    from grpod.daemon.settings import Settings

    prefix = new_queue_prefix()
    env = grpod_env(tmp_path / "home", database_url=database_url, broker_url=rabbitmq_url, queue_prefix=prefix)
    migrated = run_grpod(["migrate", "--json"], env)
    assert migrated.returncode == 0, migrated.stderr
    from grpod.schema.urls import redact

    assert json.loads(migrated.stdout)["broker_declared"] == redact(rabbitmq_url)
    try:
        # A plain AMQP publish of the wire JSON, as an agent in another language would do it.
        with Connection(rabbitmq_url) as connection:
            producer = connection.Producer()
            for event in (trace("x-1", domain="polyglot"), reward("x-1")):
                producer.publish(
                    raw(event), exchange=f"{prefix}.events", routing_key="event", content_type="application/json"
                )
        settings = Settings(home=tmp_path / "home", broker_url=rabbitmq_url, queue_prefix=prefix)
        stop = threading.Event()
        consumer = consumer_from_settings(settings, database_url)
        thread = threading.Thread(target=consumer.run, args=(stop,), kwargs={"idle_exit": 2.0})
        thread.start()
        thread.join(timeout=60)
        stop.set()
        assert consumer.totals.accepted == 2
        assert json.loads(run_grpod(["domains", "--json"], env).stdout) == [
            {"domain": "polyglot", "traces": 1, "rewarded_traces": 1}
        ]
    finally:
        delete_broker_objects(rabbitmq_url, prefix)


def test_migrate_with_an_unreachable_broker_is_one_sentence(tmp_path: Path, database_url: str) -> None:
    env = grpod_env(tmp_path / "home", database_url=database_url, broker_url="amqp://guest:guest@127.0.0.1:1//")
    result = run_grpod(["migrate"], env)
    assert result.returncode == 2
    assert result.stderr.startswith("grpod: GRPOD_BROKER_URL=amqp://guest:***@127.0.0.1:1// cannot be reached")
    assert len(result.stderr.strip().splitlines()) == 1
