"""Resources one process shares between its tasks: settings, database URL, connection pool.

Created lazily, on first use, and forgotten in a forked child, so that a
prefork worker never shares a socket between processes.
"""

from __future__ import annotations

import atexit
import os
from functools import cache, partial
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from grpod.daemon.settings import Settings, load_settings


@cache
def settings() -> Settings:
    return load_settings()


@cache
def database_url() -> str:
    """The configured database, or the embedded one (started or joined on first use)."""
    current = settings()
    if current.database_url is not None:
        return current.database_url
    from grpod.daemon.embedded import embedded_database  # only embedded mode pays for it

    return embedded_database(current).url


POOL_SIZE = 4


def open_pool(url: str, current: Settings, *, max_size: int = POOL_SIZE) -> ConnectionPool:
    """A pool of autocommit connections: what must be atomic says so with ``conn.transaction()``,
    which is then a real transaction (never a savepoint inside one the first query opened), and
    nothing holds a transaction open by accident across an embedding or an LLM call. Tests take
    their connections from a pool opened here too."""
    return ConnectionPool(
        url,
        min_size=1,
        max_size=max_size,
        configure=partial(ask_for_keepalives, seconds=current.database_keepalive_seconds),
        kwargs={
            "application_name": "grpod",
            "connect_timeout": current.database_connect_timeout,
            "autocommit": True,
        },
        name="grpod",
        open=True,
    )


def ask_for_keepalives(conn: psycopg.Connection[Any], *, seconds: int) -> None:
    """Have the server probe this session's TCP connection when it is idle, and give up on data it
    sent that is not acknowledged for twice ``seconds`` (a keepalive never probes a connection with
    data in flight). A worker holds session advisory locks (a distillation's, a domain's update
    window); a host that dies without closing its connection would hold them until the kernel's
    defaults, two hours (idle) or about fifteen minutes (data in flight), later. Set per session (no
    startup option, which PgBouncer refuses); over a Unix socket the server ignores them."""
    if seconds:
        conn.execute(
            "SELECT set_config('tcp_keepalives_idle', %(idle)s, false), "
            "set_config('tcp_keepalives_interval', %(interval)s, false), "
            "set_config('tcp_keepalives_count', '3', false), "
            "set_config('tcp_user_timeout', %(user_timeout)s, false)",
            {"idle": str(seconds), "interval": str(max(1, seconds // 3)), "user_timeout": str(seconds * 2000)},
        )


@cache
def pool() -> ConnectionPool:
    current = settings()
    connection_pool = open_pool(database_url(), current, max_size=current.database_pool_size or POOL_SIZE)
    atexit.register(connection_pool.close)
    return connection_pool


def forget() -> None:
    """Drop every cached resource (after a fork, or when settings change in tests)."""
    pool.cache_clear()
    database_url.cache_clear()
    settings.cache_clear()


os.register_at_fork(after_in_child=forget)
