"""The command line as a user meets it: help, and one clear sentence with exit code 2 for bad settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ..conftest import unavailable
from .helpers import grpod_env, run_grpod

PLAIN_POSTGRES_URL = os.environ.get("GRPOD_TEST_PLAIN_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def test_help_lists_the_commands(tmp_path: Path) -> None:
    result = run_grpod(["--help"], grpod_env(tmp_path))
    assert result.returncode == 0
    for command in ("up", "migrate", "worker", "beat", "status"):
        assert f" {command} " in result.stdout


def _assert_one_clear_sentence(result: object, starts: str, contains: str = "") -> None:
    assert result.returncode == 2, result  # type: ignore[attr-defined]
    err: str = result.stderr.strip()  # type: ignore[attr-defined]
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"grpod: {starts}"), err
    assert contains in err


@pytest.mark.parametrize("command", [["migrate"], ["status"], ["up"]])
def test_bad_database_url(tmp_path: Path, command: list[str]) -> None:
    env = grpod_env(tmp_path, database_url="mysql://root@localhost/grpod")
    _assert_one_clear_sentence(
        run_grpod(command, env), "GRPOD_DATABASE_URL=mysql://root@localhost/grpod is not a PostgreSQL URL"
    )


def test_unreachable_database(tmp_path: Path) -> None:
    env = grpod_env(tmp_path, database_url="postgresql://grpod:secret@127.0.0.1:1/grpod", database_connect_timeout="2")
    result = run_grpod(["migrate"], env)
    _assert_one_clear_sentence(result, "GRPOD_DATABASE_URL=postgresql://grpod:***@127.0.0.1:1/grpod cannot be reached")
    assert "secret" not in result.stderr


def test_database_without_pgvector(tmp_path: Path) -> None:
    probe = run_grpod(
        ["status", "--json"],
        grpod_env(tmp_path, database_url=PLAIN_POSTGRES_URL, database_connect_timeout="3"),
    )
    if probe.returncode != 0:
        unavailable(f"the plain PostgreSQL at {PLAIN_POSTGRES_URL} cannot be reached: {probe.stderr.strip()}")
    env = grpod_env(tmp_path, database_url=PLAIN_POSTGRES_URL)
    _assert_one_clear_sentence(run_grpod(["migrate"], env), "GRPOD_DATABASE_URL=", "without the pgvector extension")


def test_unwritable_home(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x", encoding="utf-8")
    env = grpod_env(blocker / "home")
    _assert_one_clear_sentence(run_grpod(["up"], env), f"GRPOD_HOME={blocker / 'home'} is not a writable folder")


def test_bad_broker_url(tmp_path: Path) -> None:
    env = grpod_env(tmp_path, broker_url="kafka://localhost:9092")
    _assert_one_clear_sentence(run_grpod(["worker"], env), "GRPOD_BROKER_URL=kafka://localhost:9092")


def test_unknown_stage_for_a_worker(tmp_path: Path) -> None:
    env = grpod_env(tmp_path, database_url="postgresql://x@127.0.0.1:1/x")
    _assert_one_clear_sentence(run_grpod(["worker", "--queues", "ingest,bogus"], env), "unknown stage 'bogus'")
