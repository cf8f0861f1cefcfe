"""Paper mode, the database shell: training runs and their steps, rollouts stored as traces of
their run, and stored evaluations. Thin reads and writes over ``queries/training.sql``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg
from psycopg.types.json import Jsonb

from grpod.schema.events import Limits
from grpod.schema.sql import QueryFile, load_queries
from grpod.workers.ingest import Incoming, store_batch
from grpod.workers.training import StepReport

QUERIES = ("grpod.schema", "queries/training.sql")


def _queries() -> QueryFile:
    return load_queries(*QUERIES)


def open_run(
    conn: psycopg.Connection[Any],
    domain: str,
    run_key: bytes,
    dataset: str,
    settings: Mapping[str, Any],
    *,
    new_run: bool,
) -> tuple[int, bool]:
    """The run to go on with, and whether it had finished: the newest with this key, unless it
    finished and ``new_run`` asks for another."""
    found = conn.execute(_queries()["latest_run"], {"run_key": run_key}).fetchone()
    if found is not None and not (found[1] and new_run):
        return int(found[0]), bool(found[1])
    row = conn.execute(
        _queries()["create_run"],
        {"domain": domain, "run_key": run_key, "dataset": dataset, "settings": Jsonb(dict(settings))},
    ).fetchone()
    assert row is not None
    return int(row[0]), False


def finish_run(conn: psycopg.Connection[Any], run_id: int) -> None:
    conn.execute(_queries()["finish_run"], {"id": run_id})


def start_step(conn: psycopg.Connection[Any], run_id: int, step: int, parent_version: int) -> tuple[int, bool]:
    """The library version the step's rollouts run with (the one it started with, when resumed),
    and whether the step had finished."""
    conn.execute(_queries()["start_step"], {"run_id": run_id, "step": step, "parent_version": parent_version})
    row = conn.execute(_queries()["step"], {"run_id": run_id, "step": step}).fetchone()
    assert row is not None
    return int(row[0]), row[1] is not None


def finish_step(conn: psycopg.Connection[Any], run_id: int, report: StepReport) -> None:
    conn.execute(_queries()["finish_step"], {"run_id": run_id, "step": report.step, "report": Jsonb(report.to_json())})


def step_reports(conn: psycopg.Connection[Any], run_id: int) -> list[StepReport]:
    return [StepReport.from_json(row[0]) for row in conn.execute(_queries()["step_reports"], {"run_id": run_id})]


@dataclass(frozen=True)
class Rollout:
    """A stored rollout: its answer, its verdict, what it cost, and the distillation that used it."""

    trace_id: str
    answer: str
    reward: float | None
    critique: str | None
    tokens_in: int
    tokens_out: int
    used_by: int | None


def rollouts(conn: psycopg.Connection[Any], trace_ids: Sequence[str], source: str) -> dict[str, Rollout]:
    rows = conn.execute(_queries()["rollouts"], {"trace_ids": list(trace_ids), "source": source}).fetchall()
    found = {}
    for trace_id, answer, metadata, value, critique, used_by in rows:
        usage = (metadata or {}).get("usage", {})
        found[str(trace_id)] = Rollout(
            str(trace_id),
            str(answer),
            float(value) if value is not None else None,
            critique,
            int(usage.get("tokens_in", 0)),
            int(usage.get("tokens_out", 0)),
            int(used_by) if used_by is not None else None,
        )
    return found


def store_rollouts(
    conn: psycopg.Connection[Any], run_id: int, events: Sequence[Mapping[str, Any]], limits: Limits, payload_limit: int
) -> int:
    """Store rollouts (traces and their rewards) through ingestion's own validation and storage,
    marked as the run's in the same transaction, so the grouping stage never sees them. Returns how
    many events were rejected (kept in the rejected store with their reasons, as any event)."""
    incoming = [Incoming(orjson.dumps(dict(event)), "train") for event in events]
    trace_ids = [str(event["trace_id"]) for event in events if event["type"] == "trace"]
    with conn.transaction():
        outcome = store_batch(conn, incoming, limits, payload_limit)
        conn.execute(_queries()["mark_rollouts"], {"run_id": run_id, "trace_ids": trace_ids})
    return sum(outcome.rejected.values())


def distillations_of(conn: psycopg.Connection[Any], ids: Sequence[int]) -> list[tuple[int, str, int | None]]:
    rows = conn.execute(_queries()["distillations_of"], {"ids": list(ids)}).fetchall()
    return [(int(i), str(status), int(version) if version is not None else None) for i, status, version in rows]


def distiller_usage(
    conn: psycopg.Connection[Any], domain: str, distillation_ids: Sequence[int], versions: Sequence[int]
) -> tuple[int, int, int]:
    """The distiller's calls and tokens in and out for these distillations and these versions' windows."""
    row = conn.execute(
        _queries()["usage_of"],
        {"distillation_ids": list(distillation_ids), "versions": list(versions), "domain": domain},
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


def operations_in(conn: psycopg.Connection[Any], domain: str, versions: Sequence[int]) -> int:
    """How many operations these versions applied to their parents."""
    row = conn.execute(_queries()["operations_in"], {"domain": domain, "versions": list(versions)}).fetchone()
    return int(row[0]) if row else 0


def distiller_calls_by_purpose(
    conn: psycopg.Connection[Any], domain: str, distillation_ids: Sequence[int], versions: Sequence[int]
) -> dict[str, int]:
    rows = conn.execute(
        _queries()["calls_by_purpose"],
        {"distillation_ids": list(distillation_ids), "versions": list(versions), "domain": domain},
    ).fetchall()
    return {str(purpose): int(count) for purpose, count in rows}


def save_evaluation(
    conn: psycopg.Connection[Any], domain: str, dataset: str, k: int, report: Mapping[str, Any]
) -> tuple[int, datetime]:
    row = conn.execute(
        _queries()["save_evaluation"], {"domain": domain, "dataset": dataset, "k": k, "report": Jsonb(dict(report))}
    ).fetchone()
    assert row is not None
    return int(row[0]), row[1]


def evaluations(conn: psycopg.Connection[Any], domain: str | None, limit: int = 50) -> list[dict[str, Any]]:
    rows = conn.execute(_queries()["evaluations"], {"domain": domain, "limit": limit}).fetchall()
    return [
        {"id": int(i), "domain": d, "dataset": ds, "k": int(k), "created_at": at.astimezone(UTC).isoformat(), **report}
        for i, d, ds, k, report, at in rows
    ]
