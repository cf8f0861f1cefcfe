"""Numbered SQL migrations from ``schema/migrations``, applied in order.

Each migration runs in its own transaction together with the row that records
it, so a process killed midway leaves either all of a migration or none of it.
An advisory lock makes concurrent runs safe: the second waits, then finds
nothing new to do.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import LiteralString

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


@dataclass(frozen=True)
class MigrationReport:
    applied: list[Migration]
    current_version: int


def migrate(database_url: str, *, connect_timeout: int = 10) -> MigrationReport:
    """Apply every shipped migration that the database lacks."""
    queries = load_queries(MIGRATIONS_PACKAGE, "queries/migrations.sql")
    available = shipped_migrations()
    with connect(database_url, autocommit=True, connect_timeout=connect_timeout) as conn:
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
    """Refuse to work on a database whose schema is behind this grpod's migrations."""
    queries = load_queries(MIGRATIONS_PACKAGE, "queries/migrations.sql")
    newest = max((m.version for m in shipped_migrations()), default=0)
    with connect(database_url, autocommit=True, connect_timeout=connect_timeout) as conn:
        exists = conn.execute(queries["migrations_table_exists"]).fetchone()
        row = conn.execute(queries["current_version"]).fetchone() if exists and exists[0] else None
    current = int(row[0]) if row else 0
    if current < newest:
        raise ConfigError(
            f"GRPOD_DATABASE_URL={redact(database_url)} has schema version {current} but this grpod needs "
            f"{newest}; run `grpod migrate` first."
        )
