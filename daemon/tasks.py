"""Thin Celery tasks around the pipeline stages: load, call the plain function, store.

Task names are ``grpod.<stage>.<name>``; the stage picks the queue. Every task
may run more than once (at-least-once delivery), so each is idempotent.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar

import psycopg
import structlog
from celery import Task, shared_task

from grpod.daemon import resources
from grpod.workers import maintenance, slot_claims
from grpod.workers.embeddings import EmbeddingError

log = structlog.stdlib.get_logger(__name__)
LOST_TASK_SECONDS = 600.0  # a ready group older than this with no distillation lost its task
BUSY_RETRY_SECONDS = 5.0  # a busy update window is looked at again after this, doubling ...
BUSY_RESENDS = 5  # ... this many times; then the distillation sweep (every minute) finds it due
# What a task retries on (with the app's bounded, jittered backoff: GRPOD_TASK_MAX_RETRIES and
# GRPOD_RETRY_BACKOFF_MAX): the database or the broker away for a while. Anything else is a bug
# or bad data, which retrying does not mend; the sweeps re-derive the work from the tables anyway.
TRANSIENT: tuple[type[BaseException], ...] = (
    psycopg.OperationalError,
    ConnectionError,
    TimeoutError,
    EmbeddingError,  # an embeddings endpoint away (a query it refuses is set aside, never raised)
)


@contextmanager
def _autocommit() -> Iterator[psycopg.Connection[Any]]:
    """A connection of its own for a long task: it waits on an LLM without holding a transaction
    or a pooled connection, and its session locks go when it closes (or the process dies)."""
    from grpod.daemon.database import APPLICATION_NAME

    settings = resources.settings()
    # psycopg's own error when the database is away (not the command line's sentence): a task retries it.
    with psycopg.connect(
        resources.database_url(),
        autocommit=True,
        connect_timeout=settings.database_connect_timeout,
        application_name=APPLICATION_NAME,
    ) as conn:
        # Its session holds the distillation's lock: the server must notice a dead host soon.
        resources.ask_for_keepalives(conn, seconds=settings.database_keepalive_seconds)
        yield conn


P = ParamSpec("P")
R = TypeVar("R")


def one_effect_per_slot(run: Callable[P, R]) -> Callable[P, R | dict[str, str]]:
    """Exactly one effect per scheduled slot, for a task with an effect (put it under ``@shared_task``
    and give the task a ``slot: str | None = None`` argument). Beat sends ``slot`` (the time slot,
    ISO 8601); the run acts only when its Celery task id holds the claim of (task, slot): a new
    claim, or its own again (a retry, a redelivery after its worker died). A copy of the slot from
    a second beat logs and returns ``{"skipped": ...}``. Without a slot (sent by code or by hand)
    nothing is claimed and the run acts."""

    @functools.wraps(run)
    def claimed(*args: P.args, **kwargs: P.kwargs) -> R | dict[str, str]:
        slot = kwargs.get("slot")
        if slot is None:
            return run(*args, **kwargs)
        from celery._state import get_current_task

        task = get_current_task()
        name = str(task.name) if task is not None else f"{run.__module__}.{run.__qualname__}"
        # Called as a plain function (no task): an id of its own, so it acts only on a free slot.
        task_id = str(task.request.id) if task is not None and task.request.id else f"direct-{uuid.uuid4()}"
        try:
            moment = datetime.fromisoformat(str(slot))
        except ValueError:
            log.error("the slot is not an ISO 8601 time; nothing done", task=name, slot=slot)
            return {"skipped": f"slot {slot!r} is not an ISO 8601 time"}
        moment = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
        with resources.pool().connection() as conn:
            mine = slot_claims.claim(conn, name, moment, task_id)
        if not mine:
            log.info("the slot is claimed by another task; nothing to do", task=name, slot=slot)
            return {"skipped": f"slot {slot} of {name} is claimed by another task"}
        structlog.contextvars.bind_contextvars(slot=slot)
        result = run(*args, **kwargs)
        with resources.pool().connection() as conn:
            slot_claims.finish(conn, name, moment, task_id)
        return result

    return claimed


@shared_task(name="grpod.maintenance.heartbeat", bind=True, autoretry_for=TRANSIENT)
def heartbeat(self: Task[Any, Any], beat: dict[str, Any]) -> None:
    """Record that beat scheduled this and that a worker ran it."""
    worker = maintenance.this_process("worker", started_at=maintenance.PROCESS_STARTED_AT)
    scheduler = maintenance.Heartbeat(
        role="beat",
        hostname=str(beat["hostname"]),
        pid=int(beat["pid"]),
        version=str(beat["version"]),
        started_at=datetime.fromisoformat(str(beat["started_at"])),
    )
    with resources.pool().connection() as conn:
        maintenance.record_heartbeats(conn, [worker, scheduler])
    log.info("heartbeat", beat_hostname=scheduler.hostname)


@shared_task(name="grpod.maintenance.expire_rewards", autoretry_for=TRANSIENT)
@one_effect_per_slot
def expire_rewards(slot: str | None = None) -> int:
    """Rewards that waited longer than GRPOD_REWARD_TTL_SECONDS for their trace become rejected events."""
    settings = resources.settings()
    with resources.pool().connection() as conn:
        expired = maintenance.expire_orphan_rewards(conn, settings.reward_ttl_seconds)
    if expired:
        log.warning("rewards expired without their trace", count=expired, ttl_seconds=settings.reward_ttl_seconds)
    return expired


def _hand_off_ready(groups: list[tuple[int, str]]) -> None:
    """Groups just became ready: each gets a distillation task (the sweep finds any that is lost)."""
    for group_id, domain in groups:
        log.info("group ready for distillation", group_id=group_id, domain=domain)
        distill_group.apply_async(args=[group_id])


@shared_task(name="grpod.group.assign_traces", bind=True, autoretry_for=TRANSIENT)
def assign_traces(self: Task[Any, Any], domain: str, trace_ids: list[str] | None = None) -> dict[str, int]:
    """Embed and group a domain's waiting traces (these ones, or the oldest waiting)."""
    from grpod.daemon.ports import process_embedder
    from grpod.workers import grouping_store

    with resources.pool().connection() as conn:
        run = grouping_store.group_domain(
            conn, process_embedder(), domain, trace_ids=trace_ids, on_ready=_hand_off_ready
        )
    if run.placed:
        log.info("traces grouped", placed=run.placed, new_groups=run.new_groups, ready=len(run.ready))
    return {"embedded": run.embedded, "placed": run.placed, "new_groups": run.new_groups}


@shared_task(name="grpod.group.check_readiness", autoretry_for=TRANSIENT)
def check_readiness(trace_ids: list[str]) -> int:
    """Rewards arrived for these traces: re-check their groups' readiness."""
    from grpod.workers import grouping_store

    with resources.pool().connection() as conn:
        verdicts = grouping_store.check_readiness(
            conn, grouping_store.groups_of(conn, trace_ids), on_ready=_hand_off_ready
        )
    return sum(verdict.ready for verdict in verdicts.values())


@shared_task(name="grpod.group.sweep", autoretry_for=TRANSIENT)
@one_effect_per_slot
def sweep_grouping(slot: str | None = None) -> int:
    """Beat's safety net: group traces whose task was lost and re-check groups that got rewards."""
    from grpod.daemon.ports import process_embedder
    from grpod.workers import grouping_store

    placed = 0
    with resources.pool().connection() as conn:
        domains = grouping_store.domains_with_ungrouped(conn)
    for domain in domains:
        # Each domain on its own: one that fails (its embeddings endpoint down, a bug) is logged and
        # tried at the next sweep; it holds back no other domain.
        try:
            with resources.pool().connection() as conn:
                run = grouping_store.group_domain(conn, process_embedder(), domain, on_ready=_hand_off_ready)
            placed += run.placed
        except Exception:
            log.exception("grouping a domain failed; the next sweep tries again", domain=domain)
    with resources.pool().connection() as conn:
        grouping_store.check_readiness(conn, grouping_store.unready_rewarded_groups(conn), on_ready=_hand_off_ready)
    return placed


@shared_task(name="grpod.distill.group", autoretry_for=TRANSIENT)
def distill_group(group_id: int) -> str:
    """Distill one ready group; its operations then wait for the domain's update window."""
    from grpod.daemon.ports import process_embedder, process_llm
    from grpod.workers import distillation_store

    with _autocommit() as conn:
        run = distillation_store.distill_group(
            conn, process_llm(), process_embedder(), group_id, on_ready=_hand_off_ready
        )
        if run.status == "distilled" and run.domain is not None:
            _schedule_window(conn, run.domain)
    if run.status not in ("distilled", "failed"):
        log.info("nothing to distill", group_id=group_id, status=run.status, reason=run.reason)
    return run.status


def _schedule_window(conn: psycopg.Connection[Any], domain: str) -> None:
    from grpod.workers import update_window

    for name, wait in update_window.due_windows(conn):
        if name == domain:
            update_library.apply_async(kwargs={"domain": domain}, countdown=wait)


@shared_task(name="grpod.library.update", bind=True, autoretry_for=TRANSIENT)
def update_library(self: Task[Any, Any], domain: str, attempt: int = 0) -> str:
    """Publish the domain's waiting distillations as one library version once its window closes."""
    from grpod.daemon.ports import process_llm
    from grpod.workers import update_window

    with _autocommit() as conn:
        run = update_window.run_window(conn, process_llm(), domain)
    if run.status == "waiting":
        update_library.apply_async(kwargs={"domain": domain}, countdown=run.wait_seconds)
    elif run.status == "busy" and attempt < BUSY_RESENDS:  # another update of the domain runs
        update_library.apply_async(
            kwargs={"domain": domain, "attempt": attempt + 1}, countdown=BUSY_RETRY_SECONDS * 2**attempt
        )
    return run.status


@shared_task(name="grpod.distill.sweep", autoretry_for=TRANSIENT)
@one_effect_per_slot
def sweep_distillation(slot: str | None = None) -> dict[str, int]:
    """Beat's safety net: ready groups whose task was lost (or whose distillation failed and has
    waited out its backoff) and update windows that are due."""
    from grpod.workers import distillation_store, update_window

    with _autocommit() as conn:
        groups = distillation_store.groups_to_distill(conn, min_age_seconds=LOST_TASK_SECONDS)
        windows = [domain for domain, wait in update_window.due_windows(conn) if wait <= 0]
    for group_id, _ in groups:
        distill_group.apply_async(args=[group_id])
    for domain in windows:
        update_library.apply_async(kwargs={"domain": domain})
    if groups or windows:
        log.info("distillation sweep", groups=len(groups), windows=len(windows))
    return {"groups": len(groups), "windows": len(windows)}


@shared_task(name="grpod.library.judge", autoretry_for=TRANSIENT)
@one_effect_per_slot
def judge_libraries(slot: str | None = None) -> int:
    """Beat's judge: promote or discard candidates on their traces' rewards, roll back regressions."""
    from grpod.workers import library_store

    acted = 0
    with _autocommit() as conn:
        for domain in library_store.domains_to_judge(conn):
            for judgement in library_store.judge_domain(conn, domain):
                if judgement.acted:
                    acted += 1
                    log.warning(
                        "library label moved on live rewards",
                        domain=domain,
                        label=judgement.label,
                        version=judgement.version,
                        decision=judgement.verdict.decision,
                        reason=judgement.verdict.reason,
                    )
    return acted


@shared_task(name="grpod.library.consolidate", autoretry_for=TRANSIENT)
@one_effect_per_slot
def consolidate_libraries(slot: str | None = None) -> dict[str, str]:
    """Beat's consolidation of every library (workers/consolidation_store.py): each domain on its own,
    so one that fails (its LLM away, a bug) is logged and tried at the next slot."""
    from grpod.daemon.ports import process_embedder, process_llm
    from grpod.workers import consolidation_store

    with _autocommit() as conn:
        domains = consolidation_store.domains_to_consolidate(conn)
    outcome: dict[str, str] = {}
    for domain in domains:
        try:
            with _autocommit() as conn:
                run = consolidation_store.consolidate(conn, process_llm(), process_embedder(), domain)
            outcome[domain] = run.status
        except Exception:
            log.exception("consolidating a library failed; the next slot tries again", domain=domain)
            outcome[domain] = "failed"
    if any(status == "published" for status in outcome.values()):
        log.info("libraries consolidated", **outcome)
    return outcome


@shared_task(name="grpod.maintenance.sweep", autoretry_for=TRANSIENT)
@one_effect_per_slot
def sweep_maintenance(slot: str | None = None) -> dict[str, Any]:
    """Beat's maintenance: lost and stalled work, trace expiry, retention, pruning (workers/maintenance_sweep.py);
    the ready groups it finds go to the distillation stage."""
    from grpod.workers import maintenance_sweep

    settings = resources.settings()
    deployment = maintenance_sweep.DeploymentUpkeep(
        rejected_retention_seconds=settings.rejected_retention_seconds,
        heartbeat_retention_seconds=settings.heartbeat_retention_seconds,
    )
    with resources.pool().connection() as conn:
        report = maintenance_sweep.sweep(conn, deployment)
    for group_id in report.groups_to_distill:
        distill_group.apply_async(args=[group_id])
    log.info("maintenance sweep", sent=len(report.groups_to_distill), errors=len(report.failed))
    return report.to_json()
