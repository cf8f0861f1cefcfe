"""Library consolidation, the database shell: gather the evidence, ask for the merges, publish.

A consolidation is a normal library version (``created_by`` consolidation): the domain's publish
policy labels it, and pin, freeze, history, diff and rollback apply to it. Like an update window
it waits on the LLM with no lock held, then takes the domain's update lock to publish and checks
that the library it read is still current; if not, it consolidates again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import psycopg
import structlog

from grpod.schema.library import block_tokens
from grpod.schema.sql import load_queries
from grpod.workers import library_store
from grpod.workers.consolidation import (
    Merge,
    Plan,
    closeness,
    merge_cluster,
    near_duplicate_clusters,
    plan,
    similarities,
)
from grpod.workers.distillation_store import domain_settings, notes_json, recorder, require_autocommit
from grpod.workers.embeddings import Embedder
from grpod.workers.evidence import Evidence, Outcome, evidence
from grpod.workers.ledger import CallRecord, Ledger
from grpod.workers.library import LibraryVersion
from grpod.workers.library_vectors import LibraryVectors
from grpod.workers.llm import LLM
from grpod.workers.operations import Note
from grpod.workers.upkeep_settings import UpkeepSettings

log = structlog.stdlib.get_logger(__name__)

ROUNDS = 3  # consolidations of one run when the library keeps changing under it
Status = Literal["published", "no_change", "empty", "frozen", "busy"]


def _queries() -> Any:
    return load_queries("grpod.schema", "queries/consolidation.sql")


@dataclass(frozen=True)
class ConsolidationRun:
    domain: str
    status: Status
    parent: int | None = None
    version: int | None = None
    label: str | None = None
    merges: list[Merge] = field(default_factory=list)
    retired: list[dict[str, Any]] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)
    calls: list[CallRecord] = field(default_factory=list)
    experiences: tuple[int, int] = (0, 0)  # before, after
    prompt_tokens: tuple[int, int] = (0, 0)  # the whole block before, after
    rescored: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "domain": self.domain,
            "status": self.status,
            "parent": self.parent,
            "version": self.version,
            "label": self.label,
            "experiences": {"before": self.experiences[0], "after": self.experiences[1]},
            "prompt_tokens": {"before": self.prompt_tokens[0], "after": self.prompt_tokens[1]},
            "merged": [merge.to_json() for merge in self.merges],
            "retired": self.retired,
            "rescored": self.rescored,
            "notes": notes_json(self.notes),
            "llm_calls": [call.summary() for call in self.calls],
        }


def gather_evidence(
    conn: psycopg.Connection[Any],
    domain: str,
    parent: LibraryVersion,
    close: Mapping[int, float],
    close_distance: float,
    now: datetime,
) -> dict[int, Evidence]:
    """Each experience's evidence: its versions' reward record against their parents, when a
    distillation last confirmed or changed it, and its closeness to the others."""
    named = _queries()
    grouping, _, _ = domain_settings(conn, domain)
    made = {int(row[0]): (int(row[1]), row[2]) for row in conn.execute(named["version_parents"], {"domain": domain})}
    parents = {version: parent_version for version, (parent_version, _) in made.items()}
    versions_of = {
        i: sorted({int(entry["version"]) for entry in e.provenance if "version" in entry})
        for i, e in parent.experiences.items()
    }
    wanted = sorted(
        {v for vs in versions_of.values() for v in vs}
        | {parents[v] for vs in versions_of.values() for v in vs if v in parents}
    )
    rewards = library_store.version_rewards(conn, domain, wanted, grouping.reward_combination) if wanted else {}
    outcomes = {
        version: Outcome(sum(r.value for r in values) / len(values), len(values))
        for version, values in rewards.items()
        if values
    }
    confirmed: dict[int, datetime] = {
        int(row[0]): row[1]
        for row in conn.execute(named["confirmations"], {"domain": domain, "close_distance": close_distance})
    }
    result = {}
    for experience_id, versions in versions_of.items():
        changed = [made[v][1] for v in versions if v in made]
        moments = [m for m in (*changed, confirmed.get(experience_id)) if m is not None]
        result[experience_id] = evidence(
            experience_id, versions, outcomes, parents, max(moments) if moments else None, close[experience_id], now
        )
    return result


def consolidate(
    conn: psycopg.Connection[Any],
    llm: LLM,
    embedder: Embedder,
    domain: str,
    *,
    now: datetime | None = None,
) -> ConsolidationRun:
    """Merge the domain's near-duplicate experiences, retire the least useful beyond its budgets,
    and score the rest: one new version when anything changed."""
    require_autocommit(conn)
    _, learning, _ = domain_settings(conn, domain)
    for _ in range(ROUNDS):
        state = library_store.library_state(conn, domain)
        if state.frozen:
            return ConsolidationRun(domain, "frozen")
        upkeep = UpkeepSettings.from_json(state.settings)
        parent = library_store.load(conn, domain, library_store.current_version(conn, domain))
        library = parent.texts()
        size = (len(library), block_tokens(library))
        if not library:
            return ConsolidationRun(domain, "empty", parent.version)
        ids = sorted(library)
        similarity = similarities(LibraryVectors(conn, embedder, domain, library, learning.context_tokens).vectors())
        ledger = Ledger(llm, recorder(conn, domain, None))
        merges: list[Merge] = []
        notes: list[Note] = []
        for cluster in near_duplicate_clusters(ids, similarity, upkeep.merge_distance):
            merged = merge_cluster(ledger, learning, cluster, library)
            if isinstance(merged, Merge):
                merges.append(merged)
            else:
                notes.append(merged)
        close = closeness(ids, similarity, [merge.cluster for merge in merges])
        scored = gather_evidence(conn, domain, parent, close, learning.close_distance, now or datetime.now(UTC))
        decided = plan(library, {i: e.usefulness for i, e in parent.experiences.items()}, scored, merges, upkeep)
        if not decided.changes:
            return ConsolidationRun(
                domain,
                "no_change",
                parent.version,
                notes=notes,
                calls=ledger.calls,
                experiences=(size[0], size[0]),
                prompt_tokens=(size[1], size[1]),
            )
        if not library_store.lock_updates(conn, domain):
            return ConsolidationRun(domain, "busy", parent.version, calls=ledger.calls)
        try:
            if library_store.current_version(conn, domain) != parent.version:
                log.info("the library changed during its consolidation; consolidating again", domain=domain)
                continue
            return _publish(conn, domain, parent, decided, notes, ledger, size)
        finally:
            library_store.unlock_updates(conn, domain)
    return ConsolidationRun(domain, "busy")


def _publish(
    conn: psycopg.Connection[Any],
    domain: str,
    parent: LibraryVersion,
    decided: Plan,
    notes: list[Note],
    ledger: Ledger,
    size: tuple[int, int],
) -> ConsolidationRun:
    parts = []
    if decided.merges:
        parts.append(f"merged {len(decided.merges)} cluster(s) of near-duplicates")
    if decided.retired:
        parts.append(f"retired {len(decided.retired)} least useful")
    if decided.rescored:
        parts.append(f"scored {decided.rescored}")
    reason = "consolidation: " + ", ".join(parts)
    by_keeper = {merge.keeper: merge for merge in decided.merges}

    def provenance(operation: Any) -> Mapping[str, Any]:
        merge = by_keeper.get(operation.experience_id)
        return {"consolidation": True, "merged": list(merge.cluster)} if merge is not None else {"consolidation": True}

    with conn.transaction():
        version = library_store.publish(
            conn,
            parent,
            decided.operations,
            notes,
            created_by="consolidation",
            reason=reason,
            provenance=provenance,
            llm_call_ids=[call.id for call in ledger.calls if call.id is not None],
            usefulness=decided.usefulness,
        )
        label = library_store.label_new_version(conn, domain, version, actor="consolidation", reason=reason)
    after = library_store.load(conn, domain, version).texts()
    log.info(
        "library consolidated",
        domain=domain,
        version=version,
        parent=parent.version,
        merged=len(decided.merges),
        retired=len(decided.retired),
        experiences=len(after),
    )
    return ConsolidationRun(
        domain,
        "published",
        parent.version,
        version,
        label,
        decided.merges,
        [r.to_json() for r in decided.retired],
        notes,
        ledger.calls,
        (size[0], len(after)),
        (size[1], block_tokens(after)),
        decided.rescored,
    )


def domains_to_consolidate(conn: psycopg.Connection[Any]) -> list[str]:
    return [str(row[0]) for row in conn.execute(_queries()["domains_with_libraries"])]
