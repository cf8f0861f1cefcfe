"""Distillation stage, the database shell of one group: distill a ready group, record its LLM calls.

Connections here are in autocommit mode: a distillation waits on an LLM for seconds or minutes
and must not hold a transaction open meanwhile. What must be atomic is written in one short
transaction: a distillation's result together with the traces it used. A session-level advisory
lock keeps one runner per distillation input; a process that dies releases it with its
connection, so a retry can take over at once. The domain's update window
(``grpod.workers.update_window``) publishes what distillations proposed; ``grpod.workers.replay``
runs one again from its recording.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import psycopg
import structlog
from psycopg.types.json import Jsonb

from grpod.schema.errors import NotFoundError
from grpod.schema.sql import load_queries
from grpod.workers import grouping_store, library_store
from grpod.workers.distillation import (
    LearningSettings,
    Neighbour,
    Sample,
    StepFailedError,
    distill,
    input_key,
    pick_samples,
)
from grpod.workers.embeddings import Embedder
from grpod.workers.grouping import Combination, DomainSettings, Member, SourceReward, combine_rewards, readiness
from grpod.workers.ledger import CallRecord, Ledger
from grpod.workers.library_vectors import LibraryVectors
from grpod.workers.llm import LLM, LLMError
from grpod.workers.operations import Note, Operation
from grpod.workers.promotion import PublishSettings

QUERIES = ("grpod.schema", "queries/distillation.sql")
BACKOFF_SECONDS = 60.0  # a failed distillation is tried again after this, doubling per attempt ...
BACKOFF_MAX_SECONDS = 3600.0  # ... up to this
MAX_ATTEMPTS = 5  # then it stays failed, with its reason, until `grpod distill DOMAIN --retry-failed`

log = structlog.stdlib.get_logger(__name__)


def queries() -> Any:
    return load_queries(*QUERIES)


def require_autocommit(conn: psycopg.Connection[Any]) -> None:
    if not conn.autocommit:
        raise ValueError("distillation needs an autocommit connection (it must not hold a transaction open)")


def backoff_seconds(attempts: int) -> float:
    """How long a distillation that failed ``attempts`` times waits before the sweep tries it again."""
    return float(min(BACKOFF_MAX_SECONDS, BACKOFF_SECONDS * 2.0 ** max(0, attempts - 1)))


def domain_settings(
    conn: psycopg.Connection[Any], domain: str
) -> tuple[DomainSettings, LearningSettings, PublishSettings]:
    row = conn.execute(queries()["domain_settings"], {"domain": domain}).fetchone()
    if row is None:
        raise NotFoundError(f"there is no domain {domain!r}; `grpod domains` lists them.")
    values = row[0] or {}
    return DomainSettings.from_json(values), LearningSettings.from_json(values), PublishSettings.from_json(values)


def notes_json(notes: Sequence[Note]) -> list[dict[str, str]]:
    return [note.to_json() for note in notes]


def operations_json(operations: Sequence[Operation]) -> list[dict[str, Any]]:
    return [operation.to_json() for operation in operations]


def recorder(conn: psycopg.Connection[Any], domain: str, distillation_id: int | None) -> Callable[[CallRecord], int]:
    """Store each LLM call as it is answered (concurrent summaries take turns on the connection)."""
    lock = threading.Lock()
    query = queries()["insert_llm_call"]

    def record(call: CallRecord) -> int:
        with lock:
            row = conn.execute(
                query,
                {
                    "domain": domain,
                    "distillation_id": distillation_id,
                    "purpose": call.purpose,
                    "model": call.model,
                    "prompt_hash": call.prompt_hash,
                    "request": Jsonb(call.request),
                    "response": call.response,
                    "error": call.error,
                    "tokens_in": call.tokens_in,
                    "tokens_out": call.tokens_out,
                    "latency_seconds": call.latency_seconds,
                },
            ).fetchone()
        assert row is not None
        return int(row[0])

    return record


def _neighbours_json(new_experiences: Sequence[str], neighbours: Sequence[Neighbour | None]) -> list[dict[str, Any]]:
    return [
        {"text": text, "id": None if n is None else n[0], "distance": None if n is None else n[1]}
        for text, n in zip(new_experiences, neighbours, strict=True)
    ]


def recorded_calls(conn: psycopg.Connection[Any], distillation_id: int) -> list[CallRecord]:
    rows = conn.execute(queries()["recorded_calls"], {"distillation_id": distillation_id}).fetchall()
    return [
        CallRecord(
            purpose=row[1],
            model=row[2],
            prompt_hash=bytes(row[3]),
            request=row[4],
            response=row[5],
            error=row[6],
            tokens_in=int(row[7]),
            tokens_out=int(row[8]),
            latency_seconds=float(row[9]),
            id=int(row[0]),
        )
        for row in rows
    ]


# One group ---------------------------------------------------------------------------------------

RunStatus = Literal["distilled", "failed", "superseded", "busy", "finished_before", "not_ready", "frozen"]


@dataclass(frozen=True)
class DistillationRun:
    status: RunStatus
    group_id: int | None  # None: a training question's rollouts
    domain: str | None = None
    id: int | None = None
    operations: list[Operation] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)
    new_experiences: list[str] = field(default_factory=list)
    calls: list[CallRecord] = field(default_factory=list)
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "group_id": self.group_id,
            "domain": self.domain,
            "status": self.status,
            "reason": self.reason or None,
            "new_experiences": self.new_experiences,
            "operations": operations_json(self.operations),
            "notes": notes_json(self.notes),
            "llm_calls": [call.summary() for call in self.calls],
        }


def _sample(row: Sequence[Any], combination: Combination) -> tuple[Sample, Member]:
    trace_id, query, trajectory, answer, sources, values, received, critiques, truths = row
    rewards = tuple(
        SourceReward(source=s, value=float(v), received_at=float(r))
        for s, v, r in zip(sources, values, received, strict=True)
    )
    value = combine_rewards(rewards, combination)
    assert value is not None  # the query joins rewards: every sample has one
    critique = "\n".join(f"{s}: {c}" for s, c in zip(sources, critiques, strict=True) if c)
    truth = next((t for t in truths if t), None)
    sample = Sample(
        trace_id=str(trace_id),
        reward=value,
        query=str(query),
        trajectory=tuple(trajectory or ()),
        answer=str(answer),
        critique=critique or None,
        ground_truth=truth,
    )
    return sample, Member(str(trace_id), rewards)


def distill_group(
    conn: psycopg.Connection[Any],
    llm: LLM,
    embedder: Embedder,
    group_id: int,
    *,
    require_marked: bool = True,
    on_ready: grouping_store.ReadyGroups | None = None,
) -> DistillationRun:
    """Distill one ready group: summaries, group advantage and operations, recorded in the ledger.

    Idempotent: the input (the picked traces with their rewards, and the parent version) keys the
    distillation; a second run of the same input finds it finished (or running elsewhere) and
    does nothing. ``require_marked=False`` (an operator naming the group) skips the check that the
    grouping stage marked it ready; the readiness rule itself still has to hold.
    """
    require_autocommit(conn)
    named = queries()
    row = conn.execute(named["group_to_distill"], {"group_id": group_id}).fetchone()
    if row is None:
        return DistillationRun("not_ready", group_id, reason=f"there is no group {group_id}")
    domain, settings_json, marked = str(row[0]), row[1] or {}, bool(row[2])
    if row[3]:
        return DistillationRun("frozen", group_id, domain, reason=f"domain {domain!r} is frozen")
    grouping, learning = DomainSettings.from_json(settings_json), LearningSettings.from_json(settings_json)
    if require_marked and not marked:
        return DistillationRun("not_ready", group_id, domain, reason="the group is not marked ready")
    pairs = [
        _sample(r, grouping.reward_combination) for r in conn.execute(named["group_samples"], {"group_id": group_id})
    ]
    verdict = readiness([member for _, member in pairs], grouping)
    if not verdict.ready:
        if marked:  # its traces were used meanwhile: it waits for new ones
            conn.execute(named["unmark_ready"], {"group_id": group_id})
        return DistillationRun("not_ready", group_id, domain, reason=verdict.reason)
    samples = pick_samples([sample for sample, _ in pairs], grouping.group_size)
    return distill_samples(conn, llm, embedder, domain, learning, samples, group_id=group_id, on_ready=on_ready)


def distill_samples(
    conn: psycopg.Connection[Any],
    llm: LLM,
    embedder: Embedder,
    domain: str,
    learning: LearningSettings,
    samples: Sequence[Sample],
    *,
    group_id: int | None,
    on_ready: grouping_store.ReadyGroups | None = None,
) -> DistillationRun:
    """Distill these samples against the domain's current library: a ready group's (``group_id``),
    or a training question's rollouts (``group_id`` None: ``grpod train``'s groups are its questions).

    Idempotent by the input (the samples with their rewards, and the parent version), as
    ``distill_group`` says; each trace is learned from once.
    """
    require_autocommit(conn)
    named = queries()
    parent = library_store.load(conn, domain, library_store.current_version(conn, domain))
    key = input_key(domain, group_id, samples, parent.version)
    locked = conn.execute(named["lock_distillation"], {"input_key": key}).fetchone()
    if not (locked and locked[0]):
        return DistillationRun("busy", group_id, domain, reason="another process is distilling this input")
    try:
        claimed = conn.execute(
            named["claim_distillation"],
            {
                "domain": domain,
                "group_id": group_id,
                "input_key": key,
                "parent_version": parent.version,
                "samples": Jsonb([sample.key() for sample in samples]),
                "settings": Jsonb(learning.to_json()),
            },
        ).fetchone()
        if claimed is None:
            found = conn.execute(named["find_distillation"], {"input_key": key}).fetchone()
            assert found is not None
            return DistillationRun(
                "finished_before", group_id, domain, int(found[0]), reason=f"this input was distilled ({found[1]})"
            )
        distillation_id, attempts = int(claimed[0]), int(claimed[1])
        bound = log.bind(distillation_id=distillation_id, group_id=group_id, domain=domain, attempt=attempts)
        ledger = Ledger(llm, recorder(conn, domain, distillation_id), recorded_calls(conn, distillation_id))
        try:
            library = parent.texts()
            view = LibraryVectors(conn, embedder, domain, library, learning.context_tokens)
            result = distill(ledger, learning, samples, library, distillation_id, near=view.near, shown=view.shown)
        except (StepFailedError, LLMError) as error:
            terminal = attempts >= MAX_ATTEMPTS
            backoff = backoff_seconds(attempts)
            conn.execute(
                named["fail_distillation"],
                {"id": distillation_id, "error": str(error), "backoff_seconds": backoff, "terminal": terminal},
            )
            if terminal:
                bound.error(
                    "distillation failed for good; `grpod distill DOMAIN --retry-failed` takes it again",
                    error=str(error),
                    attempts=attempts,
                )
            else:
                bound.warning("distillation failed; the sweep tries again", error=str(error), retry_in_seconds=backoff)
            return DistillationRun("failed", group_id, domain, distillation_id, calls=ledger.calls, reason=str(error))
        trace_ids = [sample.trace_id for sample in samples]
        with conn.transaction():
            # Each trace is learned from once: another distillation of the group (its input key
            # changed by a new reward or version) may have finished with some of them meanwhile.
            used = {
                str(row[0]): int(row[1])
                for row in conn.execute(named["lock_traces"], {"trace_ids": trace_ids})
                if row[1] is not None and int(row[1]) != distillation_id
            }
            why = ""
            if used:
                why = f"traces {', '.join(sorted(used))} were used meanwhile by distillation {min(used.values())}"
                conn.execute(named["supersede_distillation"], {"id": distillation_id, "error": why})
            else:
                conn.execute(
                    named["finish_distillation"],
                    {
                        "id": distillation_id,
                        "summaries": Jsonb(result.summaries),
                        "new_experiences": Jsonb(result.new_experiences),
                        "operations": Jsonb(operations_json(result.operations)),
                        "notes": Jsonb(notes_json(result.notes)),
                        "neighbours": Jsonb(_neighbours_json(result.new_experiences, result.neighbours)),
                        "shown": Jsonb(view.recorded),
                    },
                )
                conn.execute(named["use_traces"], {"distillation_id": distillation_id, "trace_ids": trace_ids})
                if group_id is not None:
                    conn.execute(named["unmark_ready"], {"group_id": group_id})
        if used:
            bound.warning("distillation superseded; its result is not applied", why=why)
            return DistillationRun("superseded", group_id, domain, distillation_id, calls=ledger.calls, reason=why)
        for note in result.notes:
            bound.info("operation " + note.action, proposed=note.proposed, why=note.why)
        bound.info(
            "group distilled",
            operations=len(result.operations),
            llm_calls=len(ledger.calls),
            tokens_in=sum(call.tokens_in for call in ledger.calls),
            tokens_out=sum(call.tokens_out for call in ledger.calls),
        )
    finally:
        conn.execute(named["unlock_distillation"], {"input_key": key})
    if group_id is not None:
        grouping_store.check_readiness(conn, [group_id], on_ready)  # unused traces may make it ready again
    return DistillationRun(
        "distilled",
        group_id,
        domain,
        distillation_id,
        operations=result.operations,
        notes=result.notes,
        new_experiences=result.new_experiences,
        calls=ledger.calls,
    )


# Work lists for the sweep and the command line --------------------------------------------------


def groups_to_distill(
    conn: psycopg.Connection[Any], domain: str | None = None, *, min_age_seconds: float = 0.0, limit: int = 100
) -> list[tuple[int, str]]:
    """Ready groups to distill, oldest ready first; ``min_age_seconds`` leaves the ones whose task is
    most likely still queued to that task (the sweep looks for lost ones)."""
    rows = conn.execute(
        queries()["groups_to_distill"], {"domain": domain, "limit": limit, "min_age_seconds": min_age_seconds}
    ).fetchall()
    return [(int(row[0]), str(row[1])) for row in rows]


def retry_failed(conn: psycopg.Connection[Any], domain: str) -> list[int]:
    """Give the domain's distillations that failed for good their attempts again; their groups."""
    rows = conn.execute(queries()["retry_failed_distillations"], {"domain": domain}).fetchall()
    return sorted({int(row[0]) for row in rows if row[0] is not None})
