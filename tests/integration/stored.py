"""Storing events for a test through the real ingest path."""

from __future__ import annotations

from typing import Any

import psycopg

from grpod.daemon.events import Limits
from grpod.workers.ingest import Incoming, store_isolating_failures

from ..factories import raw


def ingest(conn: psycopg.Connection[Any], *events: dict[str, Any]) -> None:
    """Store wire events as the ingest consumer does; every one must be accepted."""
    outcome = store_isolating_failures(conn, [Incoming(raw(e), "test") for e in events], Limits(), 4096)
    assert not outcome.rejected, outcome.rejected
