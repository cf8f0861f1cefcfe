"""Ingest stage: validate a batch of raw events and store it exactly once.

The decisions (what is new, what is a duplicate, what conflicts) are plain
functions over plain data; ``store_batch`` is the thin shell that runs them
against PostgreSQL in one transaction. A trace is stored once per
``trace_id``, a reward once per ``(trace_id, source)``; a re-sent event with
the same content is a duplicate and changes nothing; one with different
content is rejected as a conflict. Every rejected event is kept.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import psycopg
import structlog

from grpod.schema.events import (
    Accepted,
    Limits,
    Parsed,
    Rejection,
    RejectReason,
    RewardEvent,
    TraceEvent,
    parse_event,
)
from grpod.schema.sql import load_queries
from grpod.workers import domain_counts

log = structlog.stdlib.get_logger(__name__)

QUERIES = ("grpod.schema", "queries/ingest.sql")


@dataclass(frozen=True)
class Incoming:
    """One event as received: its bytes and where it came from (queue, file, replay)."""

    payload: bytes
    origin: str


@dataclass(frozen=True)
class Insertion:
    """An accepted event that is new within its batch and may be new to the database."""

    index: int
    key: Hashable
    content_hash: bytes


@dataclass
class BatchPlan:
    traces: list[Insertion] = field(default_factory=list)
    rewards: list[Insertion] = field(default_factory=list)
    duplicates: list[int] = field(default_factory=list)
    rejections: dict[int, Rejection] = field(default_factory=dict)


@dataclass
class BatchOutcome:
    accepted: int = 0
    duplicates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    stored_traces: dict[str, list[str]] = field(default_factory=dict)  # domain -> new trace ids
    rewarded_traces: list[str] = field(default_factory=list)  # trace ids that got a new reward
    rejected_ids: list[int] = field(default_factory=list)

    def add(self, other: BatchOutcome) -> None:
        self.accepted += other.accepted
        self.duplicates += other.duplicates
        self.rejected.update(other.rejected)
        for domain, trace_ids in other.stored_traces.items():
            self.stored_traces.setdefault(domain, []).extend(trace_ids)
        self.rewarded_traces.extend(other.rewarded_traces)
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
    """Split a parsed batch into new insertions, in-batch duplicates and rejections."""
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
            target.append(Insertion(index=index, key=event_key(event), content_hash=item.content_hash))
        elif earlier == item.content_hash:
            plan.duplicates.append(index)
        else:
            plan.rejections[index] = conflict(event)
    return plan


def split_existing(
    insertions: Sequence[Insertion], inserted: set[Hashable], stored_hashes: dict[Hashable, bytes]
) -> tuple[list[Insertion], list[Insertion], list[Insertion]]:
    """Which insertions were stored now, were duplicates of stored ones, or conflict with them."""
    new, duplicates, conflicts = [], [], []
    for insertion in insertions:
        if insertion.key in inserted:
            new.append(insertion)
        elif stored_hashes.get(insertion.key) == insertion.content_hash:
            duplicates.append(insertion)
        else:
            conflicts.append(insertion)
    return new, duplicates, conflicts


def bound_payload(payload: bytes, limit: int) -> tuple[bytes, bool]:
    """The payload kept with a rejection: at most ``limit`` bytes."""
    if len(payload) <= limit:
        return payload, False
    return payload[:limit], True


def _json_or_none(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


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
    new_traces: list[tuple[str, str, bool]] = []
    earlier_rewards: list[str] = []
    new_rewards: list[tuple[str, str | None, bool]] = []
    with conn.transaction(), conn.cursor() as cursor:
        # In the batch's own transaction (IF NOT EXISTS is cheap): safe behind a transaction pooler.
        cursor.execute(queries["create_staging"])
        if plan.traces:
            trace_events = [e for e in (_accepted(parsed, c.index) for c in plan.traces) if isinstance(e, TraceEvent)]
            cursor.execute(queries["ensure_domains"], {"names": sorted({t.domain for t in trace_events})})
            with cursor.copy(queries["copy_traces"]) as copy:
                for row in _trace_rows(parsed, plan.traces):
                    copy.write_row(row)
            cursor.execute(queries["insert_traces"])
            new_traces = [(str(row[0]), str(row[1]), bool(row[2])) for row in cursor.fetchall()]
            inserted: set[Hashable] = {trace_id for trace_id, _, _ in new_traces}
            rewarded_before = [(trace_id, domain) for trace_id, domain, awaiting in new_traces if not awaiting]
            if rewarded_before:
                cursor.execute(
                    queries["count_earlier_rewards"],
                    {"trace_ids": [t for t, _ in rewarded_before], "domains": [d for _, d in rewarded_before]},
                )
                earlier_rewards = [str(row[0]) for row in cursor.fetchall()]
            stored = _stored_hashes(cursor, queries["trace_hashes"], plan.traces, inserted, rewards=False)
            new, duplicates, conflicts = split_existing(plan.traces, inserted, stored)
            outcome.duplicates += len(duplicates)
            for insertion in conflicts:
                plan.rejections[insertion.index] = conflict(_accepted(parsed, insertion.index))
            for insertion in new:
                event = _accepted(parsed, insertion.index)
                assert isinstance(event, TraceEvent)
                outcome.stored_traces.setdefault(event.domain, []).append(event.trace_id)
            outcome.accepted += len(new)
        if plan.rewards:
            with cursor.copy(queries["copy_rewards"]) as copy:
                for row in _reward_rows(parsed, plan.rewards):
                    copy.write_row(row)
            cursor.execute(queries["insert_rewards"])
            rows = cursor.fetchall()
            inserted = {(row[0], row[1]) for row in rows}
            new_rewards = [(str(row[0]), row[2], bool(row[3])) for row in rows]
            stored = _stored_hashes(cursor, queries["reward_hashes"], plan.rewards, inserted, rewards=True)
            new, duplicates, conflicts = split_existing(plan.rewards, inserted, stored)
            outcome.duplicates += len(duplicates)
            for insertion in conflicts:
                plan.rejections[insertion.index] = conflict(_accepted(parsed, insertion.index))
            outcome.rewarded_traces.extend(
                str(insertion.key[0]) for insertion in new if isinstance(insertion.key, tuple)
            )
            outcome.accepted += len(new)
        domain_counts.add_deltas(cursor, domain_counts.batch_deltas(new_traces, earlier_rewards, new_rewards))
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
            "domains": [r.domain for _, r in rejections],
        },
    )
    return [row[0] for row in cursor.fetchall()]


def _stored_hashes(
    cursor: psycopg.Cursor[Any],
    query: Any,
    insertions: Sequence[Insertion],
    inserted: set[Hashable],
    *,
    rewards: bool,
) -> dict[Hashable, bytes]:
    missing = [c.key for c in insertions if c.key not in inserted]
    if not missing:
        return {}
    if rewards:
        keys = [k for k in missing if isinstance(k, tuple)]
        cursor.execute(query, {"trace_ids": [k[0] for k in keys], "sources": [k[1] for k in keys]})
        return {(row[0], row[1]): bytes(row[2]) for row in cursor.fetchall()}
    cursor.execute(query, {"trace_ids": missing})
    return {row[0]: bytes(row[1]) for row in cursor.fetchall()}


def _trace_rows(parsed: Sequence[Parsed], insertions: Sequence[Insertion]) -> Iterator[tuple[Any, ...]]:
    for insertion in insertions:
        item = parsed[insertion.index]
        assert isinstance(item, Accepted) and isinstance(item.event, TraceEvent)
        event = item.event
        yield (
            event.trace_id,
            event.domain,
            event.query,
            orjson.dumps(item.document["trajectory"]).decode(),  # as sent, extra fields kept
            event.answer,
            event.library_version,
            _json_or_none(event.metadata),
            event.created_at,
            insertion.content_hash,
        )


def _reward_rows(parsed: Sequence[Parsed], insertions: Sequence[Insertion]) -> Iterator[tuple[Any, ...]]:
    for insertion in insertions:
        item = parsed[insertion.index]
        assert isinstance(item, Accepted) and isinstance(item.event, RewardEvent)
        event = item.event
        yield (
            event.trace_id,
            event.source,
            event.value,
            event.critique,
            event.ground_truth,
            event.created_at,
            insertion.content_hash,
        )


# SQLSTATE classes that say the database cannot store anything now, whatever the event: connection
# exceptions, insufficient resources (a full disk), operator intervention (a shutdown), system errors.
OUTAGE_CLASSES = ("08", "53", "57", "58")
READ_ONLY = "25006"  # a standby, or a primary made read-only


def is_outage(error: psycopg.Error) -> bool:
    """Whether the database failed, not the event: the batch must wait, never be rejected."""
    state = error.sqlstate or ""
    return isinstance(error, psycopg.OperationalError) or state.startswith(OUTAGE_CLASSES) or state == READ_ONLY


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
    except psycopg.Error as error:
        if is_outage(error):
            raise
        log.warning(
            "storing a batch failed as a whole; storing its events one by one",
            events=len(incoming),
            error=str(error).splitlines()[0] if str(error) else type(error).__name__,
        )
    total = BatchOutcome()
    for item in incoming:
        try:
            total.add(store_batch(conn, [item], limits, payload_limit))
        except psycopg.Error as error:
            if is_outage(error):
                raise
            rejection = Rejection(RejectReason.PROCESSING_ERROR, f"storing it failed: {error}".splitlines()[0])
            with conn.transaction(), conn.cursor() as cursor:
                total.rejected_ids.extend(insert_rejections(cursor, [(item, rejection)], payload_limit))
            total.rejected[rejection.reason.value] += 1
    return total
