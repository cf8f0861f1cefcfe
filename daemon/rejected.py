"""The rejected store as operators see it: list, inspect, replay."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from grpod.daemon.settings import Settings
from grpod.schema.errors import OperatorError
from grpod.schema.sql import load_queries
from grpod.workers.ingest import Incoming, store_batch

QUERIES = ("grpod.schema", "queries/rejected.sql")


def as_json(row: dict[str, Any]) -> dict[str, Any]:
    payload = bytes(row["payload"])
    return {
        "id": row["id"],
        "reason": row["reason"],
        "detail": row["detail"],
        "received_at": row["received_at"].isoformat(),
        "origin": row["origin"],
        "domain": row["domain"],
        "trace_id": row["trace_id"],
        "payload": payload.decode("utf-8", errors="replace"),
        "payload_size": row["payload_size"],
        "payload_truncated": row["payload_truncated"],
        "replayed_at": row["replayed_at"].isoformat() if isinstance(row["replayed_at"], datetime) else None,
        "replay_outcome": row["replay_outcome"],
    }


def list_rejected(
    conn: psycopg.Connection[Any], reason: str | None, limit: int, domains: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """The newest rejected events, of one reason if given, and of these domains only if given
    (then an event that named no domain is left out)."""
    with conn.cursor(row_factory=dict_row) as cursor:
        cursor.execute(
            load_queries(*QUERIES)["list_rejected"],
            {"reason": reason, "limit": limit, "domains": list(domains) if domains is not None else None},
        )
        return [as_json(row) for row in cursor.fetchall()]


@dataclass(frozen=True)
class ReplayResult:
    id: int
    outcome: str  # accepted, duplicate, rejected
    reason: str | None = None
    rejected_id: int | None = None


def replay(conn: psycopg.Connection[Any], rejected_id: int, settings: Settings) -> ReplayResult:
    """Run a rejected event through validation and storage again (after a fix, e.g. a raised limit)."""
    queries = load_queries(*QUERIES)
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cursor:
        row = cursor.execute(queries["get_rejected"], {"id": rejected_id}).fetchone()
        if row is None:
            raise OperatorError(f"there is no rejected event {rejected_id}; `grpod rejected` lists them.")
        if row["payload_truncated"]:
            raise OperatorError(
                f"rejected event {rejected_id} was kept truncated ({row['payload_size']} bytes, more than "
                "GRPOD_REJECTED_PAYLOAD_BYTES), so it cannot be replayed; re-send it from its source."
            )
        stored = store_batch(
            conn,
            [Incoming(payload=bytes(row["payload"]), origin="replay")],
            settings.limits(),
            settings.rejected_payload_bytes,
        )
        if stored.accepted:
            result = ReplayResult(rejected_id, "accepted")
        elif stored.duplicates:
            result = ReplayResult(rejected_id, "duplicate")
        else:
            (reason,) = stored.rejected
            result = ReplayResult(rejected_id, "rejected", reason=reason, rejected_id=stored.rejected_ids[0])
        label = result.outcome if result.reason is None else f"rejected again: {result.reason} (#{result.rejected_id})"
        cursor.execute(queries["mark_replayed"], {"id": rejected_id, "outcome": label})
    return result
