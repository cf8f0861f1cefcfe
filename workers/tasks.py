"""Thin Celery tasks around the pipeline stages: load, call the plain function, store.

Task names are ``grpod.<stage>.<name>``; the stage picks the queue. Every task
may run more than once (at-least-once delivery), so each is idempotent.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import structlog
from celery import Task, shared_task

from grpod.daemon import resources
from grpod.workers import maintenance

log = structlog.stdlib.get_logger(__name__)


@shared_task(name="grpod.maintenance.heartbeat", bind=True)
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


@shared_task(name="grpod.maintenance.expire_rewards")
def expire_rewards() -> int:
    """Rewards that waited longer than GRPOD_REWARD_TTL_SECONDS for their trace become rejected events."""
    settings = resources.settings()
    with resources.pool().connection() as conn:
        expired = maintenance.expire_orphan_rewards(conn, settings.reward_ttl_seconds)
    if expired:
        log.warning("rewards expired without their trace", count=expired, ttl_seconds=settings.reward_ttl_seconds)
    return expired


def _hand_off_ready(groups: list[tuple[int, str]]) -> None:
    """A group just became ready. The distillation stage takes it from here; until it exists the
    group waits, marked ready in the database, where distillation's sweep will find it."""
    for group_id, domain in groups:
        log.info("group ready for distillation", group_id=group_id, domain=domain)


@shared_task(name="grpod.group.assign_traces", bind=True)
def assign_traces(self: Task[Any, Any], domain: str, trace_ids: list[str] | None = None) -> dict[str, int]:
    """Embed and group a domain's waiting traces (these ones, or the oldest waiting)."""
    from grpod.workers import grouping_store
    from grpod.workers.embeddings import process_embedder

    with resources.pool().connection() as conn:
        run = grouping_store.group_domain(
            conn, process_embedder(), domain, trace_ids=trace_ids, on_ready=_hand_off_ready
        )
    if run.placed:
        log.info("traces grouped", placed=run.placed, new_groups=run.new_groups, ready=len(run.ready))
    return {"embedded": run.embedded, "placed": run.placed, "new_groups": run.new_groups}


@shared_task(name="grpod.group.check_readiness")
def check_readiness(trace_ids: list[str]) -> int:
    """Rewards arrived for these traces: re-check their groups' readiness."""
    from grpod.workers import grouping_store

    with resources.pool().connection() as conn:
        verdicts = grouping_store.check_readiness(
            conn, grouping_store.groups_of(conn, trace_ids), on_ready=_hand_off_ready
        )
    return sum(verdict.ready for verdict in verdicts.values())


@shared_task(name="grpod.group.sweep")
def sweep_grouping() -> int:
    """Beat's safety net: group traces whose task was lost and re-check groups that got rewards."""
    from grpod.workers import grouping_store
    from grpod.workers.embeddings import process_embedder

    placed = 0
    with resources.pool().connection() as conn:
        domains = grouping_store.domains_with_ungrouped(conn)
        for domain in domains:
            placed += grouping_store.group_domain(conn, process_embedder(), domain, on_ready=_hand_off_ready).placed
        grouping_store.check_readiness(conn, grouping_store.unready_rewarded_groups(conn), on_ready=_hand_off_ready)
    return placed
