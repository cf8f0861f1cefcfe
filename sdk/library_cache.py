"""Agent-side serving: a domain's library for a label, from an in-process cache kept fresh by NOTIFY.

The first fetch of a (domain, label) reads PostgreSQL (one indexed query); later fetches are a
dictionary lookup. A background thread LISTENs on ``grpod_library``: when a label moves, the
entry is refreshed at once. While the listener is down (the database restarted, the network
dropped) entries older than ``max_staleness`` seconds are read again on their next fetch, and
the listener reconnects with backoff; when the database cannot be read at all, the last entry is
served as it is (an agent keeps working with the library it had). An unknown domain, or a label
that points nowhere yet, is an empty library at version 0, not an error: an agent can start before
anything is learned.

psycopg is imported when the cache is created, not when the SDK is: recording events needs no
database driver, and an agent that only records installs ``grpod-sdk`` without its ``postgres``
extra.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from grpod.schema.errors import ConfigError
from grpod.schema.library import Library
from grpod.schema.sql import load_queries

if TYPE_CHECKING:
    import psycopg

CHANNEL = "grpod_library"
DEFAULT_MAX_STALENESS = 30.0
# Even while the listener believes it is listening, an entry is read again after this: a
# notification lost on a half-open connection delays a rollback by this much at most.
DEFAULT_MAX_AGE = 300.0
DEFAULT_CONNECT_TIMEOUT = 5
# The listener's socket: TCP keepalives and a user timeout find a half-open connection in about 30 s.
LISTENER_SOCKET = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,
}
log = logging.getLogger("grpod.sdk")
DEFAULT_TOKEN_BUDGET = 2000
RECONNECT_MAX_SECONDS = 30.0


class LibraryUnavailableError(Exception):
    """A library was never fetched and the database cannot be read now; the message says what to check."""


class LibraryCache:
    """Fetch libraries for an agent; thread-safe; ``close()`` (or ``with``) stops the listener."""

    def __init__(
        self,
        database_url: str,
        *,
        max_staleness: float = DEFAULT_MAX_STALENESS,
        max_age: float = DEFAULT_MAX_AGE,
        connect_timeout: int = DEFAULT_CONNECT_TIMEOUT,
        token_budget: int | None = DEFAULT_TOKEN_BUDGET,
        listen: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        try:
            import psycopg  # noqa: F401  (the database path is an extra of grpod-sdk)
        except ImportError:
            raise ConfigError(
                "the library cache reads PostgreSQL, and psycopg is not installed; "
                "install the SDK with its postgres extra: pip install 'grpod-sdk[postgres]'."
            ) from None
        self._url = database_url
        self.max_staleness = max_staleness
        self.max_age = max_age
        self.connect_timeout = connect_timeout
        self.token_budget = token_budget
        self._clock = clock
        self._query = load_queries("grpod.schema", "queries/library.sql")["serve"]
        self._entries: dict[tuple[str, str], tuple[Library, float]] = {}
        self._lock = threading.Lock()
        self._reader: psycopg.Connection[Any] | None = None
        self._reader_lock = threading.Lock()
        self._stop = threading.Event()
        self._listening = threading.Event()
        self.refreshes = 0  # entries refreshed on a notification (for tests and metrics)
        self.stale_served = 0  # fetches answered from an old entry because the database could not be read
        self._listener: threading.Thread | None = None
        if listen:
            self._listener = threading.Thread(target=self._listen, name="grpod-library-listener", daemon=True)
            self._listener.start()

    @property
    def listening(self) -> bool:
        """Whether notifications are being received (else entries expire after ``max_staleness``)."""
        return self._listening.is_set()

    def wait_listening(self, timeout: float = 10.0) -> bool:
        return self._listening.wait(timeout)

    def get(self, domain: str, label: str = "production") -> Library:
        """The library ``label`` points at for ``domain`` (version 0 and no experiences when none)."""
        key = (domain, label)
        with self._lock:
            entry = self._entries.get(key)
        if entry is not None:
            library, fetched_at = entry
            age = self._clock() - fetched_at
            if age < self.max_staleness or (self._listening.is_set() and age < self.max_age):
                return library
        try:
            return self._fetch(key)
        except Exception as error:
            if entry is None:
                raise LibraryUnavailableError(
                    f"the library of {domain!r} ({label}) cannot be read from the database ({error}); "
                    "check GRPOD_DATABASE_URL and that PostgreSQL is running."
                ) from error
            # The database is away: keep serving what the agent had rather than failing its request.
            self.stale_served += 1
            return entry[0]

    def invalidate(self, domain: str | None = None) -> None:
        with self._lock:
            for key in [k for k in self._entries if domain is None or k[0] == domain]:
                del self._entries[key]

    def _fetch(self, key: tuple[str, str]) -> Library:
        import psycopg

        domain, label = key
        with self._reader_lock:
            for attempt in (1, 2):  # a connection that broke since the last fetch is opened again once
                try:
                    if self._reader is None or self._reader.closed:
                        self._reader = psycopg.connect(
                            self._url,
                            autocommit=True,
                            application_name="grpod-sdk",
                            connect_timeout=self.connect_timeout,
                        )
                    row = self._reader.execute(self._query, {"domain": domain, "label": label}).fetchone()
                    break
                except psycopg.OperationalError:
                    if self._reader is not None:
                        self._reader.close()
                    self._reader = None
                    if attempt == 2:
                        raise
        if row is None:
            library = Library(domain, label, 0)
        else:
            library = Library.from_rows(domain, label, int(row[0]), row[1], self.token_budget)
        with self._lock:
            self._entries[key] = (library, self._clock())
        return library

    def _listen(self) -> None:
        import psycopg
        from psycopg.conninfo import make_conninfo

        delay = 0.5
        while not self._stop.is_set():
            try:
                with psycopg.connect(
                    make_conninfo(self._url, **LISTENER_SOCKET),
                    autocommit=True,
                    application_name="grpod-sdk-listener",
                    connect_timeout=self.connect_timeout,
                ) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    # Anything may have moved while nobody listened: start from fresh reads.
                    self.invalidate()
                    self._listening.set()
                    delay = 0.5
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=0.5):
                            self._on_notify(note.payload)
            except psycopg.Error as error:
                # Entries now expire after max_staleness until the listener is back.
                log.warning("grpod library listener lost (%s); reconnecting in %.1f s", error, delay)
            self._listening.clear()
            self._stop.wait(delay)
            delay = min(RECONNECT_MAX_SECONDS, delay * 2)

    def _on_notify(self, payload: str) -> None:
        try:
            moved = json.loads(payload)
            key = (str(moved["domain"]), str(moved["label"]))
        except (ValueError, KeyError, TypeError):
            return
        with self._lock:
            cached = key in self._entries
        if cached:
            try:
                self._fetch(key)
                self.refreshes += 1
            except Exception:  # the next get() reads it again
                with self._lock:
                    self._entries.pop(key, None)

    def close(self) -> None:
        self._stop.set()
        if self._listener is not None:
            self._listener.join(timeout=5)
        with self._reader_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None

    def __enter__(self) -> LibraryCache:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
