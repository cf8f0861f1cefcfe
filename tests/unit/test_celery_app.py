from __future__ import annotations

from pathlib import Path

import pytest

from grpod.daemon.celery_app import STAGES, create_app
from grpod.daemon.settings import Settings
from grpod.schema.topology import dead_letter_queue, queue_name

RABBIT = "amqp://guest:guest@rabbit:5672//"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path, queue_prefix="grpod")


def test_a_queue_per_stage_in_pipeline_order(settings: Settings) -> None:
    app = create_app(settings, broker_url=RABBIT)
    assert STAGES == ("ingest", "group", "distill", "library", "maintenance")
    assert [q.name for q in app.conf.task_queues] == [f"grpod.{stage}" for stage in STAGES]


def test_rabbitmq_queues_are_durable_quorum_queues_with_dead_lettering(settings: Settings) -> None:
    app = create_app(settings, broker_url=RABBIT)
    for queue in app.conf.task_queues:
        assert queue.durable
        assert queue.queue_arguments["x-queue-type"] == "quorum"
        assert queue.queue_arguments["x-dead-letter-exchange"] == "grpod.dead"
        assert queue.queue_arguments["x-delivery-limit"] == settings.delivery_limit
    assert app.conf.broker_transport_options["confirm_publish"] is True
    dead = dead_letter_queue("grpod")
    assert dead.name not in {q.name for q in app.conf.task_queues}, "no worker consumes dead letters"


def test_embedded_broker_queues_have_no_rabbitmq_arguments(settings: Settings) -> None:
    app = create_app(settings)
    assert app.conf.broker_url.startswith("filesystem://")
    assert all(not q.queue_arguments for q in app.conf.task_queues)
    options = app.conf.broker_transport_options
    assert Path(options["data_folder_in"]).is_dir()
    assert Path(options["data_folder_in"]).is_relative_to(settings.home)


@pytest.mark.parametrize("stage", STAGES)
def test_task_names_route_to_their_stage_queue(settings: Settings, stage: str) -> None:
    app = create_app(settings, broker_url=RABBIT)
    route = app.amqp.router.route({}, f"grpod.{stage}.anything")
    assert route["queue"].name == queue_name("grpod", stage)
    assert route["routing_key"] == stage


def test_delivery_guarantees_and_json_only(settings: Settings) -> None:
    conf = create_app(settings, broker_url=RABBIT).conf
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_serializer == "json"
    assert conf.accept_content == ["json"]
    retry = conf.task_annotations["*"]
    assert retry["retry_backoff"] is True and retry["retry_jitter"] is True
    assert retry["max_retries"] == settings.task_max_retries
    assert retry["retry_backoff_max"] == settings.retry_backoff_max


def test_the_queue_prefix_isolates_deployments(tmp_path: Path) -> None:
    app = create_app(Settings(home=tmp_path, queue_prefix="staging"), broker_url=RABBIT)
    assert {q.name for q in app.conf.task_queues} == {f"staging.{stage}" for stage in STAGES}
    assert all(q.exchange.name == "staging" for q in app.conf.task_queues)


def test_beat_schedules_the_heartbeat(settings: Settings) -> None:
    schedule = create_app(settings).conf.beat_schedule
    assert schedule["heartbeat"]["task"] == "grpod.maintenance.heartbeat"
    assert schedule["heartbeat"]["schedule"] == settings.heartbeat_seconds
    assert set(schedule["heartbeat"]["kwargs"]["beat"]) == {"hostname", "pid", "started_at", "version"}


def test_every_task_retries_transient_failures_within_the_settings_bounds() -> None:
    import psycopg

    from grpod.daemon.celery_app import create_app
    from grpod.daemon.settings import Settings
    from grpod.workers.embeddings import EmbeddingError

    app = create_app(Settings(task_max_retries=4, retry_backoff_max=90))
    app.loader.import_default_modules()  # what a worker does at start: the task modules register
    ours = {name: task for name, task in app.tasks.items() if task.__module__ == "grpod.daemon.tasks"}
    assert len(ours) >= 9
    for name, task in ours.items():
        assert psycopg.OperationalError in task.autoretry_for and EmbeddingError in task.autoretry_for, name
        assert (task.max_retries, task.retry_backoff_max, task.retry_backoff) == (4, 90, True), name
