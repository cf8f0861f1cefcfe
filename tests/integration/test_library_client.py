"""The SDK's library cache against the real PostgreSQL: first fetch, refresh on NOTIFY, a lost listener."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from grpod.daemon import library_admin
from grpod.sdk import LibraryCache, LibraryUnavailableError
from grpod.workers.operations import Operation

from .stored import publish
from .test_library import OPERATOR, make_domain


def eventually(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return False


def test_an_unknown_domain_is_an_empty_library_and_a_published_one_is_served(
    conn: psycopg.Connection[Any], database_url: str
) -> None:
    with LibraryCache(database_url, listen=False) as cache:
        empty = cache.get("never-seen")
        assert (empty.version, empty.experiences, empty.prompt) == (0, (), "")
        make_domain(conn)
        publish(
            conn,
            "support",
            [Operation("ADD", "When asked about keys, check the docs."), Operation("ADD", "When unsure, ask.")],
        )
        cache.invalidate()
        library = cache.get("support")
    assert library.version == 1 and [e.id for e in library.experiences] == [1, 2]
    assert library.prompt.splitlines()[1:] == ["[1] When asked about keys, check the docs.", "[2] When unsure, ask."]
    assert library.label == "production"


def test_the_cache_refreshes_on_notify_and_survives_a_lost_listener(
    conn: psycopg.Connection[Any], database_url: str
) -> None:
    make_domain(conn)
    publish(conn, "support", [Operation("ADD", "When A, do B.")])
    with LibraryCache(database_url, max_staleness=0.5) as cache:
        assert cache.wait_listening()
        assert cache.get("support").version == 1

        publish(conn, "support", [Operation("ADD", "When C, do D.")])  # the label moves: NOTIFY

        assert eventually(lambda: cache.refreshes >= 1)
        assert cache.get("support").version == 2  # from the cache, refreshed by the notification
        library_admin.rollback(conn, "support", 1, reason="test", actor=OPERATOR)
        assert eventually(lambda: cache.get("support").version == 1)

        # The listener's connection is killed: entries fall back to bounded staleness ...
        killed = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'grpod-sdk-listener'"
        ).fetchall()
        assert killed == [(True,)]
        assert eventually(lambda: not cache.listening, timeout=5)
        library_admin.promote(conn, "support", 2, reason="test", actor=OPERATOR)
        assert eventually(lambda: cache.get("support").version == 2, timeout=5)  # re-read after 0.5 s at most

        # ... and the listener comes back by itself.
        assert cache.wait_listening(timeout=15)
        library_admin.rollback(conn, "support", 1, reason="test", actor=OPERATOR)
        assert eventually(lambda: cache.get("support").version == 1)

        # The reader's connection dies too: the next fetch opens a new one.
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'grpod-sdk'"
        ).fetchall()
        cache.invalidate()
        assert cache.get("support").version == 1


def test_with_the_database_gone_the_last_library_is_served_and_a_new_one_is_a_clear_error(
    conn: psycopg.Connection[Any], database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_domain(conn)
    publish(conn, "support", [Operation("ADD", "When A, do B.")])
    clock = [0.0]
    with LibraryCache(database_url, listen=False, max_staleness=1.0, clock=lambda: clock[0]) as cache:
        assert cache.get("support").version == 1
        # The database goes away: the reader's connection dies and new ones are refused.
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'grpod-sdk'"
        ).fetchall()

        def refused(*_: object, **__: object) -> None:
            raise psycopg.OperationalError("connection refused")

        with monkeypatch.context() as patched:
            patched.setattr(psycopg, "connect", refused)
            clock[0] = 5.0  # the entry is stale: it is read again, which fails
            assert cache.get("support").version == 1 and cache.stale_served == 1
            with pytest.raises(LibraryUnavailableError, match="the library of 'billing' \\(production\\) cannot be"):
                cache.get("billing")


def test_a_notification_lost_while_listening_reaches_the_agent_within_max_age(
    conn: psycopg.Connection[Any], database_url: str
) -> None:
    make_domain(conn)
    publish(conn, "support", [Operation("ADD", "When A, do B.")])
    publish(conn, "support", [Operation("ADD", "When C, do D.")])
    clock = [0.0]
    with LibraryCache(database_url, max_staleness=1.0, max_age=60.0, clock=lambda: clock[0]) as cache:
        assert cache.wait_listening()
        assert cache.get("support").version == 2
        # Production moves with no NOTIFY (as if it were lost on a half-open listener).
        conn.execute("UPDATE library_labels SET version = 1 WHERE domain = 'support' AND label = 'production'")
        clock[0] = 30.0  # stale, but the listener looks alive: the entry is still trusted ...
        assert cache.get("support").version == 2
        clock[0] = 61.0  # ... until max_age, whatever the listener says
        assert cache.get("support").version == 1
