"""Fixtures of the integration tests: a connection to the test's fresh database."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from grpod.daemon.resources import open_pool
from grpod.daemon.settings import Settings
from grpod.workers import grouping_store


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection to the test's database as the service gets one (from a pool of the service's
    settings), able to send and receive pgvector values."""
    with (
        open_pool(database_url, Settings(database_url=database_url), max_size=1) as pool,
        pool.connection() as connection,
    ):
        assert connection.autocommit
        grouping_store.prepare(connection)
        yield connection
