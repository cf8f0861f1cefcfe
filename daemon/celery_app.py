"""The one Celery app: a queue per pipeline stage, routing, delivery guarantees.

Delivery is at least once: tasks are acknowledged after they finish
(``acks_late``) and re-queued if their worker dies (``reject_on_worker_lost``),
so every task is written to be idempotent. On RabbitMQ every queue is a durable
quorum queue whose poison messages go to a dead-letter exchange after
``delivery_limit`` deliveries.
"""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime
from importlib.metadata import version
from typing import Any

import structlog
from celery import Celery, Task, signals
from kombu.entity import Exchange, Queue

from grpod.daemon.logs import configure_logging
from grpod.daemon.schedule import SlotSchedule
from grpod.daemon.settings import Settings
from grpod.schema.topology import dead_letter_queue, is_rabbitmq, queue_name, quorum_arguments

# In pipeline order. Each stage has its own queue, so each can be scaled alone.
STAGES: tuple[str, ...] = ("ingest", "group", "distill", "library", "maintenance")
TASK_MODULES = ("grpod.daemon.tasks",)
EXPIRE_REWARDS_SECONDS = 600.0
SWEEP_SECONDS = 60.0
MAINTENANCE_SECONDS = 600.0  # the default of GRPOD_MAINTENANCE_SECONDS
CONSOLIDATE_SECONDS = 3600.0  # the default of GRPOD_CONSOLIDATE_SECONDS


def stage_queues(settings: Settings, broker_url: str) -> list[Queue]:
    # A topic exchange: RabbitMQ's native delayed delivery (used for retry
    # countdowns on quorum queues) cannot route through a direct exchange.
    exchange = Exchange(settings.queue_prefix, type="topic", durable=True)
    arguments: dict[str, Any] = {}
    if is_rabbitmq(broker_url):
        arguments = quorum_arguments(settings.queue_prefix, settings.delivery_limit)
    return [
        Queue(
            queue_name(settings.queue_prefix, stage),
            exchange=exchange,
            routing_key=stage,
            durable=True,
            queue_arguments=dict(arguments),
        )
        for stage in STAGES
    ]


def task_routes(settings: Settings) -> dict[str, dict[str, str]]:
    """Task ``grpod.<stage>.<name>`` goes to the queue of ``<stage>``."""
    return {
        f"grpod.{stage}.*": {
            "queue": queue_name(settings.queue_prefix, stage),
            "exchange": settings.queue_prefix,
            "routing_key": stage,
        }
        for stage in STAGES
    }


def broker_transport_options(settings: Settings, broker_url: str) -> dict[str, Any]:
    if is_rabbitmq(broker_url):
        return {"confirm_publish": True}
    if broker_url.startswith("filesystem://"):
        folder = settings.broker_folder
        for sub in ("queue", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        return {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "control_folder": str(folder / "control"),
            "store_processed": False,
            # A folder is polled; a short interval keeps pickup and shutdown quick.
            "polling_interval": 0.2,
        }
    return {}


def beat_schedule(
    heartbeat_seconds: float,
    maintenance_seconds: float = MAINTENANCE_SECONDS,
    consolidate_seconds: float = CONSOLIDATE_SECONDS,
) -> dict[str, dict[str, Any]]:
    """What beat sends. Each entry with an effect is on a ``SlotSchedule``, so beat sends it with its
    slot, and its task is decorated with ``tasks.one_effect_per_slot``: a copy of the same slot from
    a second beat finds the slot claimed and does nothing. No entry has ``expires``: on RabbitMQ it
    becomes a message TTL, and a late sweep was dead-lettered into ``<prefix>.dead`` instead of
    running."""
    # Evaluated once per process; in the beat process these name the beat itself.
    this_beat = {
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "started_at": datetime.now(UTC).isoformat(),
        "version": version("grpod"),
    }
    return {
        # No slot claim: a heartbeat only records liveness, and each beat's copy names a different
        # process (the beat that sent it), so every copy should run; running one twice changes nothing.
        "heartbeat": {
            "task": "grpod.maintenance.heartbeat",
            "schedule": heartbeat_seconds,
            "kwargs": {"beat": this_beat},
        },
        "sweep-grouping": {"task": "grpod.group.sweep", "schedule": SlotSchedule(SWEEP_SECONDS)},
        "sweep-distillation": {"task": "grpod.distill.sweep", "schedule": SlotSchedule(SWEEP_SECONDS)},
        "judge-libraries": {"task": "grpod.library.judge", "schedule": SlotSchedule(SWEEP_SECONDS)},
        "expire-rewards": {
            "task": "grpod.maintenance.expire_rewards",
            "schedule": SlotSchedule(EXPIRE_REWARDS_SECONDS),
        },
        "maintenance-sweep": {"task": "grpod.maintenance.sweep", "schedule": SlotSchedule(maintenance_seconds)},
        "consolidate-libraries": {"task": "grpod.library.consolidate", "schedule": SlotSchedule(consolidate_seconds)},
    }


def create_app(settings: Settings, broker_url: str | None = None) -> Celery:
    """The Celery app for these settings; ``broker_url`` overrides the settings' one."""
    url = broker_url or settings.effective_broker_url()
    _connect_signals(settings)
    app = Celery("grpod", broker=url, include=list(TASK_MODULES), set_as_current=True)
    queues = stage_queues(settings, url)
    rabbit = is_rabbitmq(url)
    app.conf.update(
        broker_transport_options=broker_transport_options(settings, url),
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=10,
        task_queues=queues,
        task_default_queue=queue_name(settings.queue_prefix, "maintenance"),
        task_default_exchange=settings.queue_prefix,
        task_default_exchange_type="topic",
        task_default_routing_key="maintenance",
        task_routes=task_routes(settings),
        task_create_missing_queues=False,
        task_default_queue_type="quorum" if rabbit else "classic",
        # At least once: acknowledge after the work, re-queue if the worker dies.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        # JSON only: a message from any client in any language can be read,
        # and no message can make a worker unpickle code.
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        event_serializer="json",
        task_ignore_result=True,
        result_backend=None,
        # Retries: exponential backoff with jitter, bounded, for every task.
        task_annotations={
            "*": {
                "max_retries": settings.task_max_retries,
                "retry_backoff": True,
                "retry_backoff_max": settings.retry_backoff_max,
                "retry_jitter": True,
            }
        },
        task_publish_retry=True,
        task_publish_retry_policy={
            "max_retries": 5,
            "interval_start": 0.2,
            "interval_step": 0.5,
            "interval_max": 3,
        },
        worker_concurrency=settings.worker_concurrency,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        worker_send_task_events=False,
        worker_enable_remote_control=rabbit,
        # The remote-control mailbox under the prefix too: Celery's default ("celery") names the
        # exclusive queue "celery@<host>.celery.pidbox", so a second deployment's worker on the same
        # host and broker died declaring it (RESOURCE_LOCKED), and broadcasts reached every deployment.
        control_exchange=settings.queue_prefix,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        beat_schedule=beat_schedule(
            settings.heartbeat_seconds, settings.maintenance_seconds, settings.consolidate_seconds
        ),
        beat_scheduler="grpod.daemon.schedule:SlotScheduler",
        beat_schedule_filename=str(settings.beat_schedule_file),
        timezone="UTC",
        enable_utc=True,
    )
    return app


def declare_queues(app: Celery, settings: Settings) -> None:
    """Declare every stage queue, and the dead-letter exchange and queue, on RabbitMQ.

    All the stages, not only those a worker consumes: a task sent to a stage whose workers have
    not started yet is kept, and each worker's start binds every stage queue for Celery's delayed
    delivery (a retry's countdown), which fails on a queue not declared yet. The dead-letter queue
    is not in ``task_queues``: no worker consumes dead tasks; an operator inspects them. Other
    brokers have neither quorum queues nor dead-lettering, and declare on use.
    """
    if not is_rabbitmq(app.conf.broker_url):
        return
    with app.connection_for_write() as connection:
        channel = connection.default_channel
        for queue in app.conf.task_queues:
            queue(channel).declare()
        dead_letter_queue(settings.queue_prefix)(channel).declare()


def _connect_signals(settings: Settings) -> None:
    """Logging through structlog in every Celery process; task context on every line."""

    def setup_logging(**_: Any) -> None:
        configure_logging(settings.log_level, settings.log_format)

    signals.setup_logging.connect(setup_logging, weak=False, dispatch_uid="grpod.setup_logging")
    signals.task_prerun.connect(_bind_task_context, weak=False, dispatch_uid="grpod.task_prerun")
    signals.task_postrun.connect(_clear_task_context, weak=False, dispatch_uid="grpod.task_postrun")
    signals.worker_ready.connect(_worker_ready, weak=False, dispatch_uid="grpod.worker_ready")


def _worker_ready(**_: Any) -> None:
    """Say at once that this worker is alive (beat's heartbeats then keep it current)."""
    from grpod.daemon import resources
    from grpod.daemon.database import connect
    from grpod.workers import maintenance

    try:
        settings = resources.settings()
        with connect(resources.database_url(), connect_timeout=settings.database_connect_timeout) as conn:
            maintenance.record_heartbeats(conn, [maintenance.this_process("worker", maintenance.PROCESS_STARTED_AT)])
    except Exception:
        structlog.stdlib.get_logger(__name__).warning("could not record the worker's first heartbeat", exc_info=True)


def _bind_task_context(
    task_id: str | None = None,
    task: Task[Any, Any] | None = None,
    kwargs: dict[str, Any] | None = None,
    **_: Any,
) -> None:
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(
        task_id=task_id,
        task_name=task.name if task is not None else None,
        domain=(kwargs or {}).get("domain"),
    )


def _clear_task_context(**_: Any) -> None:
    structlog.contextvars.clear_contextvars()
