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

from grpod.daemon.event_queue import AmqpSource, Delivery, EventSource, SpoolSource
from grpod.daemon.events import Limits, Rejection, RejectReason
from grpod.daemon.settings import Settings
from grpod.daemon.topology import is_rabbitmq
from grpod.workers.ingest import BatchOutcome, Incoming, insert_rejections, store_isolating_failures

log = structlog.stdlib.get_logger(__name__)

StoredTraces = Callable[[BatchOutcome], None]  # told after each committed batch


def open_source(settings: Settings, prefetch: int) -> EventSource:
    url = settings.broker_url
    if url is not None and is_rabbitmq(url):
        return AmqpSource(url, settings.queue_prefix, settings.delivery_limit, prefetch=prefetch)
    return SpoolSource(settings.event_spool, settings.delivery_limit)


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

    @classmethod
    def from_settings(
        cls, settings: Settings, database_url: str, on_stored: StoredTraces | None = None, batch_size: int | None = None
    ) -> IngestConsumer:
        size = batch_size or settings.ingest_batch_size
        return cls(
            source=open_source(settings, prefetch=size * 2),
            database_url=database_url,
            limits=settings.limits(),
            payload_limit=settings.rejected_payload_bytes,
            batch_size=size,
            batch_seconds=settings.ingest_batch_seconds,
            on_stored=on_stored,
            connect_timeout=settings.database_connect_timeout,
        )

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


def main() -> None:
    """Run one ingest consumer in the foreground (``python -m grpod.workers.ingest_consumer``)."""
    import signal

    from grpod.daemon import resources
    from grpod.daemon.logs import configure_logging

    settings = resources.settings()
    configure_logging(settings.log_level, settings.log_format)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    consumer = IngestConsumer.from_settings(settings, resources.database_url())
    log.info("ingest consumer started")
    totals = consumer.run(stop)
    log.info("ingest consumer stopped", accepted=totals.accepted, duplicates=totals.duplicates)


if __name__ == "__main__":
    main()
