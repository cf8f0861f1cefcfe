"""`grpod distill DOMAIN` (and the demo): everything for one domain, now, in this process.

Group the domain's waiting traces, distill its ready groups (or the one named), publish the
window: what the workers do over time, done at once for an operator.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg

from grpod.schema.errors import OperatorError
from grpod.workers import distillation_store, grouping_store, library_store
from grpod.workers.distillation_store import (
    DistillationRun,
    distill_group,
    groups_to_distill,
    queries,
    require_autocommit,
)
from grpod.workers.embeddings import Embedder
from grpod.workers.llm import LLM
from grpod.workers.update_window import WindowRun, due_for, run_window


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


def distill_domain(
    conn: psycopg.Connection[Any],
    llm: Callable[[], LLM],
    embedder: Callable[[], Embedder],
    domain: str,
    *,
    group_id: int | None = None,
    retry_failed: bool = False,
    progress: Callable[[str], None] | None = None,
) -> DomainRun:
    """Group the domain's waiting traces, distill its ready groups (or the one named), publish.

    ``llm`` and ``embedder`` are called only when there is something for them to do (loading a
    model takes a while).
    """
    require_autocommit(conn)
    say = progress or (lambda _: None)
    if library_store.library_state(conn, domain).frozen:  # an unknown domain raises here too
        raise OperatorError(f"domain {domain!r} is frozen: it learns nothing until `grpod library unfreeze {domain}`.")
    if group_id is not None:
        row = conn.execute(queries()["group_to_distill"], {"group_id": group_id}).fetchone()
        if row is None or row[0] != domain:
            raise OperatorError(f"domain {domain!r} has no group {group_id}; `grpod groups {domain}` lists them.")
    if retry_failed:  # the distillations that failed for good get their attempts again, now
        say(f"retrying {len(distillation_store.retry_failed(conn, domain))} failed group(s)")
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
    ready = [gid for gid, _ in groups_to_distill(conn, domain, limit=10_000)] if group_id is None else []
    targets = [group_id] if group_id is not None else ready
    runs: list[DistillationRun] = []
    for number, target in enumerate(targets, start=1):
        say(f"distilling group {target} ({number} of {len(targets)})")
        run_ = distill_group(conn, llm(), embedder(), target, require_marked=group_id is None)
        if group_id is not None and run_.status == "not_ready":
            raise OperatorError(f"group {group_id} of {domain!r} cannot be distilled: {run_.reason}.")
        runs.append(run_)
    window = None
    if any(run_.status == "distilled" for run_ in runs) or due_for(conn, domain):
        say("publishing")
        window = run_window(conn, llm(), domain, force=True)
    return DomainRun(domain, grouped, runs, window)
