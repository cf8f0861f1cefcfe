"""The Celery app on the real RabbitMQ: quorum queues, dead-lettering, retries, a task end to end."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from amqp.exceptions import PreconditionFailed
from celery import Celery, shared_task
from celery.contrib.testing.worker import start_worker
from kombu.connection import Connection
from kombu.entity import Queue

from grpod.daemon import resources
from grpod.daemon.celery_app import create_app, declare_queues
from grpod.daemon.settings import Settings
from grpod.schema.topology import dead_letter_queue

from ..broker import delete_broker_objects
from ..conftest import new_queue_prefix

ATTEMPTS: dict[str, int] = {}


class FlakyError(Exception):
    pass


@shared_task(name="grpod.maintenance.flaky_for_test", bind=True, autoretry_for=(FlakyError,))
def flaky(self: Any, key: str, failures: int) -> int:
    """Fails ``failures`` times, then succeeds: exercises retry with backoff."""
    ATTEMPTS[key] = ATTEMPTS.get(key, 0) + 1
    if ATTEMPTS[key] <= failures:
        raise FlakyError(f"attempt {ATTEMPTS[key]}")
    return ATTEMPTS[key]


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory, rabbitmq_url: str) -> Iterator[Settings]:
    prefix = new_queue_prefix()
    home = tmp_path_factory.mktemp("home")
    settings = Settings(home=home, broker_url=rabbitmq_url, queue_prefix=prefix, delivery_limit=2)
    yield settings
    delete_broker_objects(rabbitmq_url, prefix)


@pytest.fixture(scope="module")
def app(settings: Settings) -> Celery:
    app = create_app(settings)
    declare_queues(app, settings)
    return app


@pytest.fixture(scope="module")
def worker(app: Celery) -> Iterator[None]:
    """One embedded worker (a thread, on the real broker) for the module: stopping one is slow."""
    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=30):
        yield


def test_stage_queues_are_quorum_queues_on_rabbitmq(app: Celery, settings: Settings) -> None:
    with Connection(settings.broker_url) as connection:
        for queue in app.conf.task_queues:
            # The same queue declared as a classic one must clash with the quorum queue.
            arguments = {**queue.queue_arguments, "x-queue-type": "classic"}
            classic = Queue(
                queue.name,
                exchange=queue.exchange,
                routing_key=queue.routing_key,
                durable=True,
                queue_arguments=arguments,
            )
            with pytest.raises(PreconditionFailed, match="inequivalent arg 'x-queue-type'"):
                classic(connection.channel()).declare()


def test_a_message_rejected_delivery_limit_times_is_dead_lettered(app: Celery, settings: Settings) -> None:
    ingest = next(q for q in app.conf.task_queues if q.name.endswith(".ingest"))
    with Connection(settings.broker_url) as connection:
        channel = connection.channel()
        producer = connection.Producer(channel)
        producer.publish({"poison": True}, exchange=ingest.exchange, routing_key="ingest", serializer="json")
        rejections = 0
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            message = ingest(channel).get(no_ack=False)
            if message is None:
                if rejections > settings.delivery_limit:
                    break
                time.sleep(0.1)
                continue
            message.reject(requeue=True)
            rejections += 1
        assert rejections == settings.delivery_limit + 1
        dead = None
        deadline = time.monotonic() + 5
        while dead is None and time.monotonic() < deadline:
            dead = dead_letter_queue(settings.queue_prefix)(channel).get(no_ack=True)
            time.sleep(0.05)
    assert dead is not None
    assert dead.payload == {"poison": True}
    assert dead.headers["x-first-death-reason"] == "delivery_limit"


@pytest.mark.usefixtures("worker")
def test_heartbeat_task_runs_end_to_end_through_rabbitmq(
    app: Celery, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GRPOD_DATABASE_URL", database_url)
    resources.forget()
    beat = {
        "hostname": "beat-host",
        "pid": 4242,
        "started_at": "2026-11-24T10:00:00+00:00",
        "version": "9.9.9",
    }
    app.send_task("grpod.maintenance.heartbeat", kwargs={"beat": beat})
    rows: list[tuple[Any, ...]] = []
    deadline = time.monotonic() + 20
    while len(rows) < 2 and time.monotonic() < deadline:
        with psycopg.connect(database_url) as conn:
            rows = conn.execute("SELECT role, hostname, pid, version FROM heartbeats ORDER BY role").fetchall()
        time.sleep(0.1)
    assert rows[0] == ("beat", "beat-host", 4242, "9.9.9")
    assert rows[1][0] == "worker"


@pytest.mark.usefixtures("worker")
def test_a_failing_task_is_retried_with_backoff_until_it_succeeds(app: Celery) -> None:
    key = f"retry-{time.monotonic_ns()}"
    app.send_task("grpod.maintenance.flaky_for_test", kwargs={"key": key, "failures": 2})
    deadline = time.monotonic() + 60
    while ATTEMPTS.get(key, 0) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ATTEMPTS[key] == 3
