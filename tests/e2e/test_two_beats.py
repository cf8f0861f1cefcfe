"""Two beat processes of one deployment running at once: exactly one effect per scheduled slot.

Real processes on the real RabbitMQ and the real PostgreSQL: one `grpod worker` and two `grpod
beat`s (each with a GRPOD_HOME of its own, as on two machines), the maintenance sweep every 2
seconds. Both beats send every slot; the first copy to arrive claims it and sweeps, the other
finds the claim and does nothing, and is counted on the claim.
"""

from __future__ import annotations

import signal
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from kombu.connection import Connection

from grpod.workers import slot_claims

from ..faults.workers import kill, start, wait_for
from .helpers import grpod_env, json_lines

TASK = "grpod.maintenance.sweep"
SENT = "Sending due task maintenance-sweep"


def _claims(database_url: str) -> list[slot_claims.SlotClaim]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        return [claim for claim in slot_claims.claims(conn) if claim.task == TASK]


def _lines(log: Path, event: str) -> list[dict[str, Any]]:
    """The worker's lines of this event about the maintenance sweep (other scheduled tasks also run)."""
    return [
        line
        for line in json_lines(log.read_text(encoding="utf-8"))
        if line.get("event") == event and TASK in (line.get("task"), line.get("task_name"))
    ]


def _sent(*logs: Path) -> int:
    return sum(log.read_text(encoding="utf-8").count(SENT) for log in logs)


def _dead_letters(rabbitmq_url: str, prefix: str) -> int:
    with Connection(rabbitmq_url) as connection:
        _, count, _ = connection.channel().queue_declare(queue=f"{prefix}.dead", passive=True)
    return int(count)


@pytest.mark.rabbitmq
def test_two_beats_at_once_give_exactly_one_effect_per_slot(
    tmp_path: Path, database_url: str, rabbitmq_url: str, queue_prefix: str
) -> None:
    common = {
        "database_url": database_url,
        "broker_url": rabbitmq_url,
        "queue_prefix": queue_prefix,
        "maintenance_seconds": "2",
    }
    worker_log, first_log, second_log = tmp_path / "worker.log", tmp_path / "beat-1.log", tmp_path / "beat-2.log"
    # The worker declares the stage queues (and the dead-letter queue) before any beat sends.
    worker = start(
        ["worker", "--queues", "group,distill,library,maintenance", "--pool", "solo"],
        grpod_env(tmp_path / "worker", **common),
        worker_log,
    )
    try:
        wait_for("the worker's first heartbeat", lambda: _up(database_url), 120)
        first = start(["beat"], grpod_env(tmp_path / "beat-1", **common), first_log)
        try:
            # The second beat starts later, at another moment within a slot: they agree on the slots anyway.
            wait_for("the first beat's first claim", lambda: _claims(database_url), 120)
            second = start(["beat"], grpod_env(tmp_path / "beat-2", **common), second_log)
            try:
                wait_for(
                    "three slots sent by both beats",
                    lambda: sum(claim.duplicates > 0 for claim in _claims(database_url)) >= 3,
                    120,
                )
            finally:
                kill(second, signal.SIGTERM)
        finally:
            kill(first, signal.SIGTERM)
        sent = _sent(first_log, second_log)
        # Every copy the beats sent arrives: it either swept or was refused.
        wait_for(
            "the worker to take every copy the beats sent",
            lambda: (
                len(_lines(worker_log, "maintenance sweep"))
                + len(_lines(worker_log, "the slot is claimed by another task; nothing to do"))
                >= sent
            ),
            120,
        )
    finally:
        kill(worker, signal.SIGTERM)

    swept = _lines(worker_log, "maintenance sweep")
    refused = _lines(worker_log, "the slot is claimed by another task; nothing to do")
    claims = _claims(database_url)
    assert len(swept) + len(refused) == sent
    effects = Counter(datetime.fromisoformat(line["slot"]) for line in swept)
    duplicates = Counter(datetime.fromisoformat(line["slot"]) for line in refused)
    assert set(effects) == {claim.slot for claim in claims}, "an effect for every claimed slot, none without"
    holders = {datetime.fromisoformat(line["slot"]): line["task_id"] for line in swept}
    for claim in claims:
        assert effects[claim.slot] == 1, f"slot {claim.slot} swept {effects[claim.slot]} times"
        assert holders[claim.slot] == claim.task_id
        assert claim.finished_at is not None
        assert claim.duplicates == duplicates[claim.slot]
    assert sum(claim.duplicates for claim in claims) >= 3, "the second beat's copies arrived and did nothing"
    assert all(claim.slot.timestamp() % 2 == 0 for claim in claims)  # on the multiples of the period
    assert _dead_letters(rabbitmq_url, queue_prefix) == 0
    print(f"{len(claims)} slots, {sent} copies sent, {sum(c.duplicates for c in claims)} refused")


def _up(database_url: str) -> bool:
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM heartbeats WHERE role = 'worker'").fetchone()
    return bool(row and row[0])
