"""The ingest consumer: batches of events from the broker into PostgreSQL, acknowledged after commit.

One loop: fetch up to ``batch_size`` events (waiting at most ``batch_seconds``),
store them in one transaction, commit, then acknowledge them all. If the
database is unreachable the batch is released for redelivery and the loop
backs off; a message that keeps failing reaches its delivery limit and comes
back as a dead letter, which is stored as a rejected event. Events that a
consumer killed mid-batch had taken are delivered again; storage is
idempotent, so each is stored exactly once.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
import structlog

from grpod.schema.events import Limits, Rejection, RejectReason
from grpod.workers.event_source import Delivery, EventSource
from grpod.workers.ingest import BatchOutcome, Incoming, insert_rejections, store_isolating_failures

log = structlog.stdlib.get_logger(__name__)

StoredTraces = Callable[[BatchOutcome], None]  # told after each committed batch


@dataclass
class IngestConsumer:
    source: EventSource
    database_url: str
    limits: Limits
    payload_limit: int
    batch_size: int
    batch_seconds: float
    on_stored: StoredTraces | None = None
    connect_timeout: int = 10

    def __post_init__(self) -> None:
        self.totals = BatchOutcome()
        self._conn: psycopg.Connection[Any] | None = None

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(
                self.database_url,
                autocommit=True,
                connect_timeout=self.connect_timeout,
                application_name="grpod-ingest",
            )
        return self._conn

    def run(self, stop: threading.Event, idle_exit: float | None = None) -> BatchOutcome:
        """Consume until ``stop`` is set (or, with ``idle_exit``, after that many idle seconds)."""
        backoff = 0.5
        idle_since = time.monotonic()
        try:
            while not stop.is_set():
                batch = self.source.fetch(self.batch_size, self.batch_seconds)
                if not batch:
                    if idle_exit is not None and time.monotonic() - idle_since >= idle_exit:
                        break
                    continue
                idle_since = time.monotonic()
                try:
                    # A spool file may hold more events than a batch: one transaction per batch_size.
                    outcome = BatchOutcome()
                    for start in range(0, len(batch), self.batch_size):
                        outcome.add(self.store(batch[start : start + self.batch_size]))
                except psycopg.OperationalError as error:
                    self.source.release(batch)
                    self._drop_connection()
                    log.warning(
                        "database unavailable; batch released for redelivery", error=str(error), retry_in=backoff
                    )
                    stop.wait(backoff)
                    backoff = min(backoff * 2, 30.0)
                    continue
                except Exception:
                    # A bug, not bad input (that is rejected): leave it to redelivery and the delivery limit.
                    self.source.release(batch)
                    self._drop_connection()
                    log.exception("storing a batch failed; released for redelivery")
                    stop.wait(backoff)
                    backoff = min(backoff * 2, 30.0)
                    continue
                backoff = 0.5
                self.source.ack(batch)
                self.totals.add(outcome)
                if outcome.rejected:
                    log.info("events rejected", rejected=dict(outcome.rejected), accepted=outcome.accepted)
                if self.on_stored is not None and (outcome.stored_traces or outcome.rewarded_traces):
                    try:
                        self.on_stored(outcome)
                    except Exception:  # the hand-off is an optimisation: beat's sweep finds the work anyway
                        log.exception("handing stored traces on failed; the grouping sweep will pick them up")
        finally:
            self.source.close()
            self._drop_connection()
        return self.totals

    def store(self, batch: Sequence[Delivery]) -> BatchOutcome:
        conn = self._connection()
        live = [Incoming(payload=d.body, origin="queue") for d in batch if not d.dead]
        outcome = store_isolating_failures(conn, live, self.limits, self.payload_limit) if live else BatchOutcome()
        dead = [d for d in batch if d.dead]
        if dead:
            rejections = [
                (Incoming(payload=d.body, origin="dead_letter"), Rejection(RejectReason.DEAD_LETTERED, d.death))
                for d in dead
            ]
            with conn.transaction(), conn.cursor() as cursor:
                outcome.rejected_ids.extend(insert_rejections(cursor, rejections, self.payload_limit))
            outcome.rejected[RejectReason.DEAD_LETTERED.value] += len(dead)
        return outcome

    def _drop_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None
