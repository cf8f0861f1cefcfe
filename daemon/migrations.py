"""Numbered SQL migrations from ``schema/migrations``, applied in order.

Each migration runs in its own transaction together with the row that records
it, so a process killed midway leaves either all of a migration or none of it.
An advisory lock makes concurrent runs safe: the second waits, then finds
nothing new to do.

Before touching anything, migrate checks the server: pgvector 0.8 or newer, and that the URL
does not reach a connection pooler in transaction or statement pooling mode (grpod's session
advisory locks and LISTEN need one server session per client session). Every command that
needs the schema checks the pooling again (``require_current_schema``), since workers are often
given another URL than the one migrations ran on.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, LiteralString

import psycopg

from grpod.daemon.database import connect, redact
from grpod.daemon.logs import get_logger
from grpod.schema.errors import ConfigError
from grpod.schema.sql import load_queries

MIGRATIONS_PACKAGE = "grpod.schema"
MIGRATIONS_FOLDER = "migrations"
_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

log = get_logger(__name__)


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class AppliedMigration:
    version: int
    name: str
    checksum: str


class MigrationError(Exception):
    """The database's migration record does not fit the migrations shipped."""


def parse_migration_files(files: Mapping[str, str]) -> list[Migration]:
    """Turn ``{file name: text}`` into migrations sorted by version."""
    migrations: dict[int, Migration] = {}
    for file_name, text in files.items():
        match = _FILE_NAME.match(file_name)
        if match is None:
            raise MigrationError(f"migration file {file_name!r} is not named NNNN_name.sql")
        version = int(match.group(1))
        if version in migrations:
            raise MigrationError(f"two migration files have version {version:04d}")
        migrations[version] = Migration(version=version, name=match.group(2), sql=text)
    ordered = [migrations[version] for version in sorted(migrations)]
    for expected, migration in enumerate(ordered, start=1):
        if migration.version != expected:
            raise MigrationError(f"migration {expected:04d} is missing (found {migration.version:04d})")
    return ordered


def plan_migrations(available: Iterable[Migration], applied: Iterable[AppliedMigration]) -> list[Migration]:
    """The migrations still to apply, in order; refuses a database that has diverged."""
    shipped = {migration.version: migration for migration in available}
    done = {record.version: record for record in applied}
    for version, record in done.items():
        migration = shipped.get(version)
        if migration is None:
            newest = max(shipped, default=0)
            raise MigrationError(
                f"the database has migration {version:04d} ({record.name}) but this grpod ships "
                f"migrations up to {newest:04d}; upgrade grpod before running it on this database"
            )
        if migration.checksum != record.checksum:
            raise MigrationError(
                f"migration {version:04d} ({record.name}) was changed after it was applied; "
                "applied migrations are immutable, add a new one instead"
            )
    return [shipped[version] for version in sorted(shipped) if version not in done]


def shipped_migrations() -> list[Migration]:
    folder = resources.files(MIGRATIONS_PACKAGE).joinpath(MIGRATIONS_FOLDER)
    files = {entry.name: entry.read_text(encoding="utf-8") for entry in folder.iterdir() if entry.name.endswith(".sql")}
    return parse_migration_files(files)


VECTOR_MINIMUM = (0, 8)  # iterative index scans (hnsw.iterative_scan), which grouping relies on


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".") if part.isdigit())


def vector_version_problem(default_version: str | None, installed_version: str | None) -> str | None:
    """What is wrong with the server's pgvector for grpod, in words an operator can act on, or None."""
    wanted = ".".join(map(str, VECTOR_MINIMUM))
    if installed_version is not None and _version(installed_version) < VECTOR_MINIMUM:
        if default_version is not None and _version(default_version) >= VECTOR_MINIMUM:
            return (
                f"the database has pgvector {installed_version}, and grpod needs {wanted} or newer; "
                "run ALTER EXTENSION vector UPDATE as its owner"
            )
        return f"the database has pgvector {installed_version}; install pgvector {wanted} or newer on the server"
    if installed_version is None and default_version is not None and _version(default_version) < VECTOR_MINIMUM:
        return f"the server offers pgvector {default_version}; install pgvector {wanted} or newer on it"
    return None


POOLING_PROBE_ROUNDS = 2  # a second round catches a pool whose last idle connection another client took


@dataclass(frozen=True)
class BackendProbe:
    """One round of the pooling probe, in server process ids (``pg_backend_pid()``).

    ``before`` and ``after``: a first session's, around the moment a second session held a
    transaction open and saw ``held``; ``refused``: why the second session could not open one.
    ``after`` is None when the round had decided already (a transaction pool handed the first
    session's server to the second: asking again would wait for it).
    """

    before: int
    held: int | None = None
    after: int | None = None
    refused: str | None = None


def pooling_problem(probes: Sequence[BackendProbe]) -> str | None:
    """What is wrong with the pooling between grpod and PostgreSQL, as the rest of a sentence
    that starts with the URL, or None when each session keeps one server process of its own.

    Directly on PostgreSQL, and in session pooling, a session keeps its server process
    (before == after) and no other session shares it (held != before). A transaction pool gives
    a server process back after each transaction, so another client gets it (held == before;
    PgBouncer reuses the last one freed) or the session comes back on another (after != before).
    A statement pool refuses a transaction of more than one statement.
    """
    pooled = " which breaks the session advisory locks and LISTEN grpod relies on"
    change = "point GRPOD_DATABASE_URL at PostgreSQL itself or at a pool with pool_mode=session"
    for probe in probes:
        if probe.refused is not None:
            return (
                f"refuses a transaction block ({probe.refused}) like a connection pooler in statement "
                f"pooling mode (PgBouncer pool_mode=statement),{pooled}; {change}"
            )
        if probe.held == probe.before or (probe.after is not None and probe.after != probe.before):
            return (
                "reaches a connection pooler in transaction pooling mode (PgBouncer pool_mode=transaction),"
                f"{pooled}; {change}"
            )
    return None


def probe_pooling(
    conn: psycopg.Connection[Any],
    database_url: str,
    *,
    connect_timeout: int,
    rounds: int = POOLING_PROBE_ROUNDS,
) -> list[BackendProbe]:
    """Rounds of the pooling probe: ``conn`` (autocommit, as grpod's sessions are) and a second
    session to the same URL that holds a transaction open meanwhile; stops at the first sign of
    pooling."""
    query = load_queries(MIGRATIONS_PACKAGE, "queries/migrations.sql")["backend_pid"]

    def pid(connection: psycopg.Connection[Any]) -> int:
        row = connection.execute(query).fetchone()
        assert row is not None  # SELECT of one value
        return int(row[0])

    probes: list[BackendProbe] = []
    for _ in range(rounds):
        before = pid(conn)
        with connect(database_url, connect_timeout=connect_timeout) as other:
            try:
                held = pid(other)  # inside a transaction: a pooler must keep its server for it
            except psycopg.Error as error:
                reason = (error.diag.message_primary or str(error) or type(error).__name__).strip()
                probes.append(BackendProbe(before, refused=reason.splitlines()[0]))
                break
            if held == before:
                probes.append(BackendProbe(before, held))
                break
            probes.append(BackendProbe(before, held, pid(conn)))
            other.rollback()
        if pooling_problem(probes) is not None:
            break
    return probes


def require_session_pooling(conn: psycopg.Connection[Any], database_url: str, *, connect_timeout: int = 10) -> None:
    """Refuse a URL that reaches a pooler in transaction or statement mode, in one sentence."""
    problem = pooling_problem(probe_pooling(conn, database_url, connect_timeout=connect_timeout))
    if problem is not None:
        raise ConfigError(f"GRPOD_DATABASE_URL={redact(database_url)} {problem}.")


@dataclass(frozen=True)
class MigrationReport:
    applied: list[Migration]
    current_version: int


def migrate(database_url: str, *, connect_timeout: int = 10) -> MigrationReport:
    """Apply every shipped migration that the database lacks."""
    queries = load_queries(MIGRATIONS_PACKAGE, "queries/migrations.sql")
    available = shipped_migrations()
    with connect(database_url, autocommit=True, connect_timeout=connect_timeout) as conn:
        # First: behind a transaction pool even the migration lock below would leak to other clients.
        require_session_pooling(conn, database_url, connect_timeout=connect_timeout)
        vector_row = conn.execute(queries["vector_available"]).fetchone()
        if vector_row is None or not vector_row[0]:
            raise ConfigError(
                f"GRPOD_DATABASE_URL={redact(database_url)} is a PostgreSQL without the pgvector "
                "extension; install pgvector on that server (for example the pgvector/pgvector "
                "image) or unset GRPOD_DATABASE_URL to use the embedded database."
            )
        versions = conn.execute(queries["vector_versions"]).fetchone()
        problem = vector_version_problem(*versions) if versions is not None else None
        if problem is not None:
            raise ConfigError(f"GRPOD_DATABASE_URL={redact(database_url)}: {problem}.")
        conn.execute(queries["take_migration_lock"])
        try:
            conn.execute(queries["create_migrations_table"])
            applied = [
                AppliedMigration(version=row[0], name=row[1], checksum=row[2])
                for row in conn.execute(queries["fetch_applied_migrations"]).fetchall()
            ]
            try:
                pending = plan_migrations(available, applied)
            except MigrationError as error:
                raise ConfigError(f"GRPOD_DATABASE_URL={redact(database_url)}: {error}.") from None
            for migration in pending:
                _apply(conn, migration, queries["record_migration"], database_url)
        finally:
            conn.execute(queries["release_migration_lock"])
    current = max((m.version for m in available), default=0)
    return MigrationReport(applied=pending, current_version=current)


def _apply(
    conn: psycopg.Connection[tuple[object, ...]],
    migration: Migration,
    record_query: LiteralString,
    database_url: str,
) -> None:
    try:
        with conn.transaction():
            # Migration files are shipped with the package, as trusted as code.
            conn.execute(migration.sql)
            conn.execute(
                record_query,
                {"version": migration.version, "name": migration.name, "checksum": migration.checksum},
            )
    except psycopg.errors.InsufficientPrivilege as error:
        raise ConfigError(
            f"GRPOD_DATABASE_URL={redact(database_url)}: the user may not apply migration "
            f"{migration.version:04d} ({error.diag.message_primary}); run `grpod migrate` once "
            "as a user that owns the database (CREATE EXTENSION vector needs superuser rights)."
        ) from None
    log.info("migration applied", version=migration.version, name=migration.name)


def require_current_schema(database_url: str, *, connect_timeout: int = 10) -> None:
    """Refuse to work on a database whose schema is behind this grpod's migrations, or through a
    pooler that would break grpod's session state (workers may be given another URL than migrate)."""
    queries = load_queries(MIGRATIONS_PACKAGE, "queries/migrations.sql")
    newest = max((m.version for m in shipped_migrations()), default=0)
    with connect(database_url, autocommit=True, connect_timeout=connect_timeout) as conn:
        require_session_pooling(conn, database_url, connect_timeout=connect_timeout)
        exists = conn.execute(queries["migrations_table_exists"]).fetchone()
        row = conn.execute(queries["current_version"]).fetchone() if exists and exists[0] else None
    current = int(row[0]) if row else 0
    if current < newest:
        raise ConfigError(
            f"GRPOD_DATABASE_URL={redact(database_url)} has schema version {current} but this grpod needs "
            f"{newest}; run `grpod migrate` first."
        )
