"""Maintenance stage, the sweep: lost and stalled work, trace expiry, retention, pruning.

The sweep is a list of steps. The per-domain steps of one domain run together in a transaction
of their own, with the domain's upkeep settings; a domain whose steps fail is rolled back, logged
and reported, and holds back no other. Then the deployment's steps run, each in its own
transaction. A step returns what it found (counts, or ids); the caller (beat's task, or
`grpod maintenance`) hands the ready groups it names to the distillation stage.

- lost work: distillations left running that no live process holds (stalled) become failed and
  due now, so they can be taken again; a stalled or failed one whose traces another distillation
  has used since (the task ran again after the library moved on, so with another input) is
  superseded; ready
  groups whose distillation never ran (ready for ``LOST_TASK_SECONDS`` with none running) and the
  groups of stalled distillations are named to be sent again.
- expiry: a trace with no reward ``trace_ttl_seconds`` after it arrived is expired; it never
  counts toward its group's readiness again (a late reward is stored, and still counts for its
  library version's reward record, but does not make the trace learnable).
- retention: ``retention_seconds`` after a distillation was applied, the trajectories of the
  traces it used are dropped, and so are the request bodies of LLM calls no resume or replay can
  need; ids, queries, answers, rewards, responses and the SHA-256 of what was dropped stay.
- group merges: groups whose members have come within the threshold of another's centroid merge,
  and a group short of G for ``group_merge_wait_seconds`` joins its nearest within the relaxed
  threshold (``grouping_store.merge_groups``); survivors that became ready are named to be sent.
  It runs after the domain's transaction, in one of its own under the domain's grouping lock.
- pruning: rejected events and heartbeats older than their deployment's periods, and slot claims
  older than ``slot_claims.CLAIM_RETENTION_SECONDS``.
- counts: the rewards whose trace a concurrent batch stored are counted for its domain, and the
  count deltas that ingest and the steps above appended are folded into ``domain_counts``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
import structlog

from grpod.schema.sql import load_queries
from grpod.workers import distillation_store, domain_counts, grouping_store, slot_claims
from grpod.workers.upkeep_settings import UpkeepSettings

QUERIES = ("grpod.schema", "queries/maintenance.sql")
LOST_TASK_SECONDS = 600.0  # a ready group older than this with no distillation running lost its task
# At most this many rows of each kind per domain and sweep: the first sweep over months of backlog
# stays a short transaction, and the next sweep goes on where it stopped.
BATCH = 10_000
STALLED = "stalled: it was left running and no live process held it (its worker died or lost its connection)"
SUPERSEDED = "superseded: another distillation has used its traces since (its task ran again on a newer library)"

log = structlog.stdlib.get_logger(__name__)

Found = Mapping[str, int | list[int]]  # what a step found: counts, or ids
DomainStep = Callable[[psycopg.Connection[Any], str, UpkeepSettings], Found]


@dataclass(frozen=True)
class DeploymentUpkeep:
    """The deployment's own periods (settings GRPOD_REJECTED_RETENTION_SECONDS and
    GRPOD_HEARTBEAT_RETENTION_SECONDS)."""

    rejected_retention_seconds: int = 30 * 86_400
    heartbeat_retention_seconds: int = 7 * 86_400


DeploymentStep = Callable[[psycopg.Connection[Any], DeploymentUpkeep], Found]


def _queries() -> Any:
    return load_queries(*QUERIES)


# Per-domain steps ------------------------------------------------------------------------------


def lost_work(conn: psycopg.Connection[Any], domain: str, upkeep: UpkeepSettings) -> Found:
    """Stalled distillations made take-able again; the ready groups to send to the distillation stage."""
    rows = conn.execute(
        _queries()["take_over_stalled_distillations"],
        {
            "domain": domain,
            "max_attempts": distillation_store.MAX_ATTEMPTS,
            "error": STALLED,
            "superseded_error": SUPERSEDED,
        },
    ).fetchall()
    for row in rows:
        what = "stalled distillation taken over" if row[5] else "failed distillation"
        outcome = "; superseded" if row[4] else "; it failed for good" if row[3] else "; it can be taken again"
        log.warning(
            what + outcome,
            distillation_id=int(row[0]),
            group_id=row[1],
            attempts=int(row[2]),
            domain=domain,
        )
    send = {int(row[1]) for row in rows if row[1] is not None and not row[3]}  # not a superseded one either
    send |= {
        group_id
        for group_id, _ in distillation_store.groups_to_distill(conn, domain, min_age_seconds=LOST_TASK_SECONDS)
    }
    return {
        "stalled_distillations": sorted(int(row[0]) for row in rows if row[5]),
        "failed_for_good": sorted(int(row[0]) for row in rows if row[3] and not row[4]),
        "superseded": sorted(int(row[0]) for row in rows if row[4]),
        "groups_to_distill": sorted(send),
    }


def expire_traces(conn: psycopg.Connection[Any], domain: str, upkeep: UpkeepSettings) -> Found:
    """Traces with no reward ``trace_ttl_seconds`` after they arrived no longer count toward readiness."""
    named = _queries()
    # What concurrent batches left listed as awaiting though rewarded is no longer unrewarded either.
    rewarded = conn.execute(named["forget_rewarded_awaiting"], {"domain": domain}).rowcount
    if rewarded:
        domain_counts.add_deltas(conn, {domain: domain_counts.CountDelta(unrewarded=-rewarded)})
    expired = conn.execute(
        named["expire_traces"], {"domain": domain, "ttl_seconds": upkeep.trace_ttl_seconds, "limit": BATCH}
    ).rowcount
    return {"expired_traces": expired}


def retention(conn: psycopg.Connection[Any], domain: str, upkeep: UpkeepSettings) -> Found:
    """Drop what was learned from after ``retention_seconds``; keep what provenance needs."""
    values = {"domain": domain, "retention_seconds": upkeep.retention_seconds, "limit": BATCH}
    named = _queries()
    return {
        "trajectories_dropped": conn.execute(named["drop_learned_trajectories"], values).rowcount,
        "request_bodies_dropped": conn.execute(named["drop_request_bodies"], values).rowcount,
    }


# Each domain's steps, in order. One more is one more line here.
DOMAIN_STEPS: tuple[tuple[str, DomainStep], ...] = (
    ("lost_work", lost_work),
    ("expiry", expire_traces),
    ("retention", retention),
)


def group_merges(conn: psycopg.Connection[Any], domain: str) -> Found:
    """Merge groups that never reach G into their neighbours; the survivors that became ready."""
    ready: list[int] = []
    merged = grouping_store.merge_groups(conn, domain, on_ready=lambda groups: ready.extend(g for g, _ in groups))
    return {"merged_groups": len(merged.merges), "traces_moved": merged.traces_moved, "groups_to_distill": ready}


# Deployment steps ------------------------------------------------------------------------------


def prune(conn: psycopg.Connection[Any], deployment: DeploymentUpkeep) -> Found:
    """Rejected events, heartbeats and slot claims older than their periods."""
    named = _queries()
    rejected = conn.execute(
        named["prune_rejected"], {"seconds": deployment.rejected_retention_seconds, "limit": BATCH}
    ).rowcount
    heartbeats = conn.execute(named["prune_heartbeats"], {"seconds": deployment.heartbeat_retention_seconds}).rowcount
    return {"rejected_events": rejected, "heartbeats": heartbeats, "slot_claims": slot_claims.prune(conn)}


def counts(conn: psycopg.Connection[Any], deployment: DeploymentUpkeep) -> Found:
    """Count the rewards whose trace a concurrent batch stored; fold the deltas into each domain's counts."""
    return {
        "rewards_counted_late": domain_counts.count_unmatched_rewards(conn),
        "domains_folded": domain_counts.fold(conn),
    }


DEPLOYMENT_STEPS: tuple[tuple[str, DeploymentStep], ...] = (("pruning", prune), ("counts", counts))


# The sweep -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepReport:
    step: str
    domain: str | None  # None: a deployment step
    found: Found = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True)
class SweepReport:
    steps: list[StepReport]

    @property
    def groups_to_distill(self) -> list[int]:
        return sorted({group_id for report in self.steps for group_id in _ids(report.found.get("groups_to_distill"))})

    @property
    def failed(self) -> list[StepReport]:
        return [report for report in self.steps if report.error is not None]

    def to_json(self) -> dict[str, Any]:
        domains: dict[str, dict[str, Any]] = {}
        deployment: dict[str, Any] = {}
        for report in self.steps:
            found: Any = dict(report.found) if report.error is None else {"error": report.error}
            if report.domain is None:
                deployment[report.step] = found
            elif report.error is not None:
                domains[report.domain] = found  # the domain's transaction was rolled back as a whole
            else:
                domains.setdefault(report.domain, {})[report.step] = found
        return {"domains": domains, "deployment": deployment, "errors": len(self.failed)}


def _ids(value: int | list[int] | None) -> list[int]:
    return value if isinstance(value, list) else []


def summary(found: Found) -> dict[str, int]:
    """Counts only: an id list counts its ids (for logs and tables)."""
    return {key: len(value) if isinstance(value, list) else value for key, value in found.items()}


def domains_to_sweep(conn: psycopg.Connection[Any]) -> list[tuple[str, Mapping[str, Any]]]:
    return [(str(row[0]), row[1] or {}) for row in conn.execute(_queries()["domains_to_sweep"]).fetchall()]


def sweep(
    conn: psycopg.Connection[Any],
    deployment: DeploymentUpkeep,
    *,
    domain_steps: Sequence[tuple[str, DomainStep]] = DOMAIN_STEPS,
    deployment_steps: Sequence[tuple[str, DeploymentStep]] = DEPLOYMENT_STEPS,
    merge_groups: bool = True,
) -> SweepReport:
    """Run every step: each domain's in a transaction of its own, then each deployment step in its own."""
    distillation_store.require_autocommit(conn)  # each transaction below must be a real one
    reports: list[StepReport] = []
    for domain, settings in domains_to_sweep(conn):
        done: list[StepReport] = []
        step = ""
        try:
            with conn.transaction():
                upkeep = UpkeepSettings.from_json(settings)
                for step, run in domain_steps:
                    done.append(StepReport(step, domain, run(conn, domain, upkeep)))
        except Exception as error:
            if conn.broken:  # the database went away: the whole sweep is retried, not each domain
                raise
            log.exception("a maintenance step failed; the domain's sweep is rolled back", domain=domain, step=step)
            reports.append(StepReport(step, domain, error=_sentence(error)))
            continue
        reports.extend(done)
        if merge_groups:
            try:  # a transaction of its own: each ready mark commits before the group is handed on
                reports.append(StepReport("group_merges", domain, group_merges(conn, domain)))
            except Exception as error:
                if conn.broken:
                    raise
                log.exception("merging a domain's groups failed", domain=domain)
                reports.append(StepReport("group_merges", domain, error=_sentence(error)))
    for step, deployment_run in deployment_steps:
        try:
            with conn.transaction():
                reports.append(StepReport(step, None, deployment_run(conn, deployment)))
        except Exception as error:
            if conn.broken:
                raise
            log.exception("a maintenance step failed", step=step)
            reports.append(StepReport(step, None, error=_sentence(error)))
    for report in reports:
        counts = summary(report.found)
        if any(counts.values()):
            log.info("maintenance step", step=report.step, domain=report.domain, **counts)
    return SweepReport(reports)


def _sentence(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
