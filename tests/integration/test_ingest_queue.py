"""Events through the real broker (RabbitMQ, and the embedded spool) into the real PostgreSQL.

Includes the crash tests: a consumer killed with SIGKILL in the middle of a batch loses nothing
and duplicates nothing; a message whose consumer keeps dying is dead-lettered and recorded.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from grpod.daemon.ingest import consumer_from_settings
from grpod.daemon.settings import Settings
from grpod.sdk import Client, ValidEvent
from grpod.sdk.publish import PublishError

from ..broker import delete_broker_objects
from ..conftest import new_queue_prefix
from ..factories import reward, trace


@pytest.fixture(params=["rabbitmq", "embedded"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    prefix = new_queue_prefix()
    if request.param == "rabbitmq":
        url: str = request.getfixturevalue("rabbitmq_url")
        yield Settings(home=tmp_path, broker_url=url, queue_prefix=prefix, delivery_limit=2, ingest_batch_seconds=0.1)
        delete_broker_objects(url, prefix)
    else:
        yield Settings(home=tmp_path, queue_prefix=prefix, delivery_limit=2, ingest_batch_seconds=0.1)


def _counts(database_url: str) -> tuple[int, int, int]:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM traces), (SELECT count(*) FROM rewards),"
            " (SELECT count(*) FROM rejected_events)"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


def _wait_for(database_url: str, expected: tuple[int, int, int], timeout: float = 60) -> tuple[int, int, int]:
    deadline = time.monotonic() + timeout
    counts = _counts(database_url)
    while counts != expected and time.monotonic() < deadline:
        time.sleep(0.1)
        counts = _counts(database_url)
    return counts


def _events(client: Client, traces: int, rewards: int, tag: str) -> list[ValidEvent]:
    events = [
        client.trace_event(
            domain="support",
            query=f"question {i}",
            trajectory=[{"role": "user", "content": f"q{i}"}],
            answer=f"answer {i}",
            trace_id=f"{tag}-{i}",
        )
        for i in range(traces)
    ]
    events += [client.reward_event(f"{tag}-{i}", float(i % 2), source="thumbs") for i in range(rewards)]
    return events


def test_sdk_to_database_exactly_once_with_redelivery(settings: Settings, database_url: str) -> None:
    with Client(settings) as client:
        events = _events(client, 300, 200, "t")
        client.record_batch(events[:250])
        stop = threading.Event()
        consumer = consumer_from_settings(settings, database_url, batch_size=100)
        thread = threading.Thread(target=consumer.run, args=(stop,))
        thread.start()
        try:
            client.record_batch(events[250:])
            client.record_batch(events[:100])  # the agent re-sends: nothing must change
            client.record_reward("t-0", 1.0, source="grader")  # a second source for one trace
            assert _wait_for(database_url, (300, 201, 0)) == (300, 201, 0)
            deadline = time.monotonic() + 30
            while consumer.totals.duplicates < 100 and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            stop.set()
            thread.join(timeout=30)
    assert consumer.totals.accepted == 501
    assert consumer.totals.duplicates == 100


def test_a_consumer_killed_mid_batch_loses_and_duplicates_nothing(settings: Settings, database_url: str) -> None:
    with Client(settings) as client:
        client.record_batch(_events(client, 1800, 1200, "k"))
    env = _consumer_env(settings, database_url, batch_size=200, batch_seconds=0.5)
    first = subprocess.Popen([sys.executable, "-m", "grpod.daemon.ingest"], env=env, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while sum(_counts(database_url)[:2]) < 400 and time.monotonic() < deadline:
            time.sleep(0.01)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        if first.poll() is None:
            first.kill()
    stored_at_kill = sum(_counts(database_url)[:2])
    assert 400 <= stored_at_kill < 3000, "the kill must land while events were still being consumed"
    second = subprocess.Popen([sys.executable, "-m", "grpod.daemon.ingest"], env=env, stderr=subprocess.DEVNULL)
    try:
        assert _wait_for(database_url, (1800, 1200, 0), timeout=90) == (1800, 1200, 0)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=30)


def test_a_message_whose_consumer_keeps_dying_is_dead_lettered_and_recorded(
    settings: Settings, database_url: str, tmp_path: Path
) -> None:
    from grpod.daemon.status import queue_depths

    with Client(settings) as client:
        client.record_batch([trace("t-poison")])
    # A consumer that holds the message unacknowledged (a long batch wait) and is killed, again and again.
    holding = _consumer_env(settings, database_url, batch_size=1000, batch_seconds=60)
    for attempt in range(settings.delivery_limit + 1):
        log = tmp_path / f"consumer-{attempt}.log"
        with log.open("wb") as out:
            consumer = subprocess.Popen([sys.executable, "-m", "grpod.daemon.ingest"], env=holding, stderr=out)
        # Killed only once it has taken the message: started (a dead consumer's claims given back
        # first, on the spool), then nothing left waiting in the queue. A fixed sleep was not
        # enough on a loaded machine, and the message then took fewer deliveries than the limit.
        deadline = time.monotonic() + 60
        while "ingest consumer started" not in log.read_text() or queue_depths(settings)["events"] != 0:
            assert time.monotonic() < deadline, f"consumer {attempt} did not take the message: {log.read_text()}"
            assert consumer.poll() is None, f"consumer {attempt} exited: {log.read_text()}"
            time.sleep(0.2)
        consumer.send_signal(signal.SIGKILL)
        consumer.wait(timeout=10)
    assert _counts(database_url) == (0, 0, 0)
    stop = threading.Event()
    healthy = consumer_from_settings(settings, database_url)
    thread = threading.Thread(target=healthy.run, args=(stop,))
    thread.start()
    try:
        assert _wait_for(database_url, (0, 0, 1), timeout=30) == (0, 0, 1)
    finally:
        stop.set()
        thread.join(timeout=30)
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT reason, origin, detail, payload FROM rejected_events").fetchone()
    assert row is not None
    assert row[0] == "dead_lettered" and row[1] == "dead_letter"
    assert "delivered" in row[2]
    assert b"t-poison" in bytes(row[3])


def _consumer_env(settings: Settings, database_url: str, batch_size: int, batch_seconds: float) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRPOD_")}
    env.update(
        {
            "GRPOD_DATABASE_URL": database_url,
            "GRPOD_HOME": str(settings.home),
            "GRPOD_QUEUE_PREFIX": settings.queue_prefix,
            "GRPOD_DELIVERY_LIMIT": str(settings.delivery_limit),
            "GRPOD_INGEST_BATCH_SIZE": str(batch_size),
            "GRPOD_INGEST_BATCH_SECONDS": str(batch_seconds),
            "GRPOD_LOG_FORMAT": "json",
        }
    )
    if settings.broker_url is not None:
        env["GRPOD_BROKER_URL"] = settings.broker_url
    return env


def test_an_unreachable_broker_raises_after_the_retry_budget(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path, broker_url="amqp://guest:guest@127.0.0.1:1//", publish_timeout=1, publish_retries=2
    )
    started = time.monotonic()
    with Client(settings) as client, pytest.raises(PublishError, match=r"after 3 attempt\(s\)"):
        client.record_batch([reward("t-1")])
    assert time.monotonic() - started < 30, "the agent must never be blocked for long"
