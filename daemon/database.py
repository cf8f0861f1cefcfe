"""Connecting to PostgreSQL, with failures turned into one clear sentence."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg.rows import TupleRow

from grpod.daemon.errors import ConfigError

APPLICATION_NAME = "grpod"


def redact(url: str) -> str:
    """The URL with its password replaced, for logs and error messages."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    netloc = f"{parts.username}:***@{host}" if parts.username else f"***@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


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
            f"{setting}={redact(url)} cannot be reached ({reason}); "
            "check the URL and that PostgreSQL is running."
        ) from None
    except psycopg.ProgrammingError as error:  # a URL libpq cannot parse
        raise ConfigError(f"{setting}={redact(url)} is not a valid connection string ({error}).") from None
