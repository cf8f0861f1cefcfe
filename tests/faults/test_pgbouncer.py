"""grpod behind PgBouncer: session pooling works; transaction and statement pooling are refused.

grpod keeps state in the server session: session advisory locks (the update window per domain,
distillation per input key, migrate's lock) and the SDK's LISTEN. A pooler in transaction mode
hands a server session to another client after every transaction, so those break without an
error. Real processes: Debian's ``pgbouncer`` (run as the user ``pgserver`` when the test is
root, as PostgreSQL is) in front of a PostgreSQL 18 + pgvector of the test's own, and
``grpod migrate`` as a user runs it, with a password in its URL that must never be printed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from grpod.schema.sql import load_queries
from grpod.sdk.library_cache import LibraryCache
from grpod.workers import library_store

from ..conftest import unavailable
from ..e2e.helpers import grpod_env, run_grpod
from .pgbouncer import PgBouncer, PoolMode, pgbouncer_binary
from .tcp_postgres import TcpPostgres

PASSWORD = "s3cret-pw"  # libpq sends it only when asked; PgBouncer (auth_type=any) never asks
DATABASE = "grpod"

StartPgBouncer = Callable[[PoolMode], PgBouncer]


@pytest.fixture
def pgbouncer(tcp_postgres: TcpPostgres) -> Iterator[StartPgBouncer]:
    """Start PgBouncer in a pool mode, in front of the test's PostgreSQL database ``grpod``."""
    binary = pgbouncer_binary()
    if binary is None:
        unavailable("pgbouncer is not installed (apt-get install pgbouncer; .ci/run does it)")
    assert binary is not None  # unavailable() has skipped or failed the test
    tcp_postgres.create_database(DATABASE)
    started: list[PgBouncer] = []

    def start(pool_mode: PoolMode) -> PgBouncer:
        started.append(PgBouncer(binary, tcp_postgres.port, DATABASE, pool_mode))
        return started[-1]

    yield start
    for bouncer in started:
        bouncer.close()


def _grpod(args: list[str], url: str, home: Path) -> tuple[int, str]:
    """Run grpod on ``url``; its exit code and everything it printed."""
    result = run_grpod(args, grpod_env(home, database_url=url), timeout=120)
    return result.returncode, result.stdout + result.stderr


def _direct_state(tcp_postgres: TcpPostgres) -> tuple[bool, int]:
    """Whether the schema exists, and how many advisory locks are held, seen on PostgreSQL itself."""
    with psycopg.connect(tcp_postgres.url(DATABASE), autocommit=True) as conn:
        row = conn.execute(
            "SELECT to_regclass('grpod_migrations') IS NOT NULL,"
            " (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory')"
        ).fetchone()
    assert row is not None
    return bool(row[0]), int(row[1])


@pytest.mark.parametrize(
    ("pool_mode", "says"),
    [
        ("transaction", "reaches a connection pooler in transaction pooling mode (PgBouncer pool_mode=transaction)"),
        (
            "statement",
            "refuses a transaction block (transaction blocks not allowed in statement pooling mode) like a "
            "connection pooler in statement pooling mode (PgBouncer pool_mode=statement)",
        ),
    ],
    ids=["transaction", "statement"],
)
def test_migrate_refuses_a_pooler_that_breaks_session_state_in_one_sentence(
    pgbouncer: StartPgBouncer, tcp_postgres: TcpPostgres, tmp_path: Path, pool_mode: PoolMode, says: str
) -> None:
    bouncer = pgbouncer(pool_mode)
    code, output = _grpod(["migrate"], bouncer.url(password=PASSWORD), tmp_path / "home")
    assert code == 2, output
    redacted = f"postgresql://postgres:***@127.0.0.1:{bouncer.port}/{DATABASE}"
    assert output == (
        f"grpod: GRPOD_DATABASE_URL={redacted} {says}, which breaks the session advisory locks and LISTEN "
        "grpod relies on; point GRPOD_DATABASE_URL at PostgreSQL itself or at a pool with pool_mode=session.\n"
    )
    assert PASSWORD not in output
    assert "Traceback" not in output
    # Refused before doing anything: no schema, and no migration lock left on a pooled server.
    assert _direct_state(tcp_postgres) == (False, 0)


def test_a_worker_given_a_transaction_pool_after_a_direct_migrate_is_refused(
    pgbouncer: StartPgBouncer, tcp_postgres: TcpPostgres, tmp_path: Path
) -> None:
    """The usual set-up mistake: migrations run on PostgreSQL itself, the workers through the pool."""
    bouncer = pgbouncer("transaction")
    code, output = _grpod(["migrate"], tcp_postgres.url(DATABASE), tmp_path / "home")
    assert code == 0, output
    code, output = _grpod(["domains", "--json"], bouncer.url(password=PASSWORD), tmp_path / "home")
    assert code == 2, output
    assert "transaction pooling mode" in output and "pool_mode=session" in output
    assert PASSWORD not in output and "Traceback" not in output
    assert output.count("\n") == 1


def test_what_a_transaction_pool_would_break(pgbouncer: StartPgBouncer) -> None:
    """Why the refusal: the update window's session lock, taken by one client, is taken again by
    another, since both ran on the one server session PgBouncer handed from one to the other."""
    bouncer = pgbouncer("transaction")
    with (
        psycopg.connect(bouncer.url(), autocommit=True) as holder,
        psycopg.connect(bouncer.url(), autocommit=True) as other,
    ):
        assert library_store.lock_updates(holder, "support")
        assert library_store.lock_updates(other, "support")  # two writers of one domain's versions


def test_session_pooling_works(pgbouncer: StartPgBouncer, tcp_postgres: TcpPostgres, tmp_path: Path) -> None:
    bouncer = pgbouncer("session")
    url = bouncer.url(password=PASSWORD)
    for _ in range(2):  # the first applies the migrations, the second finds nothing to do
        code, output = _grpod(["migrate", "--json"], url, tmp_path / "home")
        assert code == 0, output
        assert PASSWORD not in output
    assert _direct_state(tcp_postgres) == (True, 0)  # migrate's session lock was released
    code, output = _grpod(["domains", "--json"], url, tmp_path / "home")  # a command's own check passes
    assert code == 0, output
    assert json.loads(output) == []

    # The update window's session lock holds across the holder's transactions and keeps others out.
    with psycopg.connect(url, autocommit=True) as holder, psycopg.connect(url, autocommit=True) as other:
        assert library_store.lock_updates(holder, "support")
        with holder.transaction():
            holder.execute("SELECT 1")
        assert not library_store.lock_updates(other, "support")
        library_store.unlock_updates(holder, "support")
        assert library_store.lock_updates(other, "support")
        library_store.unlock_updates(other, "support")

    # The SDK's LISTEN: a label moved by another client refreshes the agent's cached library.
    with LibraryCache(url) as cache:
        assert cache.wait_listening(10)
        assert cache.get("support").version == 0
        payload = json.dumps({"domain": "support", "label": "production", "version": 1})
        with psycopg.connect(url, autocommit=True) as mover:
            mover.execute(load_queries("grpod.schema", "queries/library.sql")["notify"], {"payload": payload})
        deadline = time.monotonic() + 10
        while cache.refreshes == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert cache.refreshes == 1
