"""A worker killed in the middle of a distillation: after the retry there is exactly one version.

Real processes: `grpod worker` on the real RabbitMQ (quorum queues, late acknowledgement), the
real PostgreSQL with pgvector, and the bundled model. The whole worker (its process group) is
SIGKILLed once the distillation has made some of its LLM calls; RabbitMQ hands the task to the
next worker, which resumes the distillation from the calls already in the ledger.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from grpod.daemon.celery_app import create_app
from grpod.daemon.settings import Settings
from grpod.workers import grouping_store
from grpod.workers.embeddings import LocalEmbedder
from grpod.workers.grouping import DomainSettings

from ..factories import KEY_QUERIES, KEY_REWARDS, agent_trace, reward
from ..integration.stored import ingest
from .helpers import GRPOD, grpod_env


def _wait(what: str, check: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what} did not happen within {timeout:.0f}s")


def _one(database_url: str, query: str) -> Any:
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(query).fetchone()
    return row[0] if row else None


def _worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [*GRPOD, "worker", "--queues", "distill,library,maintenance", "--pool", "solo"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the kill takes all of it
        )


def test_a_worker_killed_mid_distillation_leaves_exactly_one_version_after_the_retry(
    tmp_path: Path, database_url: str, rabbitmq_url: str, queue_prefix: str
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
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

    env = grpod_env(tmp_path / "home", database_url=database_url, broker_url=rabbitmq_url, queue_prefix=queue_prefix)
    log = tmp_path / "worker.log"
    first = _worker(env, log)
    try:
        _wait("the first worker's heartbeat", lambda: _one(database_url, "SELECT count(*) FROM heartbeats"), 90)
        settings = Settings(broker_url=rabbitmq_url, queue_prefix=queue_prefix, database_url=database_url)
        create_app(settings).send_task("grpod.distill.group", args=[group_id])
        # Killed after some of the distillation's LLM calls, before it finished.
        _wait(
            "two recorded LLM calls",
            lambda: (_one(database_url, "SELECT count(*) FROM llm_calls") or 0) >= 2,
            180,
        )
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert _one(database_url, "SELECT status FROM distillations") == "running"
    assert _one(database_url, "SELECT count(*) FROM library_versions") == 0
    calls_before = _one(database_url, "SELECT count(*) FROM llm_calls")

    second = _worker(env, log)
    try:
        _wait(
            "the distillation to be applied",
            lambda: _one(database_url, "SELECT status FROM distillations") == "applied",
            300,
        )
        time.sleep(3)  # let any duplicate delivery run: it must change nothing
    finally:
        os.killpg(second.pid, signal.SIGTERM)
        second.wait(timeout=60)

    with psycopg.connect(database_url, autocommit=True) as conn:
        distillations = conn.execute("SELECT id, attempts, version, operations FROM distillations").fetchall()
        versions = conn.execute("SELECT version, distillation_ids FROM library_versions").fetchall()
        summaries = conn.execute(
            "SELECT count(*) FROM llm_calls WHERE purpose = 'summary' AND btrim(response) <> ''"
        ).fetchone()
    ((distillation_id, attempts, version, operations),) = distillations
    assert attempts == 2  # the retry took over the same distillation
    if operations:
        assert versions == [(1, [distillation_id])] and version == 1
    else:  # the model proposed nothing: the window records it, and no version is made
        assert versions == [] and version is None
    # The retry resumed: the summaries recorded before the kill were not asked for again, so each
    # of the 5 trajectories has exactly one usable summary in the ledger.
    assert calls_before >= 2
    assert summaries == (5,)
