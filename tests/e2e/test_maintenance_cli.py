"""`grpod maintenance` as an operator runs it: one sweep now, in its own process, with no worker."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg

from grpod.workers import grouping_store

from ..factories import trace
from ..integration.planted import applied_distillation, group_of, traces
from ..integration.stored import ingest
from .helpers import grpod_env, run_grpod


def _plant(database_url: str) -> tuple[int, int]:
    """A ready group whose task was lost, a distillation applied 31 days ago, a trace that waited 8
    days for a reward in vain, and a rejected event 31 days old."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        grouping_store.prepare(conn)
        lost = group_of(conn, traces(conn, "l", [1.0, 0.0, 1.0, 0.0, 0.0])[0])
        conn.execute("UPDATE groups SET ready_at = now() - interval '11 minutes' WHERE id = %s", (lost,))
        distillation_id = applied_distillation(conn, "r", domain="coding")
        conn.execute("UPDATE distillations SET applied_at = now() - interval '31 days'")
        conn.execute("UPDATE llm_calls SET created_at = now() - interval '31 days'")
        ingest(conn, trace("unrewarded"))
        conn.execute("UPDATE traces SET received_at = now() - interval '8 days' WHERE trace_id = 'unrewarded'")
        conn.execute(
            "INSERT INTO rejected_events (reason, detail, origin, payload, payload_size, payload_truncated, "
            "received_at) VALUES ('unparsable', 'not JSON', 'test', 'x', 1, false, now() - interval '31 days')"
        )
    return lost, distillation_id


def test_maintenance_sweeps_now_and_sends_lost_groups_to_the_distillation_stage(
    tmp_path: Path, database_url: str
) -> None:
    lost, distillation_id = _plant(database_url)
    env = grpod_env(tmp_path / "home", database_url=database_url)  # the embedded broker: a folder

    result = run_grpod(["maintenance", "--json"], env)

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    support, coding = report["domains"]["support"], report["domains"]["coding"]
    assert support["lost_work"] == {
        "stalled_distillations": [],
        "failed_for_good": [],
        "superseded": [],
        "groups_to_distill": [lost],
    }
    assert support["expiry"] == {"expired_traces": 1}
    assert coding["retention"] == {"trajectories_dropped": 5, "request_bodies_dropped": 6}
    assert report["deployment"]["pruning"] == {"rejected_events": 1, "heartbeats": 0, "slot_claims": 0}
    assert report["errors"] == 0 and report["sent_groups"] == [lost]
    (message,) = (tmp_path / "home" / "broker" / "queue").glob("*.grpod.distill.msg")
    assert "grpod.distill.group" in message.read_text(encoding="utf-8")

    table = run_grpod(["maintenance"], env)

    assert table.returncode == 0, table.stderr
    for title in ("lost work", "expiry", "retention", "pruning (deployment)", "expired traces"):
        assert title in table.stdout
    assert "sent 1 ready group to the distillation stage" in table.stdout  # still ready: nothing distilled it

    replayed = run_grpod(["distill", "--replay", str(distillation_id)], env)

    assert replayed.returncode == 2
    assert "Traceback" not in replayed.stderr and len(replayed.stderr.strip().splitlines()) == 1
    assert replayed.stderr.startswith(f"grpod: distillation {distillation_id} cannot be replayed: retention dropped")


def test_a_broker_out_of_reach_is_one_sentence_and_the_sweep_is_kept(tmp_path: Path, database_url: str) -> None:
    lost, _ = _plant(database_url)
    env = grpod_env(tmp_path / "home", database_url=database_url, broker_url="amqp://guest:secret@127.0.0.1:1//")

    result = run_grpod(["maintenance", "--json"], env)

    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "secret" not in result.stderr
    (sentence,) = [line for line in result.stderr.splitlines() if line.startswith("grpod: ")]
    assert sentence.startswith("grpod: GRPOD_BROKER_URL=amqp://guest:***@127.0.0.1:1// cannot be reached")
    assert "beat's distillation sweep sends the ready groups (1) once it can" in sentence
    with psycopg.connect(database_url, autocommit=True) as conn:  # what the sweep did is stored
        assert conn.execute("SELECT count(*) FROM traces WHERE expired_at IS NOT NULL").fetchone() == (1,)
        assert conn.execute("SELECT ready_at IS NOT NULL FROM groups WHERE id = %s", (lost,)).fetchone() == (True,)
