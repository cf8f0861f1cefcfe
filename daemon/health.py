"""Health: whether this host's worker is alive, and whether it is ready (consuming, database up).

The worker's ingest consumer runs in a thread of its main process. A reporter thread beside it
writes, every few seconds, what the consumer is doing (its state, when it last fetched and
stored) to a file under ``GRPOD_HOME/health`` that `grpod health` reads on the same host (a
container's health check), and to the ``heartbeats`` table that `grpod status` reads from
anywhere (when the database is up). The decisions are plain functions over what was written.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psycopg
import structlog

from grpod.daemon.settings import Settings
from grpod.workers import maintenance
from grpod.workers.event_source import process_alive
from grpod.workers.ingest_consumer import IngestConsumer

REPORT_SECONDS = 5.0
FRESH_SECONDS = 3 * REPORT_SECONDS  # a report older than this says the process or its reporter is stuck

log = structlog.stdlib.get_logger(__name__)


@dataclass(frozen=True)
class ConsumerReport:
    hostname: str
    pid: int
    state: str
    consumer_alive: bool
    fetched_at: float | None
    progressed_at: float | None
    written_at: float


@dataclass(frozen=True)
class Verdict:
    live: bool
    ready: bool
    reasons: list[str]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def health_folder(settings: Settings) -> Path:
    return settings.home / "health"


def judge(reports: list[ConsumerReport], now: float, database_reachable: bool) -> Verdict:
    """Live: a worker of this host reported recently and its consumer thread runs. Ready: live, its
    consumer is consuming (not waiting for the database or the broker), and the database answers."""
    reasons: list[str] = []
    fresh = [r for r in reports if now - r.written_at <= FRESH_SECONDS]
    if not reports:
        reasons.append("no worker with an ingest consumer has reported on this host")
    elif not fresh:
        reasons.append(f"the last report is {now - max(r.written_at for r in reports):.0f} s old")
    alive = [r for r in fresh if r.consumer_alive]
    if fresh and not alive:
        reasons.append("the ingest consumer thread is not running")
    consuming = [r for r in alive if r.state == "consuming"]
    if alive and not consuming:
        reasons.append(f"the ingest consumer is {alive[0].state.replace('_', ' ')}")
    if not database_reachable:
        reasons.append("the database does not answer")
    live = bool(alive)
    return Verdict(live, live and bool(consuming) and database_reachable, reasons)


def read_reports(settings: Settings, hostname: str | None = None) -> list[ConsumerReport]:
    host = hostname or socket.gethostname()
    reports = []
    for path in sorted(health_folder(settings).glob(f"{host}-*.json")):
        with contextlib.suppress(OSError, ValueError, TypeError):
            report = ConsumerReport(**json.loads(path.read_text()))
            if process_alive(report.pid):
                reports.append(report)
    return reports


def database_reachable(url: str, timeout: int = 3) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=timeout) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error:
        return False
    return True


class HealthReporter:
    """Writes the consumer's state every ``REPORT_SECONDS``, to this host's file and the heartbeats."""

    def __init__(
        self, settings: Settings, database_url: str, consumer: IngestConsumer, thread: threading.Thread
    ) -> None:
        self.settings = settings
        self.database_url = database_url
        self.consumer = consumer
        self.thread = thread
        self.path = health_folder(settings) / f"{socket.gethostname()}-{os.getpid()}.json"
        self._stop = threading.Event()
        self._reporter = threading.Thread(target=self._run, name="grpod-health", daemon=True)
        self._conn: psycopg.Connection[Any] | None = None

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._reporter.start()

    def stop(self) -> None:
        self._stop.set()
        self._reporter.join(timeout=REPORT_SECONDS * 2)
        with contextlib.suppress(OSError):
            self.path.unlink()

    def report(self) -> ConsumerReport:
        return ConsumerReport(
            hostname=socket.gethostname(),
            pid=os.getpid(),
            state=self.consumer.state,
            consumer_alive=self.thread.is_alive(),
            fetched_at=self.consumer.fetched_at,
            progressed_at=self.consumer.progressed_at,
            written_at=time.time(),
        )

    def _run(self) -> None:
        while not self._stop.is_set():
            report = self.report()
            temporary = self.path.with_suffix(".tmp")
            with contextlib.suppress(OSError):
                temporary.write_text(json.dumps(asdict(report)))
                os.replace(temporary, self.path)
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = psycopg.connect(self.database_url, autocommit=True, connect_timeout=3)
                maintenance.record_consumer_state(self._conn, report.hostname, report.pid, report.state)
            except psycopg.Error:  # the database is away: the file still says so, and the consumer holds its batch
                with contextlib.suppress(psycopg.Error):
                    if self._conn is not None:
                        self._conn.close()
                self._conn = None
            self._stop.wait(REPORT_SECONDS)
        if self._conn is not None:
            self._conn.close()
