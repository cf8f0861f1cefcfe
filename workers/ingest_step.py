"""Runs the ingest consumer inside a Celery worker that serves the ingest stage.

Events from agents are plain JSON (any AMQP client can publish them), not
Celery task messages, so ingestion is a consumer of its own: a thread of the
worker's main process, started and stopped with the worker.
"""

from __future__ import annotations

import threading
from typing import Any

import structlog
from celery import bootsteps

from grpod.daemon import resources
from grpod.workers.ingest import BatchOutcome
from grpod.workers.ingest_consumer import IngestConsumer

log = structlog.stdlib.get_logger(__name__)


class IngestConsumerStep(bootsteps.StartStopStep):
    requires = {"celery.worker.components:Pool"}

    def __init__(self, parent: Any, **options: Any) -> None:
        super().__init__(parent, **options)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, parent: Any) -> None:
        settings = resources.settings()
        app = parent.app

        def hand_off(outcome: BatchOutcome) -> None:
            # New traces go to the grouping stage, one task per domain; new rewards may make groups ready.
            for domain, trace_ids in outcome.stored_traces.items():
                app.send_task("grpod.group.assign_traces", kwargs={"domain": domain, "trace_ids": trace_ids})
            if outcome.rewarded_traces:
                app.send_task("grpod.group.check_readiness", kwargs={"trace_ids": outcome.rewarded_traces})

        consumer = IngestConsumer.from_settings(settings, resources.database_url(), on_stored=hand_off)
        self._thread = threading.Thread(target=consumer.run, args=(self._stop,), name="grpod-ingest", daemon=True)
        self._thread.start()
        log.info("ingest consumer started", batch_size=consumer.batch_size)

    def stop(self, parent: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            log.info("ingest consumer stopped")
