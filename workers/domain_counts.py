"""Each domain's counts: its traces, the rewards of its traces, and its traces with no reward yet.

They are kept as they change, so that `/metrics` and `grpod status` read one row per domain
instead of counting the whole history. Whatever stores or unmarks rows (ingest, the maintenance
sweep) adds what it changed as deltas in its own transaction, appended to ``domain_count_deltas``
so that concurrent batches never wait on a shared row; the sweep folds the deltas into
``domain_counts``; the view ``domain_totals`` reads the sum of both (migration 0020).

A reward counts for its domain once its trace is stored: at once when the trace is there, when the
trace arrives after it, or, for a reward and a trace stored at the same moment by two batches
that saw nothing of each other's rows, when the sweep finds it (``count_unmatched_rewards``).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import psycopg

from grpod.schema.sql import load_queries

QUERIES = ("grpod.schema", "queries/counts.sql")


@dataclass
class CountDelta:
    traces: int = 0
    rewards: int = 0
    unrewarded: int = 0


def batch_deltas(
    new_traces: Iterable[tuple[str, str, bool]],
    earlier_rewards: Iterable[str],
    new_rewards: Iterable[tuple[str, str | None, bool]],
) -> dict[str, CountDelta]:
    """What a stored batch changed, per domain, from what its statements returned.

    ``new_traces``: (trace_id, domain, awaits a reward) of each trace stored; ``earlier_rewards``:
    the domain of each reward that was stored before its trace and counts now; ``new_rewards``:
    (trace_id, its trace's domain or None when not stored, whether it was the trace's first) of
    each reward stored.
    """
    deltas: defaultdict[str, CountDelta] = defaultdict(CountDelta)
    for _, domain, awaiting in new_traces:
        deltas[domain].traces += 1
        deltas[domain].unrewarded += int(awaiting)
    for domain in earlier_rewards:
        deltas[domain].rewards += 1
    first_rewarded: dict[str, str] = {}  # two sources of one trace in a batch make it rewarded once
    for trace_id, trace_domain, first in new_rewards:
        if trace_domain is None:
            continue  # its trace is not stored yet: it counts when the trace comes
        deltas[trace_domain].rewards += 1
        if first:
            first_rewarded[trace_id] = trace_domain
    for rewarded_domain in first_rewarded.values():
        deltas[rewarded_domain].unrewarded -= 1
    return {domain: delta for domain, delta in deltas.items() if delta != CountDelta()}


def add_deltas(conn: psycopg.Connection[Any] | psycopg.Cursor[Any], deltas: Mapping[str, CountDelta]) -> None:
    """Append ``deltas`` in the caller's transaction."""
    if not deltas:
        return
    domains = sorted(deltas)
    conn.execute(
        load_queries(*QUERIES)["add_count_deltas"],
        {
            "domains": domains,
            "traces": [deltas[d].traces for d in domains],
            "rewards": [deltas[d].rewards for d in domains],
            "unrewarded": [deltas[d].unrewarded for d in domains],
        },
    )


def count_unmatched_rewards(conn: psycopg.Connection[Any]) -> int:
    """Count the rewards whose trace was stored beside them by a batch that did not see them."""
    domains = Counter(str(row[0]) for row in conn.execute(load_queries(*QUERIES)["count_unmatched_rewards"]))
    add_deltas(conn, {domain: CountDelta(rewards=n) for domain, n in domains.items()})
    return domains.total()


def fold(conn: psycopg.Connection[Any]) -> int:
    """Fold every delta into ``domain_counts``; how many domains changed."""
    return len(conn.execute(load_queries(*QUERIES)["fold_count_deltas"]).fetchall())
