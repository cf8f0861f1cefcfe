"""The LLM endpoint times out, answers 500, or answers garbage: each distillation ends within a
bounded number of attempts, distilled or ``failed`` with its reason, and `grpod distill DOMAIN
--retry-failed` takes the failed ones again.

Real processes (`grpod distill` as an operator runs it), the real OpenAI adapter over HTTP against a
scripted endpoint on loopback, and a PostgreSQL server of the test's own on TCP.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from grpod.daemon.resources import open_pool
from grpod.daemon.settings import Settings
from grpod.workers.distillation import STEP_ATTEMPTS
from grpod.workers.distillation_store import MAX_ATTEMPTS

from ..e2e.helpers import grpod_env, run_grpod
from ..factories import KEY_QUERIES, KEY_REWARDS, agent_trace, reward
from ..integration.stored import ingest
from ..scripted_llm import GOOD_ADVANTAGE, GOOD_SCRIPT, GOOD_SUMMARY, Raw, ScriptedEndpoint, Stall, Status
from .invariants import assert_whole
from .tcp_postgres import TcpPostgres

HTTP_RETRIES = 1  # GRPOD_LLM_MAX_RETRIES: a step's attempt is at most 2 requests
REQUESTS_PER_STEP_ATTEMPT = HTTP_RETRIES + 1
TIMEOUT_SECONDS = 1
TRACES = [f"t{i}" for i in range(len(KEY_QUERIES))]


@pytest.fixture
def endpoint() -> Iterator[ScriptedEndpoint]:
    with ScriptedEndpoint(GOOD_SCRIPT) as scripted:
        yield scripted


@pytest.fixture
def env(tcp_postgres: TcpPostgres, endpoint: ScriptedEndpoint, tmp_path: Path) -> dict[str, str]:
    """A migrated database with one ready-to-group set of traces in the domain `support`."""
    database = tcp_postgres.create_database("grpod")
    environment = grpod_env(
        tmp_path / "home",
        database_url=database,
        llm_base_url=endpoint.url,
        llm_model="scripted",
        llm_timeout=str(TIMEOUT_SECONDS),
        llm_max_retries=str(HTTP_RETRIES),
    )
    assert run_grpod(["migrate"], environment).returncode == 0
    with open_pool(database, Settings(database_url=database)) as pool, pool.connection() as conn:
        events = [
            agent_trace(f"t{i}", q, good=v > 0.5) for i, (q, v) in enumerate(zip(KEY_QUERIES, KEY_REWARDS, strict=True))
        ]
        ingest(conn, *events, *(reward(f"t{i}", v) for i, v in enumerate(KEY_REWARDS)))
    return environment


def distill(env: dict[str, str], *args: str) -> dict[str, Any]:
    done = run_grpod(["distill", "support", *args, "--json"], env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def distillation_row(env: dict[str, str]) -> tuple[Any, ...]:
    with psycopg.connect(env["GRPOD_DATABASE_URL"]) as conn:
        rows = conn.execute("SELECT status, attempts, error, next_attempt_at IS NULL FROM distillations").fetchall()
    assert len(rows) == 1, rows  # one group, one distillation, however many attempts
    return tuple(rows[0])


def versions(env: dict[str, str]) -> list[tuple[int, int]]:
    with psycopg.connect(env["GRPOD_DATABASE_URL"]) as conn:
        return [
            (int(v), int(n))
            for v, n in conn.execute(
                "SELECT version, jsonb_array_length(experiences) FROM library_versions ORDER BY version"
            )
        ]


def ledger_errors(env: dict[str, str], purpose: str) -> list[str]:
    with psycopg.connect(env["GRPOD_DATABASE_URL"]) as conn:
        rows = conn.execute(
            "SELECT error FROM llm_calls WHERE purpose = %s AND error IS NOT NULL ORDER BY id", [purpose]
        ).fetchall()
    return [str(row[0]) for row in rows]


def test_timeouts_are_asked_again_and_the_distillation_ends_published(
    env: dict[str, str], endpoint: ScriptedEndpoint
) -> None:
    stall = Stall(TIMEOUT_SECONDS * 3)
    endpoint.script.replace(
        {
            **GOOD_SCRIPT,
            # Two summaries time out once each: the client asks again and the answer comes.
            "summary": [stall, stall, GOOD_SUMMARY],
            # The advantage times out on every request of the first attempt, then is answered.
            "advantage": [*[stall] * REQUESTS_PER_STEP_ATTEMPT, GOOD_ADVANTAGE],
        }
    )

    first = distill(env)

    (run,) = first["distillations"]
    assert run["status"] == "failed"
    assert f"did not answer within GRPOD_LLM_TIMEOUT={TIMEOUT_SECONDS} seconds in 2 attempts" in run["reason"]
    assert distillation_row(env)[:2] == ("failed", 1) and versions(env) == []

    second = distill(env, "--group", str(run["group_id"]))  # the operator does not wait for the backoff

    (run,) = second["distillations"]
    assert run["status"] == "distilled" and run["reason"] is None
    assert second["published"]["status"] == "published" and second["published"]["version"] == 1
    assert distillation_row(env)[:2] == ("applied", 2)
    assert versions(env) == [(1, 1)]
    # Bounded and resumed: the summaries recorded by the first attempt were not asked for again.
    assert endpoint.calls.count("summary") == 5 + 2
    assert endpoint.calls.count("advantage") == REQUESTS_PER_STEP_ATTEMPT + 1
    assert_whole(env["GRPOD_DATABASE_URL"], traces=TRACES, rewards=len(TRACES))


def test_a_500_on_every_call_fails_for_good_after_its_attempts_and_retry_failed_takes_it_again(
    env: dict[str, str], endpoint: ScriptedEndpoint
) -> None:
    endpoint.script.replace({**GOOD_SCRIPT, "advantage": Status(500)})
    group_id = None
    for attempt in range(1, MAX_ATTEMPTS + 1):
        report = distill(env) if group_id is None else distill(env, "--group", str(group_id))
        (run,) = report["distillations"]
        group_id = run["group_id"]
        assert run["status"] == "failed"
        assert f"answered HTTP 500 after {REQUESTS_PER_STEP_ATTEMPT} attempts" in run["reason"]
        status, attempts, error, terminal = distillation_row(env)
        assert (status, attempts, terminal) == ("failed", attempt, attempt == MAX_ATTEMPTS)
        assert error == run["reason"]
    # Bounded: an attempt that the endpoint fails ends after the client's retry (the next waits for
    # the backoff); the summaries, recorded by the first attempt, were never asked for again.
    assert endpoint.calls.count("advantage") == MAX_ATTEMPTS * REQUESTS_PER_STEP_ATTEMPT
    assert endpoint.calls.count("summary") == 5
    assert endpoint.statuses[500] == endpoint.calls.count("advantage")

    # Failed for good: the domain's next run leaves it, and asks the endpoint nothing.
    asked = len(endpoint.calls)
    assert distill(env)["distillations"] == []
    assert len(endpoint.calls) == asked and distillation_row(env)[:2] == ("failed", MAX_ATTEMPTS)
    assert versions(env) == []

    # The endpoint is mended; the operator takes the failed distillation again.
    endpoint.script.replace(GOOD_SCRIPT)
    report = distill(env, "--retry-failed")
    (run,) = report["distillations"]
    assert run["status"] == "distilled"
    assert distillation_row(env)[:2] == ("applied", 1)
    assert versions(env) == [(1, 1)]
    assert endpoint.calls.count("summary") == 5  # still resumed from the ledger
    assert_whole(env["GRPOD_DATABASE_URL"], traces=TRACES, rewards=len(TRACES))


def test_garbage_answers_fail_the_distillation_with_the_reason_and_change_nothing(
    env: dict[str, str], endpoint: ScriptedEndpoint
) -> None:
    page = "<html><body>502 Bad Gateway</body></html>"  # a proxy's page, with status 200
    endpoint.script.replace({**GOOD_SCRIPT, "advantage": [Raw(page), "}{ not json", "Sure! Here are rules:"]})

    first = distill(env)

    (run,) = first["distillations"]
    assert run["status"] == "failed"
    assert f"is not an OpenAI chat completion ({page})" in run["reason"]
    assert first["published"] is None

    second = distill(env, "--group", str(run["group_id"]))

    (run,) = second["distillations"]
    assert run["status"] == "failed"
    assert f"the advantage step gave no usable answer after {STEP_ATTEMPTS} attempts" in run["reason"]
    assert second["published"] is None and versions(env) == []
    status, attempts, _, terminal = distillation_row(env)
    assert (status, attempts, terminal) == ("failed", 2, False)  # the sweep tries it again after its backoff
    # Bounded: one request for the page, then the step asked STEP_ATTEMPTS times in all; every
    # unusable answer is in the ledger with why; the summaries were asked for once.
    assert endpoint.calls.count("advantage") == 1 + STEP_ATTEMPTS
    assert endpoint.calls.count("summary") == 5
    errors = ledger_errors(env, "advantage")
    assert len(errors) == STEP_ATTEMPTS and all(errors)
    assert_whole(env["GRPOD_DATABASE_URL"], traces=TRACES, rewards=len(TRACES))
