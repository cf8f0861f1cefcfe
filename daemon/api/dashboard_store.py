"""What the dashboard's pages read that the CLI does not already: the overview of the domains,
distillations with their LLM calls, one trace. Thin reads over ``queries/dashboard.sql``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.rows import dict_row

from grpod.schema.sql import QueryFile, load_queries

QUERIES = ("grpod.schema", "queries/dashboard.sql")
RATE_WINDOW_SECONDS = 300  # events/s is the mean over the last five minutes


def _queries() -> QueryFile:
    return load_queries(*QUERIES)


def overview(conn: psycopg.Connection[Any], domains: Sequence[str] | None) -> list[dict[str, Any]]:
    """Each domain (of ``domains``; None: all) with its traffic, waiting work and labels."""
    rows = conn.execute(
        _queries()["overview"],
        {"domains": list(domains) if domains is not None else None, "window": RATE_WINDOW_SECONDS},
    ).fetchall()
    keys = ("domain", "recent_events", "awaiting_reward", "rejected", "ready_groups", "production", "candidate")
    listed = []
    for row in rows:
        entry = dict(zip(keys, row[:7], strict=True))
        entry["events_per_second"] = int(entry["recent_events"]) / RATE_WINDOW_SECONDS
        entry["pinned"], entry["frozen"] = row[7], bool(row[8])
        listed.append(entry)
    return listed


def unattributed_rejected(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(_queries()["unattributed_rejected"]).fetchone()
    return int(row[0]) if row else 0


def _rows(conn: psycopg.Connection[Any], name: str, values: dict[str, Any]) -> list[dict[str, Any]]:
    """A named query's rows as dictionaries, keyed by its columns."""
    with conn.cursor(row_factory=dict_row) as cursor:
        return cursor.execute(_queries()[name], values).fetchall()


def distillations(conn: psycopg.Connection[Any], domain: str, limit: int = 50) -> list[dict[str, Any]]:
    """The domain's newest distillations, each with its calls, tokens and notes."""
    return _rows(conn, "distillations", {"domain": domain, "limit": limit})


def distillation(conn: psycopg.Connection[Any], domain: str, distillation_id: int) -> dict[str, Any] | None:
    """One distillation of ``domain``, whole, with its LLM calls; None if the domain has no such one."""
    found = _rows(conn, "distillation", {"id": distillation_id, "domain": domain})
    if not found:
        return None
    return found[0] | {"calls": _rows(conn, "distillation_calls", {"id": distillation_id})}


def trace(conn: psycopg.Connection[Any], trace_id: str) -> dict[str, Any] | None:
    found = _rows(conn, "trace", {"trace_id": trace_id})
    return found[0] if found else None


def rejected_domain(conn: psycopg.Connection[Any], rejected_id: int) -> tuple[bool, str | None]:
    """Whether rejected event ``rejected_id`` exists, and the domain it named."""
    row = conn.execute(_queries()["rejected_domain"], {"id": rejected_id}).fetchone()
    return (row is not None, row[0] if row is not None else None)
