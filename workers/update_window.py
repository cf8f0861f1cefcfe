"""Distillation stage, a domain's update window: publish its waiting distillations as one version.

Once the oldest distillation of a domain has waited ``update_window_seconds``, or
``update_window_groups`` are waiting, one writer per domain (a session advisory lock) consolidates
their operations and appends one library version; the version and the distillations it applies
are written in one transaction, so a retry after a crash finds them applied and makes no second
version.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import psycopg
import structlog

from grpod.workers import library_store
from grpod.workers.distillation import (
    Consolidated,
    LearningSettings,
    consolidate_window,
    only_named,
    window_wait,
)
from grpod.workers.distillation_store import (
    domain_settings,
    notes_json,
    operations_json,
    queries,
    recorder,
    require_autocommit,
)
from grpod.workers.ledger import CallRecord, Ledger
from grpod.workers.library import LibraryVersion, removal_refusal
from grpod.workers.llm import LLM
from grpod.workers.operations import Note, Operation
from grpod.workers.promotion import PublishSettings

log = structlog.stdlib.get_logger(__name__)


WINDOW_ROUNDS = 3  # consolidations of one window when the library keeps changing under it
WindowStatus = Literal["published", "refused", "no_change", "waiting", "busy", "empty", "frozen"]


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
    refused: str | None = None  # why the guard kept the new version from any label

    def to_json(self) -> dict[str, Any]:
        return {
            "domain": self.domain,
            "status": self.status,
            "version": self.version,
            "label": self.label,
            "refused": self.refused,
            "distillation_ids": self.distillation_ids,
            "operations": operations_json(self.operations),
            "notes": notes_json(self.notes),
            "llm_calls": [call.summary() for call in self.calls],
        }


def run_window(conn: psycopg.Connection[Any], llm: LLM, domain: str, *, force: bool = False) -> WindowRun:
    """Publish the operations of the domain's waiting distillations as one new library version.

    Only when the window is due (``force``: now); one writer per domain at a time. The version
    and the distillations it applies are written in one transaction, so a retry after a crash
    finds them applied and makes no second version.
    """
    require_autocommit(conn)
    named = queries()
    _, learning, publishing = domain_settings(conn, domain)
    for _ in range(WINDOW_ROUNDS):
        # Read and consolidate with no lock held: the consolidation waits on an LLM, and an
        # operator's rollback must never wait behind it. The lock is taken to publish, and what the
        # LLM saw is checked to hold still; if it does not, the window is consolidated again.
        if library_store.library_state(conn, domain).frozen:
            return WindowRun("frozen", domain)
        rows = conn.execute(named["waiting_distillations"], {"domain": domain}).fetchall()
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
        ledger = Ledger(llm, recorder(conn, domain, None))
        library = parent.texts()
        # The consolidation may only change what the proposals named: its prompt shows just those.
        consolidated = consolidate_window(ledger, learning, proposals, library, only_named(library))
        if not library_store.lock_updates(conn, domain):
            return WindowRun("busy", domain)
        try:
            still = [int(row[0]) for row in conn.execute(named["waiting_distillations"], {"domain": domain})]
            if still != ids or library_store.current_version(conn, domain) != parent.version:
                log.info("the library or the window changed during its consolidation; consolidating again")
                continue
            published = _publish(conn, domain, parent, ids, groups, traces, consolidated, ledger, publishing)
        finally:
            library_store.unlock_updates(conn, domain)
        return published
    return WindowRun("busy", domain)  # changed under it every round: the sweep sends it again


def _publish(
    conn: psycopg.Connection[Any],
    domain: str,
    parent: LibraryVersion,
    ids: list[int],
    groups: Mapping[int, Any],
    traces: Mapping[int, list[str]],
    consolidated: Consolidated,
    ledger: Ledger,
    publishing: PublishSettings,
) -> WindowRun:
    """The window's one version and its distillations, in one transaction, under the domain's lock."""
    named = queries()

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
    refused = removal_refusal(
        parent.experiences,
        consolidated.operations,
        publishing.max_deletes_per_version,
        publishing.max_removed_fraction,
    )
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
            if refused is None:
                label = library_store.label_new_version(conn, domain, version, actor="distillation", reason=reason)
            else:
                library_store.refuse_new_version(conn, domain, version, reason=f"refused: {refused}")
        conn.execute(
            named["apply_distillations"],
            {"ids": ids, "version": version, "status": "applied" if refused is None else "refused"},
        )
    if refused is not None:
        log.warning("library version refused by the guard", domain=domain, version=version, why=refused)
    log.info(
        "library version published" if version is not None else "update window changed nothing",
        domain=domain,
        version=version,
        parent=parent.version,
        distillations=ids,
        operations=len(consolidated.operations),
        consolidated_by_llm=consolidated.asked,
    )
    status: WindowStatus = "no_change" if version is None else "published" if refused is None else "refused"
    return WindowRun(
        status,
        domain,
        version,
        ids,
        consolidated.operations,
        consolidated.notes,
        ledger.calls,
        label=label,
        refused=refused,
    )


def due_windows(conn: psycopg.Connection[Any]) -> list[tuple[str, float]]:
    """Domains with distillations waiting, and the seconds until each one's window closes."""
    due = []
    for domain, waited, count, settings in conn.execute(queries()["due_windows"]).fetchall():
        learning = LearningSettings.from_json(settings or {})
        due.append((str(domain), window_wait([float(waited)] * int(count), learning)))
    return due


def due_for(conn: psycopg.Connection[Any], domain: str) -> bool:
    """Whether distillations of the domain wait to be published."""
    return any(name == domain for name, _ in due_windows(conn))
