from __future__ import annotations

import pytest

from grpod.daemon.migrations import (
    AppliedMigration,
    Migration,
    MigrationError,
    parse_migration_files,
    plan_migrations,
    shipped_migrations,
)


def _applied(migration: Migration) -> AppliedMigration:
    return AppliedMigration(migration.version, migration.name, migration.checksum)


def test_files_are_ordered_by_version() -> None:
    migrations = parse_migration_files({"0002_b.sql": "B", "0001_a.sql": "A", "0003_c.sql": "C"})
    assert [(m.version, m.name) for m in migrations] == [(1, "a"), (2, "b"), (3, "c")]


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"1_a.sql": "A"}, "not named NNNN_name.sql"),
        ({"0001_A.sql": "A"}, "not named NNNN_name.sql"),
        ({"0001_a.sql": "A", "0001_b.sql": "B"}, "two migration files have version 0001"),
        ({"0001_a.sql": "A", "0003_c.sql": "C"}, "migration 0002 is missing"),
    ],
)
def test_malformed_migration_sets_are_refused(files: dict[str, str], message: str) -> None:
    with pytest.raises(MigrationError, match=message):
        parse_migration_files(files)


def test_plan_is_what_is_not_applied_yet() -> None:
    a, b, c = parse_migration_files({"0001_a.sql": "A", "0002_b.sql": "B", "0003_c.sql": "C"})
    assert plan_migrations([a, b, c], []) == [a, b, c]
    assert plan_migrations([a, b, c], [_applied(a)]) == [b, c]
    assert plan_migrations([a, b, c], [_applied(a), _applied(b), _applied(c)]) == []


def test_a_changed_applied_migration_is_refused() -> None:
    (a,) = parse_migration_files({"0001_a.sql": "A"})
    changed = AppliedMigration(1, "a", checksum="0" * 64)
    with pytest.raises(MigrationError, match=r"0001 .a. was changed after it was applied"):
        plan_migrations([a], [changed])


def test_a_database_newer_than_the_code_is_refused() -> None:
    (a,) = parse_migration_files({"0001_a.sql": "A"})
    future = AppliedMigration(2, "future", checksum="f" * 64)
    with pytest.raises(MigrationError, match="upgrade grpod"):
        plan_migrations([a], [_applied(a), future])


def test_shipped_migrations_start_with_the_vector_extension() -> None:
    migrations = shipped_migrations()
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    assert "CREATE EXTENSION IF NOT EXISTS vector" in migrations[0].sql


def test_pgvector_older_than_0_8_is_refused_with_what_to_do() -> None:
    from grpod.daemon.migrations import vector_version_problem

    assert vector_version_problem("0.8.5", None) is None
    assert vector_version_problem("0.8.0", "0.8.0") is None
    assert vector_version_problem("0.10.1", "0.9.0") is None
    old_server = vector_version_problem("0.7.4", None)
    assert old_server is not None and "offers pgvector 0.7.4" in old_server and "0.8 or newer" in old_server
    behind = vector_version_problem("0.8.1", "0.7.0")
    assert behind is not None and "ALTER EXTENSION vector UPDATE" in behind
    stuck = vector_version_problem("0.7.4", "0.7.4")
    assert stuck is not None and "install pgvector 0.8 or newer" in stuck
