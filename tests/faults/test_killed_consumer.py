"""The ingest consumer SIGKILLed mid-stream, again and again: whatever it had taken and not
acknowledged comes again, and every event is stored exactly once, none rejected."""

from __future__ import annotations

import signal
import subprocess
import time
from typing import Any

import psycopg
import pytest

from grpod.sdk import Client, ClientSettings

from ..e2e.helpers import GRPOD, grpod_env, run_grpod
from ..factories import reward, trace
from .invariants import assert_whole, wait_for_events
from .tcp_postgres import TcpPostgres, count_rows

EVENTS = 3000
KILLS = 4


def stored(database: str) -> int:
    return count_rows(database, "traces") or 0


@pytest.mark.rabbitmq
def test_a_consumer_killed_mid_batch_loses_and_doubles_nothing(
    tcp_postgres: TcpPostgres, rabbitmq_url: str, queue_prefix: str, tmp_path: Any
) -> None:
    database = tcp_postgres.create_database("grpod")
    env = grpod_env(
        tmp_path / "home",
        database_url=database,
        broker_url=rabbitmq_url,
        queue_prefix=queue_prefix,
        ingest_batch_size="50",
    )
    assert run_grpod(["migrate"], env).returncode == 0
    ids = [f"k-{n}" for n in range(EVENTS // 2)]
    with Client(ClientSettings(broker_url=rabbitmq_url, queue_prefix=queue_prefix)) as client:
        for start in range(0, len(ids), 100):
            batch = ids[start : start + 100]
            client.record_batch([trace(t, query=f"query {t}") for t in batch] + [reward(t, 0.5) for t in batch])

    def consumer() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [*GRPOD[:1], "-m", "grpod.daemon.ingest"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    kills = 0
    running = consumer()
    try:
        while kills < KILLS:
            before = stored(database)
            deadline = time.monotonic() + 60
            while stored(database) == before and time.monotonic() < deadline:
                time.sleep(0.05)  # it is storing: kill it in the middle of the stream
            running.send_signal(signal.SIGKILL)
            running.wait(timeout=30)
            kills += 1
            running = consumer()
        wait_for_events(database, traces=len(ids), rewards=len(ids), timeout=120)
        time.sleep(2)  # anything redelivered late is a duplicate, and must change nothing

        assert kills == KILLS and stored(database) > 0
        with psycopg.connect(database) as conn:
            traces = {row[0] for row in conn.execute("SELECT trace_id FROM traces")}
            rewards = conn.execute("SELECT count(*), count(DISTINCT trace_id) FROM rewards").fetchone()
            rejected = conn.execute("SELECT count(*) FROM rejected_events").fetchone()
        assert traces == set(ids)
        assert rewards == (len(ids), len(ids))
        assert rejected == (0,)
        assert_whole(database, traces=ids, rewards=len(ids))
    finally:
        running.kill()
        running.wait(timeout=30)
