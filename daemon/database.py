"""Connecting to PostgreSQL, with failures turned into one clear sentence."""

from __future__ import annotations

import psycopg
from psycopg.rows import TupleRow

from grpod.schema.errors import ConfigError
from grpod.schema.urls import redact

__all__ = ["connect", "redact"]

APPLICATION_NAME = "grpod"


def connect(
    url: str,
    *,
    autocommit: bool = False,
    connect_timeout: int = 10,
    setting: str = "GRPOD_DATABASE_URL",
) -> psycopg.Connection[TupleRow]:
    """Open a connection; an unreachable or refusing server is a ConfigError."""
    try:
        return psycopg.connect(
            url,
            autocommit=autocommit,
            connect_timeout=connect_timeout,
            application_name=APPLICATION_NAME,
        )
    except psycopg.OperationalError as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(
            f"{setting}={redact(url)} cannot be reached ({reason}); check the URL and that PostgreSQL is running."
        ) from None
    except psycopg.ProgrammingError as error:  # a URL libpq cannot parse
        raise ConfigError(f"{setting}={redact(url)} is not a valid connection string ({error}).") from None
