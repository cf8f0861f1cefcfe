"""A worker SIGKILLed in the middle of publishing a domain's update window (while its consolidation
call waits on the LLM): RabbitMQ hands the update task to the next worker, which publishes exactly
one whole version with both distillations, and production points at it.

Real processes: `grpod worker` on the real RabbitMQ, the real OpenAI adapter against a scripted
endpoint on loopback, and a PostgreSQL server of the test's own on TCP.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import psycopg
import pytest

from grpod.daemon.celery_app import create_app
from grpod.daemon.resources import open_pool
from grpod.daemon.settings import Settings
from grpod.workers import grouping_store
from grpod.workers.embeddings import LocalEmbedder
from grpod.workers.grouping import DomainSettings

from ..e2e.helpers import grpod_env, run_grpod
from ..factories import KEY_QUERIES, KEY_REWARDS, agent_trace, reward
from ..integration.stored import ingest
from ..scripted_llm import GOOD_SCRIPT, ScriptedEndpoint, Stall
from .invariants import assert_whole
from .tcp_postgres import TcpPostgres, count_rows
from .workers import kill, start, wait_for

PASSWORD_QUERIES = [
    "How do I reset my password?",
    "reset password please",
    "I forgot my password and need a new one",
    "how can i change a forgotten password",
    "what is the way to reset a password",
]
RULES = {
    "password": "When a user forgot a password, send the reset link from the sign-in page.",
    "key": "When asked to rotate an API key, search the documentation before answering.",
}


def advantage(messages: Sequence[Mapping[str, str]]) -> str:
    """Each group teaches its own rule, so the window has two proposals to consolidate."""
    prompt = messages[-1]["content"].lower()
    return json.dumps({"experiences": [RULES["password" if "password" in prompt else "key"]]})


def one(database: str, query: str) -> object:
    with psycopg.connect(database) as conn:
        row = conn.execute(query).fetchone()
    return row[0] if row else None


@pytest.mark.rabbitmq
def test_a_worker_killed_mid_publish_leaves_one_whole_version(
    tcp_postgres: TcpPostgres, rabbitmq_url: str, queue_prefix: str, tmp_path: Path
) -> None:
    database = tcp_postgres.create_database("grpod")
    with ScriptedEndpoint({**GOOD_SCRIPT, "advantage": advantage, "consolidation": Stall(600)}) as endpoint:
        env = grpod_env(
            tmp_path / "home",
            database_url=database,
            broker_url=rabbitmq_url,
            queue_prefix=queue_prefix,
            llm_base_url=endpoint.url,
            llm_model="scripted",
        )
        assert run_grpod(["migrate"], env).returncode == 0
        ids = [f"k{i}" for i in range(5)] + [f"p{i}" for i in range(5)]
        with open_pool(database, Settings(database_url=database)) as pool, pool.connection() as conn:
            queries = KEY_QUERIES + PASSWORD_QUERIES
            ingest(
                conn,
                *(agent_trace(t, q, good=v > 0.5) for t, q, v in zip(ids, queries, KEY_REWARDS * 2, strict=True)),
                *(reward(t, v) for t, v in zip(ids, KEY_REWARDS * 2, strict=True)),
            )
            # The window publishes once both groups are distilled, whatever the time.
            grouping_store.set_settings(
                conn, "support", DomainSettings(), {"update_window_seconds": 3600, "update_window_groups": 2}
            )
            groups = grouping_store.group_domain(conn, LocalEmbedder(), "support").ready
        assert len(groups) == 2

        log = tmp_path / "worker.log"
        worker_args = ["worker", "--queues", "distill,library", "--pool", "solo"]
        worker = start(worker_args, env, log)
        try:
            app = create_app(Settings(broker_url=rabbitmq_url, queue_prefix=queue_prefix, database_url=database))
            for group_id in groups:
                app.send_task("grpod.distill.group", args=[group_id])
            # Killed while the window's consolidation waits on the LLM, in the middle of the publish.
            assert endpoint.arrived("consolidation").wait(timeout=300), "the window never consolidated"
            kill(worker)
            assert count_rows(database, "library_versions") == 0
            assert count_rows(database, "distillations WHERE status = 'distilled'") == 2

            endpoint.script.replace({**GOOD_SCRIPT, "advantage": advantage})
            worker = start(worker_args, env, log)
            wait_for("the window to be published", lambda: count_rows(database, "library_versions") == 1, 300, 0.5)
            wait_for(
                "the second worker to take every task",
                lambda: not one(database, "SELECT count(*) FROM distillations WHERE status <> 'applied'"),
                60,
                0.5,
            )
        finally:
            kill(worker, timeout=60)

    assert_whole(database, traces=ids, rewards=len(ids))
    with psycopg.connect(database) as conn:
        (version,) = conn.execute(
            "SELECT version, distillation_ids, experiences FROM library_versions WHERE domain = 'support'"
        ).fetchall()
        production = conn.execute("SELECT version FROM library_labels WHERE label = 'production'").fetchall()
        used = conn.execute("SELECT count(*), count(DISTINCT used_by_distillation) FROM traces").fetchone()
    number, distillations, experiences = version
    assert number == 1 and len(distillations) == 2
    assert sorted(e["text"] for e in experiences) == sorted(RULES.values())
    assert production == [(1,)]
    assert used == (10, 2)  # each trace learned from once, by one of the two distillations
