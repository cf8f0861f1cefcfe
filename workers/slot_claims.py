"""Maintenance stage: one effect per scheduled slot.

Beat sends each scheduled task with the time slot it is for (a multiple of its period since the
epoch, so every beat agrees on the slots). Before it acts, the task claims (task, slot) in
PostgreSQL under its Celery task id. A copy of the same slot from a second beat finds the claim
held by another task id and does nothing; a retry or a redelivery after a worker died carries
the same task id and goes on. Sent without a slot (by code or by hand), a task claims nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import psycopg

from grpod.schema.sql import load_queries

QUERIES = ("grpod.schema", "queries/slots.sql")
# A claim is kept this long after its slot: no copy of a scheduled message waits that long in a
# queue, so pruning it never lets a late copy act twice.
CLAIM_RETENTION_SECONDS = 7 * 86_400

Outcome = Literal["claimed", "held", "taken"]


def outcome(inserted: bool, holder: str | None, task_id: str) -> Outcome:
    """What a run of a slot may do: ``claimed`` (the claim is new), ``held`` (this task id held it
    already: a retry, or a redelivery after its worker died), ``taken`` (another task id holds it,
    or it vanished meanwhile: do nothing)."""
    if inserted:
        return "claimed"
    if holder is not None and holder == task_id:
        return "held"
    return "taken"


def may_act(result: Outcome) -> bool:
    return result != "taken"


def claim_outcome(conn: psycopg.Connection[Any], task: str, slot: datetime, task_id: str) -> Outcome:
    """Claim (task, slot) for ``task_id``; a refused copy is counted on the claim."""
    named = load_queries(*QUERIES)
    key = {"task": task, "slot": slot, "task_id": task_id}
    with conn.transaction():
        inserted = conn.execute(named["claim_slot"], key).fetchone() is not None
        holder = None
        if not inserted:  # a statement of its own: it sees a claim another session just committed
            row = conn.execute(named["slot_holder"], key).fetchone()
            holder = None if row is None else str(row[0])
        result = outcome(inserted, holder, task_id)
        if result == "taken":
            conn.execute(named["count_duplicate"], key)
    return result


def claim(conn: psycopg.Connection[Any], task: str, slot: datetime, task_id: str) -> bool:
    """True when ``task_id`` holds the claim of (task, slot): a new claim or its own again."""
    return may_act(claim_outcome(conn, task, slot, task_id))


def finish(conn: psycopg.Connection[Any], task: str, slot: datetime, task_id: str) -> None:
    """Record that the holder's run of the slot finished."""
    conn.execute(load_queries(*QUERIES)["finish_slot"], {"task": task, "slot": slot, "task_id": task_id})


@dataclass(frozen=True)
class SlotClaim:
    task: str
    slot: datetime
    task_id: str
    claimed_at: datetime
    finished_at: datetime | None
    duplicates: int


def claims(conn: psycopg.Connection[Any]) -> list[SlotClaim]:
    rows = conn.execute(load_queries(*QUERIES)["slot_claims"]).fetchall()
    return [SlotClaim(str(r[0]), r[1], str(r[2]), r[3], r[4], int(r[5])) for r in rows]


def prune(conn: psycopg.Connection[Any], seconds: int = CLAIM_RETENTION_SECONDS) -> int:
    """Drop the claims of slots older than ``seconds``; returns how many."""
    return conn.execute(load_queries(*QUERIES)["prune_claims"], {"seconds": seconds}).rowcount
