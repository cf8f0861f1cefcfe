"""A shared limit per LLM endpoint: requests and tokens per minute (GRPOD_LLM_MAX_RPM, _TPM),
counted in PostgreSQL so that every worker process on every host keeps to one budget.

Before a call, ``acquire`` counts the request and its estimated tokens (the prompt's estimate and
the most it may answer) in the current window; when the window is spent it waits for the next
one. After the call, ``settle`` replaces the estimate with the tokens the endpoint reported. The
windows are fixed (a minute each), so up to twice the limit can fall in one minute that spans two
windows; an endpoint's own limit (a 429 with Retry-After, which the openai client waits out) still
holds the line.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from grpod.schema.library import estimate_tokens
from grpod.schema.sql import load_queries

QUERIES = ("grpod.schema", "queries/llm_budget.sql")
Connect = Callable[[], AbstractContextManager[psycopg.Connection[Any]]]


def estimated_tokens(messages: Sequence[Mapping[str, str]], max_tokens: int) -> int:
    """What a request may cost at most: its prompt, estimated, and the most it may answer."""
    return sum(estimate_tokens(message.get("content") or "") + 4 for message in messages) + max_tokens


@dataclass(frozen=True)
class Reservation:
    window_start: datetime
    tokens: int


class SharedBudget:
    """Requests and tokens per window for one endpoint, shared through PostgreSQL."""

    def __init__(
        self,
        connect: Connect,
        endpoint: str,
        *,
        max_requests: int | None,
        max_tokens: int | None,
        window_seconds: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.connect, self.endpoint = connect, endpoint
        self.max_requests, self.max_tokens, self.window = max_requests, max_tokens, window_seconds
        self.sleep = sleep
        self.waited = 0.0  # seconds spent waiting for a window, for reports

    def acquire(self, tokens: int) -> Reservation:
        queries = load_queries(*QUERIES)
        values = {
            "endpoint": self.endpoint,
            "window": self.window,
            "tokens": tokens,
            "max_requests": self.max_requests,
            "max_tokens": self.max_tokens,
        }
        while True:
            with self.connect() as conn:
                row = conn.execute(queries["reserve"], values).fetchone()
                if row is not None:
                    if int(row[1]) == 1:  # the window's first request tidies the old ones
                        conn.execute(queries["prune"], {"endpoint": self.endpoint})
                    return Reservation(row[0], tokens)
                wait = conn.execute(queries["until_next_window"], {"window": self.window}).fetchone()
            # Spread the waiters over the window's first moments, not all on its first instant.
            pause = float(wait[0] if wait else self.window) + random.uniform(0, min(1.0, self.window / 10))  # noqa: S311
            self.waited += pause
            self.sleep(pause)

    def settle(self, reservation: Reservation, used: int) -> None:
        if used == reservation.tokens:
            return
        with self.connect() as conn:
            conn.execute(
                load_queries(*QUERIES)["settle"],
                {
                    "endpoint": self.endpoint,
                    "window_start": reservation.window_start,
                    "delta": used - reservation.tokens,
                },
            )
