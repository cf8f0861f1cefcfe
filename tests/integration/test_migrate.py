"""Migrations against a real PostgreSQL with pgvector (and one without it)."""

from __future__ import annotations

import os
import threading
from typing import Any

import psycopg
import pytest

from grpod.daemon.migrations import migrate, shipped_migrations
from grpod.schema.errors import ConfigError

from ..conftest import unavailable

PLAIN_POSTGRES_URL = os.environ.get("GRPOD_TEST_PLAIN_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def _applied(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT version, name FROM grpod_migrations ORDER BY version").fetchall()


def test_migrate_applies_every_migration_once_then_is_a_no_op(empty_database_url: str) -> None:
    shipped = shipped_migrations()
    first = migrate(empty_database_url)
    assert [m.version for m in first.applied] == [m.version for m in shipped]
    assert first.current_version == shipped[-1].version
    assert _applied(empty_database_url) == [(m.version, m.name) for m in shipped]
    second = migrate(empty_database_url)
    assert second.applied == []
    assert _applied(empty_database_url) == [(m.version, m.name) for m in shipped]


def test_two_concurrent_migrations_apply_each_migration_exactly_once(empty_database_url: str) -> None:
    reports: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def run() -> None:
        try:
            start.wait()
            reports.append(len(migrate(empty_database_url).applied))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(reports) == [0, 0, 0, len(shipped_migrations())]
    assert len(_applied(empty_database_url)) == len(shipped_migrations())


def test_pgvector_works_after_migrating(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        conn.execute("CREATE TEMP TABLE v (id int, e vector(3))")
        conn.execute("INSERT INTO v VALUES (1, '[1,0,0]'), (2, '[0,1,0]'), (3, '[0.9,0.1,0]')")
        rows = conn.execute("SELECT id FROM v ORDER BY e <=> '[1,0,0]' LIMIT 2").fetchall()
    assert [row[0] for row in rows] == [1, 3]


def test_a_changed_migration_is_refused(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE grpod_migrations SET checksum = 'tampered' WHERE version = 1")
    with pytest.raises(ConfigError, match=r"0001 .* was changed after it was applied"):
        migrate(database_url)


def test_a_postgres_without_pgvector_gets_a_clear_error() -> None:
    try:
        with psycopg.connect(PLAIN_POSTGRES_URL, connect_timeout=3) as conn:
            has_vector = conn.execute(
                "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'vector')"
            ).fetchone()
    except psycopg.OperationalError as error:
        unavailable(f"the plain PostgreSQL at {PLAIN_POSTGRES_URL} cannot be reached: {error}")
    assert has_vector is not None and not has_vector[0], "this test needs a PostgreSQL without pgvector"
    with pytest.raises(ConfigError) as raised:
        migrate(PLAIN_POSTGRES_URL)
    assert "without the pgvector extension" in str(raised.value)
    assert str(raised.value).startswith("GRPOD_DATABASE_URL=")


def test_an_unreachable_database_is_one_sentence() -> None:
    with pytest.raises(ConfigError) as raised:
        migrate("postgresql://grpod:hunter2@127.0.0.1:1/grpod", connect_timeout=2)
    message = str(raised.value)
    assert message.startswith("GRPOD_DATABASE_URL=postgresql://grpod:***@127.0.0.1:1/grpod cannot be reached")
    assert "hunter2" not in message
    assert "\n" not in message


def test_the_awaiting_and_counting_migrations_on_a_database_with_history(empty_database_url: str) -> None:
    """0019 and 0020 on a database that already holds traces: those with no reward await one (the
    expired ones too, marked so), rewards whose trace is stored are counted, and each domain's
    counts are those of its history."""
    from grpod.daemon.migrations import MIGRATIONS_PACKAGE, _apply
    from grpod.schema.sql import load_queries

    queries = load_queries(MIGRATIONS_PACKAGE, "queries/migrations.sql")
    before = [m for m in shipped_migrations() if m.version < 19]
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        conn.execute(queries["create_migrations_table"])
        for migration in before:
            _apply(conn, migration, queries["record_migration"], empty_database_url)
        # As ingest stored them before 0019 (today's ingest writes the new table too).
        conn.execute("INSERT INTO domains (name) VALUES ('support')")
        for trace_id, expired in (("rewarded", False), ("waiting", False), ("expired", True)):
            conn.execute(
                "INSERT INTO traces (trace_id, domain, query, trajectory, answer, created_at, content_hash, expired_at)"
                " VALUES (%s, 'support', 'q', '[]', 'a', now(), '\\x00', CASE WHEN %s THEN now() END)",
                (trace_id, expired),
            )
        for trace_id in ("rewarded", "orphan"):  # a reward, and one whose trace never came
            conn.execute(
                "INSERT INTO rewards (trace_id, source, value, created_at, content_hash) "
                "VALUES (%s, 'thumbs', 1, now(), '\\x00')",
                (trace_id,),
            )
    assert [m.name for m in migrate(empty_database_url).applied][:2] == ["awaiting_reward", "domain_counts"]
    with psycopg.connect(empty_database_url) as conn:
        awaiting = conn.execute(
            "SELECT trace_id, domain, expired_at IS NOT NULL FROM traces_awaiting_reward ORDER BY 1"
        ).fetchall()
        assert awaiting == [("expired", "support", True), ("waiting", "support", False)]
        counted = conn.execute("SELECT trace_id, counted FROM rewards ORDER BY 1").fetchall()
        assert counted == [("orphan", False), ("rewarded", True)]
        totals = conn.execute("SELECT domain, traces, rewards, unrewarded FROM domain_totals").fetchall()
        assert totals == [("support", 3, 1, 2)]
