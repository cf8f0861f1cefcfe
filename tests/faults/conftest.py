"""Fault tests: real processes, the real RabbitMQ, and a PostgreSQL server the test can stop."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .tcp_postgres import TcpPostgres


@pytest.fixture
def tcp_postgres() -> Iterator[TcpPostgres]:
    server = TcpPostgres()
    try:
        yield server
    finally:
        server.close()
