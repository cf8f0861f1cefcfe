"""`grpod ingest FILE`: load a JSON-lines file through the same validation and store as the queue."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

import psycopg

from grpod.daemon.settings import Settings
from grpod.workers.ingest import BatchOutcome, Incoming, store_isolating_failures

BATCH_LINES = 1000


def read_events(stream: IO[bytes]) -> Iterator[bytes]:
    """Each non-blank line is one event, as bytes (bad ones are rejected later, not here)."""
    for line in stream:
        stripped = line.strip()
        if stripped:
            yield stripped


def batches(lines: Iterable[bytes], size: int) -> Iterator[list[bytes]]:
    batch: list[bytes] = []
    for line in lines:
        batch.append(line)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def backfill(
    conn: psycopg.Connection[Any],
    stream: IO[bytes],
    settings: Settings,
    progress: Callable[[int, int], None] | None = None,
) -> BatchOutcome:
    """Store every event of the stream; ``progress(events, bytes)`` is told after each batch."""
    total = BatchOutcome()
    for batch in batches(read_events(stream), BATCH_LINES):
        outcome = store_isolating_failures(
            conn,
            [Incoming(payload=line, origin="file") for line in batch],
            settings.limits(),
            settings.rejected_payload_bytes,
        )
        total.add(outcome)
        if progress is not None:
            progress(len(batch), sum(len(line) + 1 for line in batch))
    return total


def summary(outcome: BatchOutcome) -> dict[str, Any]:
    return {
        "accepted": outcome.accepted,
        "duplicates": outcome.duplicates,
        "rejected": dict(sorted(outcome.rejected.items())),
    }
