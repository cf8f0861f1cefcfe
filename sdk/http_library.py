"""Agent-side serving over grpod's HTTP API: no database driver, the standard library only.

``HttpLibraryCache(api_url, token)`` fetches ``GET /v1/libraries/{domain}`` once per (domain,
label), then keeps the entry fresh with one background long poll per entry: the request carries the
entry's ETag and ``wait``, so the API answers 304 while nothing changes and 200 the moment a label
moves (a rollback reaches the agent within a second). While the long poll fails (the API away),
an entry older than ``max_staleness`` is revalidated on its next fetch, and when the API cannot be
reached at all the last library is served as it was (counted in ``stale_served``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from grpod.schema.errors import ConfigError
from grpod.schema.library import Experience, Library
from grpod.sdk.library_cache import LibraryUnavailableError

log = logging.getLogger("grpod.sdk")
DEFAULT_TOKEN_BUDGET = 2000
DEFAULT_WAIT = 30.0  # seconds one long poll is held by the API
DEFAULT_MAX_STALENESS = 30.0
DEFAULT_TIMEOUT = 10.0
RETRY_MAX_SECONDS = 30.0


@dataclass(frozen=True)
class _Entry:
    library: Library
    etag: str | None
    fetched_at: float


class HttpLibraryCache:
    """Fetch libraries for an agent from grpod's HTTP API (a ``read`` token); thread-safe;
    ``close()`` (or ``with``) stops the long polls."""

    def __init__(
        self,
        api_url: str,
        token: str,
        *,
        token_budget: int | None = DEFAULT_TOKEN_BUDGET,
        wait: float = DEFAULT_WAIT,
        max_staleness: float = DEFAULT_MAX_STALENESS,
        timeout: float = DEFAULT_TIMEOUT,
        watch: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not api_url.startswith(("http://", "https://")):
            raise ConfigError(f"the API URL must start with http:// or https://, not {api_url!r}.")
        self._base = api_url.rstrip("/")
        self._token = token
        self.token_budget = token_budget
        self.wait = wait
        self.max_staleness = max_staleness
        self.timeout = timeout
        self._watch = watch
        self._clock = clock
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._watchers: dict[tuple[str, str], threading.Thread] = {}
        self._healthy: dict[tuple[str, str], bool] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.refreshes = 0  # entries replaced because the long poll saw a change
        self.revalidations = 0  # 304s on a fetch: the entry was still current
        self.stale_served = 0  # fetches answered from an old entry because the API could not be reached

    def get(self, domain: str, label: str = "production") -> Library:
        """The library ``label`` points at for ``domain`` (version 0 and no experiences when none)."""
        key = (domain, label)
        with self._lock:
            entry = self._entries.get(key)
            watched = self._healthy.get(key, False)
        if entry is not None and (watched or self._clock() - entry.fetched_at < self.max_staleness):
            return entry.library
        try:
            fresh = self._fetch(key, entry, wait=0.0)
        except OSError as error:
            if entry is None:
                raise LibraryUnavailableError(
                    f"the library of {domain!r} ({label}) cannot be read from {self._base} ({error}); "
                    "check that `grpod api` runs there and is reachable."
                ) from None
            with self._lock:
                self.stale_served += 1
            return entry.library
        self._start_watching(key)
        return fresh.library

    def _url(self, key: tuple[str, str], wait: float) -> str:
        import urllib.parse

        domain, label = key
        query: dict[str, str] = {"label": label}
        if self.token_budget is not None:
            query["token_budget"] = str(self.token_budget)
        if wait:
            query["wait"] = f"{wait:g}"
        return f"{self._base}/v1/libraries/{urllib.parse.quote(domain, safe='')}?{urllib.parse.urlencode(query)}"

    def _fetch(self, key: tuple[str, str], entry: _Entry | None, wait: float) -> _Entry:
        # Imported here, not with the SDK: an agent that only records does not pay for urllib.
        import urllib.error
        import urllib.request

        # The scheme was checked to be http(s) when the cache was made.
        request = urllib.request.Request(  # noqa: S310
            self._url(key, wait), headers={"Authorization": f"Bearer {self._token}"}
        )
        if entry is not None and entry.etag is not None:
            request.add_header("If-None-Match", entry.etag)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout + wait) as answer:  # noqa: S310
                body = json.loads(answer.read())
                etag = answer.headers.get("ETag")
        except urllib.error.HTTPError as error:
            if error.code == 304 and entry is not None:
                kept = _Entry(entry.library, entry.etag, self._clock())
                with self._lock:
                    self._entries[key] = kept
                    self.revalidations += 1
                return kept
            if error.code in (401, 403):
                raise ConfigError(
                    f"grpod's API refused the token for {key[0]!r} ({error.code}): "
                    "give a token with the read scope on that domain (`grpod token create ... --scope read`)."
                ) from None
            raise OSError(f"the API answered {error.code}") from None
        fresh = _Entry(_library(body, key[1]), etag, self._clock())
        with self._lock:
            changed = entry is not None and entry.library.version != fresh.library.version
            self._entries[key] = fresh
            if changed and wait:
                self.refreshes += 1
        return fresh

    def _start_watching(self, key: tuple[str, str]) -> None:
        if not self._watch:
            return
        with self._lock:
            if key in self._watchers or self._stop.is_set():
                return
            thread = threading.Thread(target=self._long_poll, args=(key,), name=f"grpod-library-{key[0]}", daemon=True)
            self._watchers[key] = thread
        thread.start()

    def _long_poll(self, key: tuple[str, str]) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            with self._lock:
                entry = self._entries.get(key)
            try:
                self._fetch(key, entry, wait=self.wait)
                with self._lock:
                    self._healthy[key] = True
                backoff = 0.5
            except (OSError, ConfigError) as error:
                with self._lock:
                    self._healthy[key] = False
                log.warning("grpod library long poll failed; retrying in %.1f s: %s", backoff, error)
                self._stop.wait(backoff)
                backoff = min(RETRY_MAX_SECONDS, backoff * 2)

    def close(self) -> None:
        self._stop.set()

    def __enter__(self) -> HttpLibraryCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _library(body: dict[str, Any], label: str) -> Library:
    experiences = tuple(
        Experience(int(item["id"]), str(item["text"]), usefulness=item.get("usefulness"))
        for item in body.get("experiences") or ()
    )
    return Library(str(body["domain"]), label, int(body["version"]), experiences, str(body.get("prompt") or ""))
