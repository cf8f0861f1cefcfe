"""A grouping worker SIGKILLed again and again while it embeds and places a stream of traces: the
task it held comes again from RabbitMQ, each trace ends in exactly one group, and every group's
size is its members."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest

from grpod.sdk import Client, ClientSettings

from ..e2e.helpers import grpod_env, run_grpod
from ..factories import reward, trace
from .invariants import assert_whole
from .tcp_postgres import TcpPostgres, count_rows
from .workers import kill, start, wait_for

TOPICS = [
    "reset my password",
    "rotate an API key",
    "export my invoices",
    "change the billing email",
    "delete my account",
    "invite a teammate",
    "enable two-factor login",
    "download the mobile app",
]
PHRASINGS = ["How do I {}?", "{} please", "what is the way to {}", "I need to {} today", "help me {}"]
TRACES = 1500
KILLS = 3


def grouped(database: str) -> int:
    return count_rows(database, "traces WHERE group_id IS NOT NULL") or 0


def more_than(database: str, before: int) -> bool:
    return grouped(database) > before


@pytest.mark.rabbitmq
def test_a_grouping_worker_killed_mid_stream_groups_every_trace_once(
    tcp_postgres: TcpPostgres, rabbitmq_url: str, queue_prefix: str, tmp_path: Path
) -> None:
    database = tcp_postgres.create_database("grpod")
    env = grpod_env(
        tmp_path / "home",
        database_url=database,
        broker_url=rabbitmq_url,
        queue_prefix=queue_prefix,
        ingest_batch_size="25",  # a grouping task per 25 traces: many tasks, each short
    )
    assert run_grpod(["migrate"], env).returncode == 0
    ids = [f"g-{n}" for n in range(TRACES)]
    rewarded = ids[::3]
    with Client(ClientSettings(broker_url=rabbitmq_url, queue_prefix=queue_prefix)) as client:
        for start_at in range(0, TRACES, 100):
            batch = ids[start_at : start_at + 100]
            client.record_batch(
                [
                    trace(t, domain=f"d{n % 2}", query=PHRASINGS[n % 5].format(TOPICS[(n // 5) % len(TOPICS)]))
                    for n, t in enumerate(batch, start=start_at)
                ]
            )
        client.record_batch([reward(t, 1.0 if n % 2 else 0.0) for n, t in enumerate(rewarded)])

    log = tmp_path / "grpod.log"
    consumer = start(["-m", "grpod.daemon.ingest"], env, log)
    worker = start(["worker", "--queues", "group", "--pool", "solo"], env, log)
    try:
        for _ in range(KILLS):
            before = grouped(database)
            # Killed as soon as it has placed more: it is in the middle of the stream.
            wait_for("more traces grouped", partial(more_than, database, before), 180, every=0.05)
            kill(worker)
            worker = start(["worker", "--queues", "group", "--pool", "solo"], env, log)
        assert grouped(database) < TRACES, "the kills came after the grouping was done"
        wait_for("every trace grouped", lambda: grouped(database) == TRACES, 300, every=0.5)
    finally:
        kill(worker, timeout=60)
        kill(consumer, timeout=60)

    assert_whole(database, traces=ids, rewards=len(rewarded))
    # Every trace is in a group of its own domain; similar queries share groups (some topics merge).
    assert count_rows(database, "traces t JOIN groups g ON g.id = t.group_id WHERE g.domain <> t.domain") == 0
    groups = count_rows(database, "groups")
    assert groups is not None and 2 <= groups <= 2 * len(TOPICS) * len(PHRASINGS)
