"""Two workers of one deployment on one host: both consume. Celery names a worker celery@<host>,
and two named alike clash on their exclusive remote-control queue: the second died at its start
(RESOURCE_LOCKED), so a second distiller on a host added nothing. `grpod worker` names itself
grpod-<pid>@<host>."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from amqp.exceptions import NotFound
from kombu.connection import Connection

from ..faults.workers import kill, start, wait_for
from .helpers import grpod_env

WORKER = ["worker", "--queues", "distill", "--pool", "threads", "--concurrency", "2"]


def _consumers(rabbitmq_url: str, queue: str) -> int:
    with Connection(rabbitmq_url) as connection:
        try:
            return int(connection.channel().queue_declare(queue, passive=True)[2])
        except NotFound:  # no worker has declared it yet
            return 0


@pytest.mark.rabbitmq
def test_two_workers_on_one_host_both_consume(
    tmp_path: Path, database_url: str, rabbitmq_url: str, queue_prefix: str
) -> None:
    settings = {"database_url": database_url, "broker_url": rabbitmq_url, "queue_prefix": queue_prefix}
    logs = [tmp_path / "worker-1.log", tmp_path / "worker-2.log"]
    workers = [start(WORKER, grpod_env(tmp_path / f"home-{n}", **settings), log) for n, log in enumerate(logs)]
    try:
        wait_for(
            "two consumers of the distill queue",
            lambda: _consumers(rabbitmq_url, f"{queue_prefix}.distill") == 2,
            120,
            0.5,
        )
        assert [worker.poll() for worker in workers] == [None, None]
    finally:
        for worker in workers:
            kill(worker, signal.SIGTERM)
    text = "".join(log.read_text() for log in logs)
    assert "RESOURCE_LOCKED" not in text and "Traceback" not in text
