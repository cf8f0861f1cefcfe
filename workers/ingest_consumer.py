"""The ingest consumer: batches of events from the broker into PostgreSQL, acknowledged after commit.

One loop: fetch up to ``batch_size`` events (waiting at most ``batch_seconds``),
store them in one transaction, commit, then acknowledge them all. If the
database is unavailable the batch is held, unacknowledged, and stored again every few
seconds until it is back: an outage spends no deliveries and rejects nothing. A batch that fails
for another reason is released for redelivery; a message that keeps failing reaches its delivery
limit and comes back as a dead letter, which is stored as a rejected event. Events that a
consumer killed mid-batch had taken are delivered again; storage is idempotent, so each is
stored exactly once.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import psycopg
import structlog

from grpod.schema.events import Limits, Rejection, RejectReason
from grpod.schema.topology import amqp_errors
from grpod.workers.event_source import Delivery, EventSource
from grpod.workers.ingest import BatchOutcome, Incoming, insert_rejections, is_outage, store_isolating_failures

log = structlog.stdlib.get_logger(__name__)

StoredTraces = Callable[[BatchOutcome], None]  # told after each committed batch
ConsumerState = Literal["starting", "consuming", "waiting_for_database", "waiting_for_broker", "stopped"]
RETRY_SECONDS = 0.5  # a held batch is stored again after this, doubling ...
RETRY_MAX_SECONDS = 4.0  # ... up to this: ingest resumes within seconds of the database's return


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
        # What the health check reads: the consumer's state, and when it last fetched and stored.
        self.state: ConsumerState = "starting"
        self.fetched_at: float | None = None
        self.progressed_at: float | None = None

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
        """Consume until ``stop`` is set (or, with ``idle_exit``, after that many idle seconds).

        A database outage holds the batch: it stays unacknowledged (so it counts no delivery and
        is never dead-lettered) and is stored again every few seconds until the database is back.
        A broker that drops the connection is reconnected to; what was unacknowledged comes again.
        """
        idle_since = time.monotonic()
        self.state = "consuming"
        try:
            while not stop.is_set():
                batch = self._fetch(stop)
                if batch is None:
                    continue
                if not batch:
                    if idle_exit is not None and time.monotonic() - idle_since >= idle_exit:
                        break
                    continue
                idle_since = time.monotonic()
                outcome = self._store_held(batch, stop)
                if outcome is None:
                    continue
                self.source.ack(batch)
                self.totals.add(outcome)
                self.state, self.progressed_at = "consuming", time.time()
                if outcome.rejected:
                    log.info("events rejected", rejected=dict(outcome.rejected), accepted=outcome.accepted)
                if self.on_stored is not None and (outcome.stored_traces or outcome.rewarded_traces):
                    try:
                        self.on_stored(outcome)
                    except Exception:  # the hand-off is an optimisation: beat's sweep finds the work anyway
                        log.exception("handing stored traces on failed; the grouping sweep will pick them up")
        finally:
            self.state = "stopped"
            with contextlib.suppress(Exception):
                self.source.close()
            self._drop_connection()
        return self.totals

    def _fetch(self, stop: threading.Event) -> list[Delivery] | None:
        """A batch, or None when the broker connection was lost (and has been reopened, or not yet)."""
        try:
            batch = self.source.fetch(self.batch_size, self.batch_seconds)
        except amqp_errors() as error:
            self.state = "waiting_for_broker"
            log.warning("the broker connection was lost; reconnecting", error=str(error) or type(error).__name__)
            backoff = RETRY_SECONDS
            while not stop.is_set():
                try:
                    self.source.reconnect()
                except amqp_errors() as again:
                    log.warning("the broker is still away", error=str(again) or type(again).__name__, retry_in=backoff)
                    stop.wait(backoff)
                    backoff = min(backoff * 2, RETRY_MAX_SECONDS)
                    continue
                log.info("reconnected to the broker")
                self.state = "consuming"
                break
            return None
        self.fetched_at = time.time()
        return batch

    def _store_held(self, batch: Sequence[Delivery], stop: threading.Event) -> BatchOutcome | None:
        """Store the batch, holding it through a database outage; None when it was not stored (a stop
        during an outage, or a failure that is no outage, which leaves it to redelivery)."""
        backoff = RETRY_SECONDS
        told = False
        while True:
            try:
                outcome = BatchOutcome()
                # A spool file may hold more events than a batch: one transaction per batch_size.
                for start in range(0, len(batch), self.batch_size):
                    outcome.add(self.store(batch[start : start + self.batch_size]))
                if told:
                    log.info("the database is back; the held batch is stored", events=len(batch))
                return outcome
            except psycopg.Error as error:
                self._drop_connection()
                if not is_outage(error):
                    self._give_back(batch, "storing a batch failed; released for redelivery")
                    return None
                self.state = "waiting_for_database"
                if not told:
                    log.warning(
                        "database unavailable; holding the batch until it is back",
                        events=len(batch),
                        error=str(error).splitlines()[0] if str(error) else type(error).__name__,
                    )
                    told = True
            except Exception:
                self._give_back(batch, "storing a batch failed; released for redelivery")
                return None
            if self._wait(stop, backoff):
                self.source.release(batch)  # a clean stop: the next consumer takes it
                return None
            backoff = min(backoff * 2, RETRY_MAX_SECONDS)

    def _wait(self, stop: threading.Event, seconds: float) -> bool:
        """Wait, keeping the broker connection alive; True when asked to stop."""
        deadline = time.monotonic() + seconds
        while not stop.wait(min(1.0, max(0.0, deadline - time.monotonic()))):
            with contextlib.suppress(Exception):  # a lost broker shows at the next fetch
                self.source.keepalive()
            if time.monotonic() >= deadline:
                return False
        return True

    def _give_back(self, batch: Sequence[Delivery], why: str) -> None:
        # A bug, not bad input (that is rejected) nor an outage: redelivery and the delivery limit decide.
        log.exception(why)
        with contextlib.suppress(Exception):
            self.source.release(batch)
        time.sleep(RETRY_SECONDS)

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
