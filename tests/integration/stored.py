"""Storing events for a test through the real ingest path."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from grpod.schema.events import Limits
from grpod.workers import library_store
from grpod.workers.ingest import Incoming, store_isolating_failures
from grpod.workers.library import Provenance
from grpod.workers.operations import Operation

from ..factories import raw


def ingest(conn: psycopg.Connection[Any], *events: dict[str, Any]) -> None:
    """Store wire events as the ingest consumer does; every one must be accepted."""
    outcome = store_isolating_failures(conn, [Incoming(raw(e), "test") for e in events], Limits(), 4096)
    assert not outcome.rejected, outcome.rejected


def publish(
    conn: psycopg.Connection[Any],
    domain: str,
    operations: Sequence[Operation],
    reason: str = "test",
    provenance: Provenance | None = None,
) -> int:
    """A version as the domain update makes one: appended, then labelled by the publish policy."""
    with conn.transaction():
        library_store.lock_updates_now(conn, domain)
        parent = library_store.load(conn, domain, library_store.current_version(conn, domain))
        version = library_store.publish(
            conn,
            parent,
            operations,
            [],
            created_by="distillation",
            reason=reason,
            provenance=provenance or (lambda op: {"distillations": list(op.sources)}),
        )
        library_store.label_new_version(conn, domain, version, actor="distillation", reason=reason)
    return version
