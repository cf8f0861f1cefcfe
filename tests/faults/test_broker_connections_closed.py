"""RabbitMQ closes every connection (`rabbitmqctl close_all_connections`) while the SDK publishes and
the ingest consumer consumes: both resume by themselves, and every event is stored exactly once."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from typing import Any

import psycopg
import pytest

from grpod.sdk import Client, ClientSettings

from ..e2e.helpers import GRPOD, grpod_env, run_grpod
from ..factories import reward, trace
from .invariants import assert_whole, wait_for_events
from .tcp_postgres import TcpPostgres

CLOSINGS = 3


@pytest.mark.rabbitmq
def test_closed_broker_connections_lose_nothing_and_both_sides_resume(
    tcp_postgres: TcpPostgres, rabbitmq_url: str, queue_prefix: str, tmp_path: Any
) -> None:
    rabbitmqctl = shutil.which("rabbitmqctl")
    assert rabbitmqctl is not None, "rabbitmqctl is needed to close the broker's connections"
    database = tcp_postgres.create_database("grpod")
    env = grpod_env(tmp_path / "home", database_url=database, broker_url=rabbitmq_url, queue_prefix=queue_prefix)
    assert run_grpod(["migrate"], env).returncode == 0
    consumer = subprocess.Popen(
        [*GRPOD[:1], "-m", "grpod.daemon.ingest"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    published: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    def publish() -> None:
        with Client(ClientSettings(broker_url=rabbitmq_url, queue_prefix=queue_prefix, publish_retries=5)) as client:
            number = 0
            while not stop.is_set():
                trace_id = f"b-{number}"
                try:
                    client.record_batch([trace(trace_id, query=f"query {number}"), reward(trace_id, 1.0)])
                    published.append(trace_id)
                except Exception as error:  # the SDK raised: the agent knows, and the event is not counted
                    failures.append(str(error))
                number += 1
                stop.wait(0.02)

    publisher = threading.Thread(target=publish)
    try:
        publisher.start()
        for _ in range(CLOSINGS):
            time.sleep(3)
            subprocess.run(
                [rabbitmqctl, "close_all_connections", "grpod fault test"], check=True, capture_output=True, timeout=60
            )
        time.sleep(3)
        stop.set()
        publisher.join(timeout=60)
        wait_for_events(database, traces=len(published), rewards=len(published))
        with psycopg.connect(database) as conn:
            stored = {row[0] for row in conn.execute("SELECT trace_id FROM traces")}

        assert consumer.poll() is None, "the consumer died"
        assert failures == [], failures[:3]  # the SDK reconnected within its retries every time
        assert len(published) > 100
        assert stored == set(published)
        with psycopg.connect(database) as conn:
            assert conn.execute("SELECT count(*), count(DISTINCT trace_id) FROM rewards").fetchone() == (
                len(published),
                len(published),
            )
            assert conn.execute("SELECT count(*) FROM rejected_events").fetchone() == (0,)
        assert_whole(database, traces=published, rewards=len(published))
    finally:
        stop.set()
        publisher.join(timeout=60)
        consumer.terminate()
        consumer.communicate(timeout=30)
