"""Distillation stage, the database shell: distil a ready group, publish a domain's update window, replay.

Connections here are in autocommit mode: a distillation waits on an LLM for seconds or minutes
and must not hold a transaction open meanwhile. What must be atomic is written in one short
transaction: a distillation's result together with the traces it used, and a new library
version together with the distillations it applies. Two session-level advisory locks keep one
runner per distillation input and one writer of versions per domain; a process that dies
releases them with its connection, so a retry can take over at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import psycopg
import structlog
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from grpod.daemon.errors import OperatorError
from grpod.daemon.sql import load_queries
from grpod.workers import grouping_store, library_store
from grpod.workers.distillation import (
    LearningSettings,
    Near,
    Neighbour,
    Sample,
    StepFailedError,
    consolidate_window,
    distill,
    input_key,
    nearest,
    pick_samples,
    window_wait,
)
from grpod.workers.embeddings import Embedder
from grpod.workers.grouping import Combination, DomainSettings, Member, SourceReward, combine_rewards, readiness
from grpod.workers.ledger import CallRecord, Ledger, NotRecordedError
from grpod.workers.llm import LLM, LLMError
from grpod.workers.operations import Note, Operation

QUERIES = ("grpod.schema", "queries/distillation.sql")
BACKOFF_SECONDS = 60.0  # a failed distillation is tried again after this, doubling per attempt ...
BACKOFF_MAX_SECONDS = 3600.0  # ... up to this

log = structlog.stdlib.get_logger(__name__)


def _queries() -> Any:
    return load_queries(*QUERIES)


def _require_autocommit(conn: psycopg.Connection[Any]) -> None:
    if not conn.autocommit:
        raise ValueError("distillation needs an autocommit connection (it must not hold a transaction open)")


def backoff_seconds(attempts: int) -> float:
    """How long a distillation that failed ``attempts`` times waits before the sweep tries it again."""
    return float(min(BACKOFF_MAX_SECONDS, BACKOFF_SECONDS * 2.0 ** max(0, attempts - 1)))


def domain_settings(conn: psycopg.Connection[Any], domain: str) -> tuple[DomainSettings, LearningSettings]:
    row = conn.execute(_queries()["domain_settings"], {"domain": domain}).fetchone()
    if row is None:
        raise OperatorError(f"there is no domain {domain!r}; `grpod domains` lists them.")
    values = row[0] or {}
    return DomainSettings.from_json(values), LearningSettings.from_json(values)


def _notes_json(notes: Sequence[Note]) -> list[dict[str, str]]:
    return [note.to_json() for note in notes]


def _operations_json(operations: Sequence[Operation]) -> list[dict[str, Any]]:
    return [operation.to_json() for operation in operations]


def _recorder(conn: psycopg.Connection[Any], domain: str, distillation_id: int | None) -> Callable[[CallRecord], int]:
    """Store each LLM call as it is answered (concurrent summaries take turns on the connection)."""
    lock = threading.Lock()
    query = _queries()["insert_llm_call"]

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


def near_in(embedder: Embedder, library: Mapping[int, str]) -> Near:
    """The triage's ``near`` over ``library``: candidates and experiences embedded by ``embedder``."""

    def near(texts: Sequence[str]) -> list[Neighbour | None]:
        if not library:
            return [None] * len(texts)
        ids = sorted(library)
        vectors = embedder.embed([*texts, *(library[i] for i in ids)])
        return nearest(vectors[: len(texts)], vectors[len(texts) :], ids)

    return near


def near_as_recorded(recorded: Sequence[Mapping[str, Any]] | None) -> Near:
    """The triage's ``near`` of a replay: the neighbours the distillation recorded. A distillation
    recorded before the triage existed asked the operations step for every candidate: each is
    taken as close."""
    by_text = {str(item["candidate"]): item for item in recorded or ()}

    def near(texts: Sequence[str]) -> list[Neighbour | None]:
        found: list[Neighbour | None] = []
        for text in texts:
            if recorded is None:
                found.append((0, 0.0))
                continue
            item = by_text.get(text)
            if item is None:
                raise NotRecordedError(f"the recording holds no neighbour of the candidate {text[:80]!r}")
            found.append(None if item["id"] is None else (int(item["id"]), float(item["distance"])))
        return found

    return near


def _neighbours_json(candidates: Sequence[str], neighbours: Sequence[Neighbour | None]) -> list[dict[str, Any]]:
    return [
        {"candidate": text, "id": None if n is None else n[0], "distance": None if n is None else n[1]}
        for text, n in zip(candidates, neighbours, strict=True)
    ]


def recorded_calls(conn: psycopg.Connection[Any], distillation_id: int) -> list[CallRecord]:
    rows = conn.execute(_queries()["recorded_calls"], {"distillation_id": distillation_id}).fetchall()
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

RunStatus = Literal["distilled", "failed", "busy", "finished_before", "not_ready", "frozen"]


@dataclass(frozen=True)
class DistillationRun:
    status: RunStatus
    group_id: int
    domain: str | None = None
    id: int | None = None
    operations: list[Operation] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)
    candidates: list[str] = field(default_factory=list)
    calls: list[CallRecord] = field(default_factory=list)
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "group_id": self.group_id,
            "domain": self.domain,
            "status": self.status,
            "reason": self.reason or None,
            "candidates": self.candidates,
            "operations": _operations_json(self.operations),
            "notes": _notes_json(self.notes),
            "llm_calls": [call.summary() for call in self.calls],
        }


def _sample(row: Sequence[Any], combination: Combination) -> tuple[Sample, Member]:
    trace_id, query, trajectory, answer, sources, values, received, critiques, truths = row
    rewards = tuple(
        SourceReward(source=s, value=float(v), received_at=float(r))
        for s, v, r in zip(sources, values, received, strict=True)
    )
    value = combine_rewards(rewards, combination)
    assert value is not None  # the query joins rewards: every candidate has one
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


def distil_group(
    conn: psycopg.Connection[Any],
    llm: LLM,
    embedder: Embedder,
    group_id: int,
    *,
    require_marked: bool = True,
    on_ready: grouping_store.ReadyGroups | None = None,
) -> DistillationRun:
    """Distil one ready group: summaries, group advantage and operations, recorded in the ledger.

    Idempotent: the input (the picked traces with their rewards, and the parent version) keys the
    distillation; a second run of the same input finds it finished (or running elsewhere) and
    does nothing. ``require_marked=False`` (an operator naming the group) skips the check that the
    grouping stage marked it ready; the readiness rule itself still has to hold.
    """
    _require_autocommit(conn)
    queries = _queries()
    row = conn.execute(queries["group_to_distil"], {"group_id": group_id}).fetchone()
    if row is None:
        return DistillationRun("not_ready", group_id, reason=f"there is no group {group_id}")
    domain, settings_json, marked = str(row[0]), row[1] or {}, bool(row[2])
    if row[3]:
        return DistillationRun("frozen", group_id, domain, reason=f"domain {domain!r} is frozen")
    grouping, learning = DomainSettings.from_json(settings_json), LearningSettings.from_json(settings_json)
    if require_marked and not marked:
        return DistillationRun("not_ready", group_id, domain, reason="the group is not marked ready")
    pairs = [
        _sample(r, grouping.reward_combination)
        for r in conn.execute(queries["group_candidates"], {"group_id": group_id})
    ]
    verdict = readiness([member for _, member in pairs], grouping)
    if not verdict.ready:
        if marked:  # its traces were used meanwhile: it waits for new ones
            conn.execute(queries["unmark_ready"], {"group_id": group_id})
        return DistillationRun("not_ready", group_id, domain, reason=verdict.reason)
    samples = pick_samples([sample for sample, _ in pairs], grouping.group_size)
    parent = library_store.load(conn, domain, library_store.current_version(conn, domain))
    key = input_key(domain, group_id, samples, parent.version)
    locked = conn.execute(queries["lock_distillation"], {"input_key": key}).fetchone()
    if not (locked and locked[0]):
        return DistillationRun("busy", group_id, domain, reason="another process is distilling this input")
    try:
        claimed = conn.execute(
            queries["claim_distillation"],
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
            found = conn.execute(queries["find_distillation"], {"input_key": key}).fetchone()
            assert found is not None
            return DistillationRun(
                "finished_before", group_id, domain, int(found[0]), reason=f"this input was distilled ({found[1]})"
            )
        distillation_id, attempts = int(claimed[0]), int(claimed[1])
        bound = log.bind(distillation_id=distillation_id, group_id=group_id, domain=domain, attempt=attempts)
        ledger = Ledger(llm, _recorder(conn, domain, distillation_id), recorded_calls(conn, distillation_id))
        try:
            library = parent.texts()
            result = distill(ledger, learning, samples, library, distillation_id, near=near_in(embedder, library))
        except (StepFailedError, LLMError) as error:
            backoff = backoff_seconds(attempts)
            conn.execute(
                queries["fail_distillation"], {"id": distillation_id, "error": str(error), "backoff_seconds": backoff}
            )
            bound.warning("distillation failed; the sweep tries again", error=str(error), retry_in_seconds=backoff)
            return DistillationRun("failed", group_id, domain, distillation_id, calls=ledger.calls, reason=str(error))
        with conn.transaction():
            conn.execute(
                queries["finish_distillation"],
                {
                    "id": distillation_id,
                    "summaries": Jsonb(result.summaries),
                    "candidates": Jsonb(result.candidates),
                    "operations": Jsonb(_operations_json(result.operations)),
                    "notes": Jsonb(_notes_json(result.notes)),
                    "neighbours": Jsonb(_neighbours_json(result.candidates, result.neighbours)),
                },
            )
            conn.execute(
                queries["use_traces"],
                {"distillation_id": distillation_id, "trace_ids": [sample.trace_id for sample in samples]},
            )
            conn.execute(queries["unmark_ready"], {"group_id": group_id})
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
        conn.execute(queries["unlock_distillation"], {"input_key": key})
    grouping_store.check_readiness(conn, [group_id], on_ready)  # unused traces may make it ready again
    return DistillationRun(
        "distilled",
        group_id,
        domain,
        distillation_id,
        operations=result.operations,
        notes=result.notes,
        candidates=result.candidates,
        calls=ledger.calls,
    )


# A domain's update window ------------------------------------------------------------------------

WindowStatus = Literal["published", "no_change", "waiting", "busy", "empty", "frozen"]


@dataclass(frozen=True)
class WindowRun:
    status: WindowStatus
    domain: str
    version: int | None = None
    distillation_ids: list[int] = field(default_factory=list)
    operations: list[Operation] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)
    calls: list[CallRecord] = field(default_factory=list)
    wait_seconds: float = 0.0
    label: str | None = None  # the label the new version got (by the domain's publish policy)

    def to_json(self) -> dict[str, Any]:
        return {
            "domain": self.domain,
            "status": self.status,
            "version": self.version,
            "label": self.label,
            "distillation_ids": self.distillation_ids,
            "operations": _operations_json(self.operations),
            "notes": _notes_json(self.notes),
            "llm_calls": [call.summary() for call in self.calls],
        }


def run_window(conn: psycopg.Connection[Any], llm: LLM, domain: str, *, force: bool = False) -> WindowRun:
    """Publish the operations of the domain's waiting distillations as one new library version.

    Only when the window is due (``force``: now); one writer per domain at a time. The version
    and the distillations it applies are written in one transaction, so a retry after a crash
    finds them applied and makes no second version.
    """
    _require_autocommit(conn)
    queries = _queries()
    _, learning = domain_settings(conn, domain)
    if not library_store.lock_updates(conn, domain):
        return WindowRun("busy", domain)
    try:
        if library_store.library_state(conn, domain).frozen:
            return WindowRun("frozen", domain)
        rows = conn.execute(queries["waiting_distillations"], {"domain": domain}).fetchall()
        if not rows:
            return WindowRun("empty", domain)
        wait = window_wait([float(row[2]) for row in rows], learning)
        if wait > 0 and not force:
            return WindowRun("waiting", domain, wait_seconds=wait)
        ids = [int(row[0]) for row in rows]
        proposals = {int(row[0]): [Operation.from_json(op) for op in row[3] or ()] for row in rows}
        groups = {int(row[0]): row[1] for row in rows}
        traces = {int(row[0]): [str(sample["trace_id"]) for sample in row[4]] for row in rows}
        parent = library_store.load(conn, domain, library_store.current_version(conn, domain))
        ledger = Ledger(llm, _recorder(conn, domain, None))
        consolidated = consolidate_window(ledger, learning, proposals, parent.texts())

        def provenance(operation: Operation) -> Mapping[str, Any]:
            sources = list(operation.sources)
            return {
                "distillations": sources,
                "groups": sorted({groups[s] for s in sources if groups.get(s) is not None}),
                "traces": sorted({t for s in sources for t in traces.get(s, ())}),
            }

        version: int | None = None
        label: str | None = None
        reason = f"update window of {len(ids)} distillation(s): {', '.join(map(str, ids))}"
        with conn.transaction():
            if consolidated.operations:
                version = library_store.publish(
                    conn,
                    parent,
                    consolidated.operations,
                    consolidated.notes,
                    created_by="distillation",
                    reason=reason,
                    provenance=provenance,
                    distillation_ids=ids,
                    llm_call_ids=[call.id for call in ledger.calls if call.id is not None],
                )
                label = library_store.label_new_version(conn, domain, version, actor="distillation", reason=reason)
            conn.execute(queries["apply_distillations"], {"ids": ids, "version": version})
    finally:
        library_store.unlock_updates(conn, domain)
    log.info(
        "library version published" if version is not None else "update window changed nothing",
        domain=domain,
        version=version,
        parent=parent.version,
        distillations=ids,
        operations=len(consolidated.operations),
        consolidated_by_llm=consolidated.asked,
    )
    return WindowRun(
        "published" if version is not None else "no_change",
        domain,
        version,
        ids,
        consolidated.operations,
        consolidated.notes,
        ledger.calls,
        label=label,
    )


# Work lists for the sweep and the command line --------------------------------------------------


def groups_to_distil(
    conn: psycopg.Connection[Any], domain: str | None = None, *, min_age_seconds: float = 0.0, limit: int = 100
) -> list[tuple[int, str]]:
    """Ready groups to distil, oldest ready first; ``min_age_seconds`` leaves the ones whose task is
    most likely still queued to that task (the sweep looks for lost ones)."""
    rows = conn.execute(
        _queries()["groups_to_distil"], {"domain": domain, "limit": limit, "min_age_seconds": min_age_seconds}
    ).fetchall()
    return [(int(row[0]), str(row[1])) for row in rows]


def due_windows(conn: psycopg.Connection[Any]) -> list[tuple[str, float]]:
    """Domains with distillations waiting, and the seconds until each one's window closes."""
    due = []
    for domain, waited, count, settings in conn.execute(_queries()["due_windows"]).fetchall():
        learning = LearningSettings.from_json(settings or {})
        due.append((str(domain), window_wait([float(waited)] * int(count), learning)))
    return due


# Replay ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Replay:
    id: int
    domain: str
    operations: list[Operation]
    recorded_operations: list[Operation]
    calls: list[CallRecord]

    @property
    def same(self) -> bool:
        return _operations_json(self.operations) == _operations_json(self.recorded_operations)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "domain": self.domain,
            "replayed": True,
            "same": self.same,
            "operations": _operations_json(self.operations),
            "recorded_operations": _operations_json(self.recorded_operations),
            "llm_calls": [call.summary() for call in self.calls],
        }


def replay(conn: psycopg.Connection[Any], distillation_id: int) -> Replay:
    """Run a finished distillation again from its recorded LLM responses, with no LLM."""
    queries = _queries()
    with conn.cursor(row_factory=dict_row) as cursor:
        row = cursor.execute(queries["distillation"], {"id": distillation_id}).fetchone()
    if row is None:
        raise OperatorError(
            f"there is no distillation {distillation_id}; "
            "each run of `grpod distill DOMAIN` prints the ids of its distillations."
        )
    domain, status, sample_keys = str(row["domain"]), row["status"], row["samples"]
    if status not in ("distilled", "applied"):
        raise OperatorError(
            f"distillation {distillation_id} has not finished (it is {status}); only a finished one can be replayed."
        )
    contents = {
        str(r[0]): r
        for r in conn.execute(queries["trace_contents"], {"trace_ids": [key["trace_id"] for key in sample_keys]})
    }
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


# The command line's run: everything for one domain, now ---------------------------------------


@dataclass(frozen=True)
class DomainRun:
    domain: str
    grouped: grouping_store.GroupingRun
    distillations: list[DistillationRun]
    window: WindowRun | None

    def to_json(self) -> dict[str, Any]:
        """The run as ``grpod distill --json`` prints it: ``id``, ``operations`` and ``llm_calls`` are
        those of the (first) distillation; all of them are under ``distillations``."""
        first = next((run for run in self.distillations if run.id is not None), None)
        return {
            "domain": self.domain,
            "id": first.id if first is not None else None,
            "operations": first.to_json()["operations"] if first is not None else [],
            "llm_calls": first.to_json()["llm_calls"] if first is not None else [],
            "grouped": {"embedded": self.grouped.embedded, "new_groups": self.grouped.new_groups},
            "distillations": [run.to_json() for run in self.distillations],
            "published": self.window.to_json() if self.window is not None else None,
        }


def distil_domain(
    conn: psycopg.Connection[Any],
    llm: Callable[[], LLM],
    embedder: Callable[[], Embedder],
    domain: str,
    *,
    group_id: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> DomainRun:
    """Group the domain's waiting traces, distil its ready groups (or the one named), publish.

    ``llm`` and ``embedder`` are called only when there is something for them to do (loading a
    model takes a while).
    """
    _require_autocommit(conn)
    say = progress or (lambda _: None)
    if library_store.library_state(conn, domain).frozen:  # an unknown domain raises here too
        raise OperatorError(f"domain {domain!r} is frozen: it learns nothing until `grpod library unfreeze {domain}`.")
    if group_id is not None:
        row = conn.execute(_queries()["group_to_distil"], {"group_id": group_id}).fetchone()
        if row is None or row[0] != domain:
            raise OperatorError(f"domain {domain!r} has no group {group_id}; `grpod groups {domain}` lists them.")
    grouped = grouping_store.GroupingRun(0, 0, 0, [])
    while grouping_store.ungrouped(conn, domain, 1):
        run = grouping_store.group_domain(conn, embedder(), domain)
        if run.embedded == 0:
            break
        grouped = grouping_store.GroupingRun(
            grouped.embedded + run.embedded,
            grouped.placed + run.placed,
            grouped.new_groups + run.new_groups,
            grouped.ready + run.ready,
        )
        say(f"grouped {grouped.placed} traces")
    grouping_store.check_readiness(conn, grouping_store.unready_rewarded_groups(conn, domain=domain))
    ready = [gid for gid, _ in groups_to_distil(conn, domain, limit=10_000)] if group_id is None else []
    targets = [group_id] if group_id is not None else ready
    runs: list[DistillationRun] = []
    for number, target in enumerate(targets, start=1):
        say(f"distilling group {target} ({number} of {len(targets)})")
        run_ = distil_group(conn, llm(), embedder(), target, require_marked=group_id is None)
        if group_id is not None and run_.status == "not_ready":
            raise OperatorError(f"group {group_id} of {domain!r} cannot be distilled: {run_.reason}.")
        runs.append(run_)
    window = None
    if any(run_.status == "distilled" for run_ in runs) or due_for(conn, domain):
        say("publishing")
        window = run_window(conn, llm(), domain, force=True)
    return DomainRun(domain, grouped, runs, window)


def due_for(conn: psycopg.Connection[Any], domain: str) -> bool:
    """Whether distillations of the domain wait to be published."""
    return any(name == domain for name, _ in due_windows(conn))
