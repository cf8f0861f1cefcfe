"""Fixtures of the integration tests: a connection to the test's fresh database."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from grpod.workers import grouping_store


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to the test's database, able to send and receive pgvector values."""
    with psycopg.connect(database_url, autocommit=True) as connection:
        grouping_store.prepare(connection)
        yield connection
