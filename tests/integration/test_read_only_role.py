"""`grpod migrate --read-only-role`: a role that reads every grpod table and changes nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from grpod.daemon.read_only_role import ensure_read_only_role
from grpod.schema.errors import OperatorError

from ..e2e.helpers import grpod_env, run_grpod
from ..factories import trace
from .stored import ingest

PASSWORD = "a-long-enough-password"


def test_the_role_reads_everything_and_changes_nothing(conn: psycopg.Connection[Any], database_url: str) -> None:
    ingest(conn, trace("t1"))
    assert ensure_read_only_role(conn, "grpod_reader_test", PASSWORD) is True
    assert ensure_read_only_role(conn, "grpod_reader_test", PASSWORD + "!") is False  # again: updated
    with psycopg.connect(make_conninfo(database_url, user="grpod_reader_test", password=PASSWORD + "!")) as reader:
        assert reader.execute("SELECT trace_id FROM traces").fetchall() == [("t1",)]
        assert reader.execute("SELECT count(*) FROM library_versions").fetchone() == (0,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            reader.execute("DELETE FROM traces")
    with pytest.raises(OperatorError, match="12 characters or more"):
        ensure_read_only_role(conn, "grpod_reader_test", "short")
    with pytest.raises(OperatorError, match="a role name is"):
        ensure_read_only_role(conn, "Robert'); DROP TABLE traces;--", PASSWORD)


def test_migrate_makes_the_role_with_the_password_from_the_environment(tmp_path: Path, database_url: str) -> None:
    env = grpod_env(tmp_path / "home", database_url=database_url) | {"GRPOD_READ_ONLY_PASSWORD": PASSWORD}
    made = run_grpod(["migrate", "--read-only-role", "grpod_sql_reader", "--json"], env)
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["read_only_role"] == {"name": "grpod_sql_reader", "created": True}
    assert PASSWORD not in made.stdout + made.stderr
    refused = run_grpod(["migrate", "--read-only-role", "grpod_sql_reader"], env | {"GRPOD_READ_ONLY_PASSWORD": ""})
    assert (
        refused.returncode == 2 and "GRPOD_READ_ONLY_PASSWORD" in refused.stderr and "Traceback" not in refused.stderr
    )
