"""Distillation stage, replay: run a finished distillation again from its recording, with no LLM.

The same code as the live run, on the stored inputs: the LLM's answers come from the ledger, and
the triage's neighbours and what each prompt showed of the library from the distillation's row.
A replay that gives other operations than were recorded means the code or the prompts changed.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row

from grpod.schema.errors import OperatorError
from grpod.schema.sql import load_queries
from grpod.workers import library_store
from grpod.workers.distillation import (
    LearningSettings,
    Near,
    Neighbour,
    Purpose,
    Sample,
    Shown,
    StepFailedError,
    distill,
    whole_library,
)
from grpod.workers.distillation_store import operations_json, queries, recorded_calls
from grpod.workers.ledger import CallRecord, Ledger, NotRecordedError
from grpod.workers.operations import Operation


def near_as_recorded(recorded: Sequence[Mapping[str, Any]] | None) -> Near:
    """The triage's ``near`` of a replay: the neighbours the distillation recorded. A distillation
    recorded before the triage existed asked the operations step for every new experience: each
    is taken as close."""
    by_text = {str(item["text"]): item for item in recorded or ()}

    def near(texts: Sequence[str]) -> list[Neighbour | None]:
        found: list[Neighbour | None] = []
        for text in texts:
            if recorded is None:
                found.append((0, 0.0))
                continue
            item = by_text.get(text)
            if item is None:
                raise NotRecordedError(f"the recording holds no neighbour of the new experience {text[:80]!r}")
            found.append(None if item["id"] is None else (int(item["id"]), float(item["distance"])))
        return found

    return near


def shown_as_recorded(recorded: Mapping[str, Sequence[int]] | None, library: Mapping[int, str]) -> Shown:
    """A replay's ``shown``: what each step's prompt showed, as recorded. A distillation recorded
    before prompts were bounded showed the whole library."""
    if recorded is None:
        return whole_library(library)

    def shown(step: Purpose, texts: Sequence[str], must: Collection[int] = ()) -> Mapping[int, str]:
        if step not in recorded:
            raise NotRecordedError(f"the recording holds no {step} prompt")
        return {i: library[i] for i in recorded[step] if i in library}

    return shown


@dataclass(frozen=True)
class Replay:
    id: int
    domain: str
    operations: list[Operation]
    recorded_operations: list[Operation]
    calls: list[CallRecord]

    @property
    def same(self) -> bool:
        return operations_json(self.operations) == operations_json(self.recorded_operations)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "domain": self.domain,
            "replayed": True,
            "same": self.same,
            "operations": operations_json(self.operations),
            "recorded_operations": operations_json(self.recorded_operations),
            "llm_calls": [call.summary() for call in self.calls],
        }


def _refuse_after_retention(conn: psycopg.Connection[Any], distillation_id: int, trace_ids: list[str]) -> None:
    """Retention dropped what a replay needs (the trajectories, the requests): say so in one sentence."""
    named = load_queries("grpod.schema", "queries/maintenance.sql")
    dropped = conn.execute(named["dropped_trajectories"], {"trace_ids": trace_ids}).fetchall()
    requests = conn.execute(named["dropped_requests"], {"distillation_id": distillation_id}).fetchone()
    moments = [row[1] for row in dropped] + ([requests[1]] if requests and requests[0] else [])
    if moments:
        raise OperatorError(
            f"distillation {distillation_id} cannot be replayed: retention dropped the trajectories of its traces "
            f"and its LLM requests on {min(moments):%Y-%m-%d} (the domain's retention_seconds after it was applied); "
            "its trace ids, queries, rewards, LLM responses and the hashes of what was dropped are kept."
        )


def replay(conn: psycopg.Connection[Any], distillation_id: int) -> Replay:
    """Run a finished distillation again from its recorded LLM responses, with no LLM."""
    named = queries()
    with conn.cursor(row_factory=dict_row) as cursor:
        row = cursor.execute(named["distillation"], {"id": distillation_id}).fetchone()
    if row is None:
        raise OperatorError(
            f"there is no distillation {distillation_id}; "
            "each run of `grpod distill DOMAIN` prints the ids of its distillations."
        )
    domain, status, sample_keys = str(row["domain"]), row["status"], row["samples"]
    if status not in ("distilled", "applied", "refused"):
        raise OperatorError(
            f"distillation {distillation_id} has not finished (it is {status}); only a finished one can be replayed."
        )
    trace_ids = [key["trace_id"] for key in sample_keys]
    _refuse_after_retention(conn, distillation_id, trace_ids)
    contents = {str(r[0]): r for r in conn.execute(named["trace_contents"], {"trace_ids": trace_ids})}
    samples = []
    for key in sample_keys:
        content = contents.get(key["trace_id"])
        if content is None:
            raise OperatorError(f"distillation {distillation_id} used trace {key['trace_id']!r}, which is gone.")
        samples.append(
            Sample(
                trace_id=key["trace_id"],
                reward=float(key["reward"]),
                query=str(content[1]),
                trajectory=tuple(content[2] or ()),
                answer=str(content[3]),
                critique=key.get("critique"),
                ground_truth=key.get("ground_truth"),
            )
        )
    parent = library_store.load(conn, domain, int(row["parent_version"]))
    ledger = Ledger(None, recorded=recorded_calls(conn, distillation_id))
    try:
        result = distill(
            ledger,
            LearningSettings.from_json(row["settings"]),
            samples,
            parent.texts(),
            distillation_id,
            near=near_as_recorded(row["neighbours"]),
            shown=shown_as_recorded(row["shown"], parent.texts()),
        )
    except (NotRecordedError, StepFailedError) as error:
        raise OperatorError(f"distillation {distillation_id} cannot be replayed: {error}.") from None
    return Replay(
        distillation_id,
        domain,
        result.operations,
        [Operation.from_json(op) for op in row["operations"] or ()],
        ledger.calls,
    )
