"""Ingest stage: validate a batch of raw events and store it exactly once.

The decisions (what is new, what is a duplicate, what conflicts) are plain
functions over plain data; ``store_batch`` is the thin shell that runs them
against PostgreSQL in one transaction. A trace is stored once per
``trace_id``, a reward once per ``(trace_id, source)``; a re-sent event with
the same content is a duplicate and changes nothing; one with different
content is rejected as a conflict. Every rejected event is kept.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

from grpod.daemon.events import (
    Accepted,
    Limits,
    Parsed,
    Rejection,
    RejectReason,
    RewardEvent,
    TraceEvent,
    parse_event,
)
from grpod.daemon.sql import load_queries

QUERIES = ("grpod.schema", "queries/ingest.sql")


@dataclass(frozen=True)
class Incoming:
    """One event as received: its bytes and where it came from (queue, file, replay)."""

    payload: bytes
    origin: str


@dataclass(frozen=True)
class Candidate:
    """An accepted event that is new within its batch and may be new to the database."""

    index: int
    key: Hashable
    content_hash: bytes


@dataclass
class BatchPlan:
    traces: list[Candidate] = field(default_factory=list)
    rewards: list[Candidate] = field(default_factory=list)
    duplicates: list[int] = field(default_factory=list)
    rejections: dict[int, Rejection] = field(default_factory=dict)


@dataclass
class BatchOutcome:
    accepted: int = 0
    duplicates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    stored_traces: dict[str, list[str]] = field(default_factory=dict)  # domain -> new trace ids
    rejected_ids: list[int] = field(default_factory=list)

    def add(self, other: BatchOutcome) -> None:
        self.accepted += other.accepted
        self.duplicates += other.duplicates
        self.rejected.update(other.rejected)
        for domain, trace_ids in other.stored_traces.items():
            self.stored_traces.setdefault(domain, []).extend(trace_ids)
        self.rejected_ids.extend(other.rejected_ids)


def event_key(event: TraceEvent | RewardEvent) -> Hashable:
    return event.trace_id if isinstance(event, TraceEvent) else (event.trace_id, event.source)


def conflict(event: TraceEvent | RewardEvent) -> Rejection:
    if isinstance(event, TraceEvent):
        detail = f"trace {event.trace_id!r} was already received with different content; a trace is never overwritten"
    else:
        detail = (
            f"reward for trace {event.trace_id!r} from source {event.source!r} was already received "
            "with different content; send a new source to add another reward"
        )
    return Rejection(RejectReason.CONFLICT, detail, event.trace_id)


def plan_batch(parsed: Sequence[Parsed]) -> BatchPlan:
    """Split a parsed batch into new candidates, in-batch duplicates and rejections."""
    plan = BatchPlan()
    seen: dict[Hashable, bytes] = {}
    for index, item in enumerate(parsed):
        if isinstance(item, Rejection):
            plan.rejections[index] = item
            continue
        event = item.event
        key = ("trace", event_key(event)) if isinstance(event, TraceEvent) else ("reward", event_key(event))
        earlier = seen.get(key)
        if earlier is None:
            seen[key] = item.content_hash
            target = plan.traces if isinstance(event, TraceEvent) else plan.rewards
            target.append(Candidate(index=index, key=event_key(event), content_hash=item.content_hash))
        elif earlier == item.content_hash:
            plan.duplicates.append(index)
        else:
            plan.rejections[index] = conflict(event)
    return plan


def split_existing(
    candidates: Sequence[Candidate], inserted: set[Hashable], stored_hashes: dict[Hashable, bytes]
) -> tuple[list[Candidate], list[Candidate], list[Candidate]]:
    """Which candidates were stored now, were duplicates of stored ones, or conflict with them."""
    new, duplicates, conflicts = [], [], []
    for candidate in candidates:
        if candidate.key in inserted:
            new.append(candidate)
        elif stored_hashes.get(candidate.key) == candidate.content_hash:
            duplicates.append(candidate)
        else:
            conflicts.append(candidate)
    return new, duplicates, conflicts


def bound_payload(payload: bytes, limit: int) -> tuple[bytes, bool]:
    """The payload kept with a rejection: at most ``limit`` bytes."""
    if len(payload) <= limit:
        return payload, False
    return payload[:limit], True


def _json_or_none(value: Any) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False)


def _accepted(parsed: Sequence[Parsed], index: int) -> TraceEvent | RewardEvent:
    item = parsed[index]
    assert isinstance(item, Accepted)
    return item.event


def store_batch(
    conn: psycopg.Connection[Any],
    incoming: Sequence[Incoming],
    limits: Limits,
    payload_limit: int,
) -> BatchOutcome:
    """Validate and store a batch in one transaction; returns what happened to each event."""
    parsed = [parse_event(item.payload, limits) for item in incoming]
    plan = plan_batch(parsed)
    queries = load_queries(*QUERIES)
    outcome = BatchOutcome(duplicates=len(plan.duplicates))
    with conn.transaction(), conn.cursor() as cursor:
        traces = [_accepted(parsed, c.index) for c in plan.traces]
        if traces:
            trace_events = [t for t in traces if isinstance(t, TraceEvent)]
            cursor.execute(queries["ensure_domains"], {"names": sorted({t.domain for t in trace_events})})
            cursor.execute(queries["insert_traces"], _trace_columns(plan.traces, trace_events))
            inserted: set[Hashable] = {row[0] for row in cursor.fetchall()}
            stored = _stored_hashes(cursor, queries["trace_hashes"], plan.traces, inserted, rewards=False)
            new, duplicates, conflicts = split_existing(plan.traces, inserted, stored)
            outcome.duplicates += len(duplicates)
            for candidate in conflicts:
                plan.rejections[candidate.index] = conflict(_accepted(parsed, candidate.index))
            for candidate in new:
                event = _accepted(parsed, candidate.index)
                assert isinstance(event, TraceEvent)
                outcome.stored_traces.setdefault(event.domain, []).append(event.trace_id)
            outcome.accepted += len(new)
        if plan.rewards:
            rewards = [_accepted(parsed, c.index) for c in plan.rewards]
            reward_events = [r for r in rewards if isinstance(r, RewardEvent)]
            cursor.execute(queries["insert_rewards"], _reward_columns(plan.rewards, reward_events))
            inserted = {(row[0], row[1]) for row in cursor.fetchall()}
            stored = _stored_hashes(cursor, queries["reward_hashes"], plan.rewards, inserted, rewards=True)
            new, duplicates, conflicts = split_existing(plan.rewards, inserted, stored)
            outcome.duplicates += len(duplicates)
            for candidate in conflicts:
                plan.rejections[candidate.index] = conflict(_accepted(parsed, candidate.index))
            outcome.accepted += len(new)
        if plan.rejections:
            outcome.rejected_ids = insert_rejections(
                cursor, [(incoming[i], r) for i, r in sorted(plan.rejections.items())], payload_limit
            )
            outcome.rejected.update(r.reason.value for r in plan.rejections.values())
    return outcome


def insert_rejections(
    cursor: psycopg.Cursor[Any], rejections: Sequence[tuple[Incoming, Rejection]], payload_limit: int
) -> list[int]:
    bounded = [bound_payload(item.payload, payload_limit) for item, _ in rejections]
    cursor.execute(
        load_queries(*QUERIES)["insert_rejected"],
        {
            "reasons": [r.reason.value for _, r in rejections],
            "details": [r.detail for _, r in rejections],
            "origins": [item.origin for item, _ in rejections],
            "trace_ids": [r.trace_id for _, r in rejections],
            "payloads": [payload for payload, _ in bounded],
            "payload_sizes": [len(item.payload) for item, _ in rejections],
            "truncated": [truncated for _, truncated in bounded],
        },
    )
    return [row[0] for row in cursor.fetchall()]


def _stored_hashes(
    cursor: psycopg.Cursor[Any],
    query: Any,
    candidates: Sequence[Candidate],
    inserted: set[Hashable],
    *,
    rewards: bool,
) -> dict[Hashable, bytes]:
    missing = [c.key for c in candidates if c.key not in inserted]
    if not missing:
        return {}
    if rewards:
        keys = [k for k in missing if isinstance(k, tuple)]
        cursor.execute(query, {"trace_ids": [k[0] for k in keys], "sources": [k[1] for k in keys]})
        return {(row[0], row[1]): bytes(row[2]) for row in cursor.fetchall()}
    cursor.execute(query, {"trace_ids": missing})
    return {row[0]: bytes(row[1]) for row in cursor.fetchall()}


def _trace_columns(candidates: Sequence[Candidate], events: Sequence[TraceEvent]) -> dict[str, list[Any]]:
    return {
        "trace_ids": [e.trace_id for e in events],
        "domains": [e.domain for e in events],
        "queries": [e.query for e in events],
        "trajectories": [
            json.dumps([m.model_dump(mode="json", exclude_none=True) for m in e.trajectory], ensure_ascii=False)
            for e in events
        ],
        "answers": [e.answer for e in events],
        "library_versions": [e.library_version for e in events],
        "metadata": [_json_or_none(e.metadata) for e in events],
        "created_ats": [e.created_at for e in events],
        "content_hashes": [c.content_hash for c in candidates],
    }


def _reward_columns(candidates: Sequence[Candidate], events: Sequence[RewardEvent]) -> dict[str, list[Any]]:
    return {
        "trace_ids": [e.trace_id for e in events],
        "sources": [e.source for e in events],
        "values": [e.value for e in events],
        "critiques": [e.critique for e in events],
        "ground_truths": [e.ground_truth for e in events],
        "created_ats": [e.created_at for e in events],
        "content_hashes": [c.content_hash for c in candidates],
    }


def store_isolating_failures(
    conn: psycopg.Connection[Any],
    incoming: Sequence[Incoming],
    limits: Limits,
    payload_limit: int,
) -> BatchOutcome:
    """Store a batch; if the batch fails as a whole, store event by event so one bad
    event cannot hold the others back. An event that fails on its own is rejected
    with the error as its reason. A lost connection is not an event's fault: it is
    raised, and the caller leaves the batch unacknowledged for redelivery.
    """
    try:
        return store_batch(conn, incoming, limits, payload_limit)
    except psycopg.OperationalError:
        raise
    except psycopg.Error:
        pass
    total = BatchOutcome()
    for item in incoming:
        try:
            total.add(store_batch(conn, [item], limits, payload_limit))
        except psycopg.OperationalError:
            raise
        except psycopg.Error as error:
            rejection = Rejection(RejectReason.PROCESSING_ERROR, f"storing it failed: {error}".splitlines()[0])
            with conn.transaction(), conn.cursor() as cursor:
                total.rejected_ids.extend(insert_rejections(cursor, [(item, rejection)], payload_limit))
            total.rejected[rejection.reason.value] += 1
    return total
