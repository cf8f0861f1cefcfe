"""PostgreSQL stopped for a minute while events flow over RabbitMQ: nothing is lost, rejected or
dead-lettered, ingest resumes by itself within seconds of the restart, and the SDK is never held up.

Real processes: `grpod migrate` and the ingest consumer (`python -m grpod.daemon.ingest`) against a
PostgreSQL server of the test's own on TCP, stopped and started with pg_ctl, and the real RabbitMQ.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from typing import Any

import psycopg
import pytest
from kombu.connection import Connection

from grpod.schema.topology import dead_events_queue
from grpod.sdk import Client, ClientSettings

from ..e2e.helpers import GRPOD, grpod_env, run_grpod
from ..factories import reward, trace
from .invariants import assert_whole, wait_for_events
from .tcp_postgres import TcpPostgres, count_rows

OUTAGE_SECONDS = float(os.environ.get("GRPOD_FAULT_OUTAGE_SECONDS", "60"))
EVENTS_PER_SECOND = 20


def health(env: dict[str, str], check: str = "--ready") -> tuple[int, bool, str]:
    """`grpod health` as a container's health check runs it: its exit code, its verdict, and why."""
    result = run_grpod(["health", check, "--json"], env, timeout=60)
    report = json.loads(result.stdout)
    return result.returncode, bool(report["ok"]), "; ".join(report["reasons"])


@pytest.mark.rabbitmq
def test_a_database_outage_holds_events_back_and_rejects_none(
    tcp_postgres: TcpPostgres, rabbitmq_url: str, queue_prefix: str, tmp_path: Any
) -> None:
    database = tcp_postgres.create_database("grpod")
    env = grpod_env(tmp_path / "home", database_url=database, broker_url=rabbitmq_url, queue_prefix=queue_prefix)
    migrated = run_grpod(["migrate", "--json"], env)
    assert migrated.returncode == 0, migrated.stderr
    consumer = subprocess.Popen(
        [*GRPOD[:1], "-m", "grpod.daemon.ingest"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    published: list[str] = []
    slowest_publish = 0.0
    stop = threading.Event()

    def publish() -> None:
        nonlocal slowest_publish
        settings = ClientSettings(broker_url=rabbitmq_url, queue_prefix=queue_prefix)
        with Client(settings) as client:
            number = 0
            while not stop.is_set():
                trace_id = f"o-{number}"
                started = time.monotonic()
                client.record_batch([trace(trace_id, query=f"query {number}"), reward(trace_id, number % 2)])
                slowest_publish = max(slowest_publish, time.monotonic() - started)
                published.append(trace_id)
                number += 1
                stop.wait(1 / EVENTS_PER_SECOND)

    publisher = threading.Thread(target=publish)
    try:
        publisher.start()
        time.sleep(8)
        healthy = health(env)
        tcp_postgres.stop()
        time.sleep(min(15.0, OUTAGE_SECONDS / 2))
        outage_live, outage_ready = health(env, "--live"), health(env)
        time.sleep(max(0.0, OUTAGE_SECONDS - min(15.0, OUTAGE_SECONDS / 2)))
        during = len(published)
        tcp_postgres.start()
        restarted = time.monotonic()
        before = count_rows(database, "traces")
        resumed = None
        while time.monotonic() - restarted < 30:
            now = count_rows(database, "traces")
            if now is not None and before is not None and now > before:
                resumed = time.monotonic() - restarted
                break
            before = now if before is None else before
            time.sleep(0.2)
        time.sleep(5)
        stop.set()
        publisher.join(timeout=30)
        wait_for_events(database, traces=len(published), rewards=len(published))

        assert consumer.poll() is None, "the consumer died"  # it was never restarted
        # Health: ready before; live but not ready while it holds its batch; ready again after.
        assert healthy[:2] == (0, True), healthy
        assert outage_live[:2] == (0, True), outage_live
        assert outage_ready[:2] == (1, False) and "the database does not answer" in outage_ready[2]
        assert health(env)[:2] == (0, True)
        assert resumed is not None and resumed < 10, f"ingest resumed {resumed} s after the restart"
        assert slowest_publish < 5, f"a publish took {slowest_publish:.1f} s while the database was down"
        assert during > EVENTS_PER_SECOND * OUTAGE_SECONDS / 4  # events kept flowing during the outage
        with psycopg.connect(database) as conn:
            stored = {row[0] for row in conn.execute("SELECT trace_id FROM traces")}
            rewards = conn.execute("SELECT count(*), count(DISTINCT trace_id) FROM rewards").fetchone()
            rejected = conn.execute("SELECT count(*) FROM rejected_events").fetchone()
        assert stored == set(published)  # every accepted event once (trace_id is the key)
        assert rewards == (len(published), len(published))
        assert rejected == (0,)
        with Connection(rabbitmq_url) as connection:
            _, dead, _ = dead_events_queue(queue_prefix)(connection.channel()).queue_declare(passive=True)
        assert dead == 0
        assert_whole(database, traces=published, rewards=len(published))
    finally:
        stop.set()
        publisher.join(timeout=30)
        consumer.terminate()
        _, errors = consumer.communicate(timeout=30)
        if consumer.returncode not in (0, -15):
            print(errors.decode(errors="replace")[-3000:])
