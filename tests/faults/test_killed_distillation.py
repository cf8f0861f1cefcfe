"""A worker killed in the middle of a distillation: after the retry there is exactly one version.

Real processes: `grpod worker` on the real RabbitMQ (quorum queues, late acknowledgement), a
PostgreSQL server of the test's own on TCP, and the real OpenAI adapter against a scripted endpoint
that answers two summaries and holds the others. The whole worker (its process group) is SIGKILLed
once those two are in the ledger; RabbitMQ hands the task to the next worker, which resumes the
distillation from the calls already in the ledger. (It ran on the bundled model once: on a loaded
machine its two calls could take longer than the test waited.)
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from grpod.daemon.celery_app import create_app
from grpod.daemon.migrations import migrate
from grpod.daemon.resources import open_pool
from grpod.daemon.settings import Settings
from grpod.workers import grouping_store
from grpod.workers.embeddings import LocalEmbedder
from grpod.workers.grouping import DomainSettings

from ..e2e.helpers import grpod_env
from ..factories import KEY_QUERIES, KEY_REWARDS, agent_trace, reward
from ..integration.stored import ingest
from ..scripted_llm import GOOD_SCRIPT, GOOD_SUMMARY, ScriptedEndpoint, Stall
from .invariants import assert_whole
from .tcp_postgres import TcpPostgres
from .workers import kill, start, wait_for

WORKER = ["worker", "--queues", "distill,library,maintenance", "--pool", "solo"]


def _one(database_url: str, query: str) -> Any:
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(query).fetchone()
    return row[0] if row else None


@pytest.fixture
def endpoint() -> Iterator[ScriptedEndpoint]:
    """Two summaries answered; the others held until the script is replaced (and the worker killed)."""
    with ScriptedEndpoint({**GOOD_SCRIPT, "summary": [GOOD_SUMMARY, GOOD_SUMMARY, Stall(600)]}) as scripted:
        yield scripted


@pytest.mark.rabbitmq
def test_a_worker_killed_mid_distillation_leaves_exactly_one_version_after_the_retry(
    tmp_path: Path, tcp_postgres: TcpPostgres, rabbitmq_url: str, queue_prefix: str, endpoint: ScriptedEndpoint
) -> None:
    database_url = tcp_postgres.create_database("grpod")
    migrate(database_url)
    trace_ids = [f"t{i}" for i in range(len(KEY_QUERIES))]
    with open_pool(database_url, Settings(database_url=database_url)) as pool, pool.connection() as conn:
        grouping_store.prepare(conn)
        events = [
            agent_trace(f"t{i}", q, good=v > 0.5) for i, (q, v) in enumerate(zip(KEY_QUERIES, KEY_REWARDS, strict=True))
        ]
        events += [reward(f"t{i}", v) for i, v in enumerate(KEY_REWARDS)]
        ingest(conn, *events)
        # Publish as soon as the distillation is done (no 60 s window).
        grouping_store.set_settings(conn, "support", DomainSettings(), {"update_window_seconds": 0})
        run = grouping_store.group_domain(conn, LocalEmbedder(), "support")
        (group_id,) = run.ready

    env = grpod_env(
        tmp_path / "home",
        database_url=database_url,
        broker_url=rabbitmq_url,
        queue_prefix=queue_prefix,
        llm_base_url=endpoint.url,
        llm_model="scripted",
    )
    log = tmp_path / "worker.log"
    first = start(WORKER, env, log)
    try:
        wait_for("the first worker's heartbeat", lambda: _one(database_url, "SELECT count(*) FROM heartbeats"), 90)
        settings = Settings(broker_url=rabbitmq_url, queue_prefix=queue_prefix, database_url=database_url)
        create_app(settings).send_task("grpod.distill.group", args=[group_id])
        # Killed after some of the distillation's LLM calls, before it finished.
        wait_for(
            "two recorded LLM calls",
            lambda: (_one(database_url, "SELECT count(*) FROM llm_calls") or 0) >= 2,
            180,
        )
    finally:
        kill(first)
    assert _one(database_url, "SELECT status FROM distillations") == "running"
    assert _one(database_url, "SELECT count(*) FROM library_versions") == 0
    calls_before = _one(database_url, "SELECT count(*) FROM llm_calls")

    endpoint.script.replace(GOOD_SCRIPT)
    second = start(WORKER, env, log)
    try:
        wait_for(
            "the distillation to be applied",
            lambda: _one(database_url, "SELECT status FROM distillations") == "applied",
            300,
        )
        time.sleep(3)  # let any duplicate delivery run: it must change nothing
    finally:
        kill(second, signal.SIGTERM)

    with psycopg.connect(database_url, autocommit=True) as conn:
        distillations = conn.execute("SELECT id, attempts, version, operations FROM distillations").fetchall()
        versions = conn.execute("SELECT version, distillation_ids FROM library_versions").fetchall()
        summaries = conn.execute(
            "SELECT count(*) FROM llm_calls WHERE purpose = 'summary' AND btrim(response) <> ''"
        ).fetchone()
    ((distillation_id, attempts, version, operations),) = distillations
    assert attempts == 2  # the retry took over the same distillation
    assert operations and versions == [(1, [distillation_id])] and version == 1
    # The retry resumed: the summaries recorded before the kill were not asked for again, so each
    # of the 5 trajectories has exactly one usable summary in the ledger.
    assert calls_before == 2
    assert summaries == (5,)
    assert_whole(database_url, traces=trace_ids, rewards=len(trace_ids))
