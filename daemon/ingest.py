"""The daemon's side of ingest: the consumer built from the settings, run by a Celery worker or alone.

Events from agents are plain JSON (any AMQP client can publish them), not Celery task messages,
so ingestion is a consumer of its own: a thread of the worker's main process, started and
stopped with the worker (``IngestConsumerStep``), or one process in the foreground
(``python -m grpod.daemon.ingest``).
"""

from __future__ import annotations

import threading
from typing import Any

import structlog
from celery import bootsteps

from grpod.daemon import resources
from grpod.daemon.health import HealthReporter
from grpod.daemon.settings import Settings
from grpod.schema.topology import is_rabbitmq
from grpod.workers.event_source import AmqpSource, EventSource, SpoolSource
from grpod.workers.ingest import BatchOutcome
from grpod.workers.ingest_consumer import IngestConsumer, StoredTraces

log = structlog.stdlib.get_logger(__name__)


def open_source(settings: Settings, prefetch: int) -> EventSource:
    url = settings.broker_url
    if url is not None and is_rabbitmq(url):
        return AmqpSource(url, settings.queue_prefix, settings.delivery_limit, prefetch=prefetch)
    return SpoolSource(settings.event_spool, settings.delivery_limit)


def consumer_from_settings(
    settings: Settings, database_url: str, on_stored: StoredTraces | None = None, batch_size: int | None = None
) -> IngestConsumer:
    size = batch_size or settings.ingest_batch_size
    return IngestConsumer(
        source=open_source(settings, prefetch=size * 2),
        database_url=database_url,
        limits=settings.limits(),
        payload_limit=settings.rejected_payload_bytes,
        batch_size=size,
        batch_seconds=settings.ingest_batch_seconds,
        on_stored=on_stored,
        connect_timeout=settings.database_connect_timeout,
    )


def hand_off(app: Any) -> StoredTraces:
    """What the consumer does after each commit: new traces go to the grouping stage, one task per
    domain; new rewards may make groups ready. (A lost task is found again by the grouping sweep.)"""

    def send(outcome: BatchOutcome) -> None:
        for domain, trace_ids in outcome.stored_traces.items():
            app.send_task("grpod.group.assign_traces", kwargs={"domain": domain, "trace_ids": trace_ids})
        if outcome.rewarded_traces:
            app.send_task("grpod.group.check_readiness", kwargs={"trace_ids": outcome.rewarded_traces})

    return send


class IngestConsumerStep(bootsteps.StartStopStep):
    requires = {"celery.worker.components:Pool"}

    def __init__(self, parent: Any, **options: Any) -> None:
        super().__init__(parent, **options)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._health: HealthReporter | None = None

    def start(self, parent: Any) -> None:
        settings = resources.settings()
        consumer = consumer_from_settings(settings, resources.database_url(), on_stored=hand_off(parent.app))
        self._thread = threading.Thread(target=consumer.run, args=(self._stop,), name="grpod-ingest", daemon=True)
        self._thread.start()
        self._health = HealthReporter(settings, resources.database_url(), consumer, self._thread)
        self._health.start()
        log.info("ingest consumer started", batch_size=consumer.batch_size)

    def stop(self, parent: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            log.info("ingest consumer stopped")
        if self._health is not None:
            self._health.stop()


def main() -> None:
    """Run one ingest consumer in the foreground (``python -m grpod.daemon.ingest``)."""
    import signal

    from grpod.daemon.celery_app import create_app
    from grpod.daemon.logs import configure_logging

    settings = resources.settings()
    configure_logging(settings.log_level, settings.log_format)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    # It hands off to the workers as the worker's own consumer does, through the broker.
    consumer = consumer_from_settings(settings, resources.database_url(), on_stored=hand_off(create_app(settings)))
    health = HealthReporter(settings, resources.database_url(), consumer, threading.current_thread())
    health.start()
    log.info("ingest consumer started")
    try:
        totals = consumer.run(stop)
    finally:
        health.stop()
    log.info("ingest consumer stopped", accepted=totals.accepted, duplicates=totals.duplicates)


if __name__ == "__main__":
    main()
