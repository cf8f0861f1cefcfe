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
