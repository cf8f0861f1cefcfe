"""No Docker engine runs here, so the deployment file is checked as data."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from grpod.daemon.settings import Settings

ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))
    return document


def test_the_services_a_deployment_needs(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {"postgres", "rabbitmq", "migrate", "worker", "distiller", "api", "beat"}


def test_postgres_has_pgvector_a_volume_and_a_healthcheck(compose: dict[str, Any]) -> None:
    postgres = compose["services"]["postgres"]
    assert postgres["image"].startswith("pgvector/pgvector:")
    assert any(volume.endswith(":/var/lib/postgresql/data") for volume in postgres["volumes"])
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])


def test_rabbitmq_has_a_volume_and_a_healthcheck(compose: dict[str, Any]) -> None:
    rabbitmq = compose["services"]["rabbitmq"]
    assert rabbitmq["image"].startswith("rabbitmq:")
    assert any(volume.endswith(":/var/lib/rabbitmq") for volume in rabbitmq["volumes"])
    assert "rabbitmq-diagnostics" in rabbitmq["healthcheck"]["test"]


def test_roles_and_their_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["migrate"]["command"] == ["migrate"]
    assert services["migrate"]["restart"] == "no"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["beat"]["command"] == ["beat"] and services["api"]["command"] == ["api"]
    # Every stage is consumed, the LLM-bound ones by a thread pool.
    assert services["worker"]["command"] == ["worker", "--queues", "ingest,group,maintenance"]
    assert services["distiller"]["command"] == ["worker", "--queues", "distill,library", "--pool", "threads"]
    for role in ("worker", "distiller", "api", "beat"):
        assert services[role]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert services[role]["depends_on"]["rabbitmq"]["condition"] == "service_healthy"
    assert services["beat"]["deploy"]["replicas"] == 1


def test_the_worker_scales_no_fixed_name_or_port(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    assert "container_name" not in worker
    assert "ports" not in worker


def test_grpod_services_point_at_the_compose_postgres_and_rabbitmq(compose: dict[str, Any]) -> None:
    for role in ("migrate", "worker", "distiller", "api", "beat"):
        env = compose["services"][role]["environment"]
        assert env["GRPOD_DATABASE_URL"].startswith("postgresql://") and "@postgres:5432/" in env["GRPOD_DATABASE_URL"]
        assert env["GRPOD_BROKER_URL"].startswith("amqp://") and "@rabbitmq:5672/" in env["GRPOD_BROKER_URL"]
        known = {f"GRPOD_{name.upper()}" for name in Settings.model_fields}
        assert set(env) <= known, f"{role} sets unknown variables: {set(env) - known}"


def test_the_image_is_built_from_this_repository(compose: dict[str, Any]) -> None:
    assert compose["services"]["worker"]["build"] == "."
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert 'ENTRYPOINT ["grpod"]' in dockerfile


def test_named_volumes_are_declared(compose: dict[str, Any]) -> None:
    assert set(compose["volumes"]) == {"pgdata", "rabbitmq", "beat"}


def _compose_cli() -> bool:
    docker = shutil.which("docker")
    if docker is None:
        return False
    return subprocess.run([docker, "compose", "version"], capture_output=True, check=False).returncode == 0


def test_the_file_is_a_valid_compose_file(compose: dict[str, Any]) -> None:
    """`docker compose config` where the compose plugin exists; else what it checks of references."""
    if _compose_cli():
        done = subprocess.run(
            ["docker", "compose", "-f", str(ROOT / "compose.yaml"), "config", "--quiet"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return
    services = compose["services"]
    for name, service in services.items():
        assert set(service.get("depends_on", {})) <= set(services), f"{name} depends on an unknown service"
        named = [v.split(":", 1)[0] for v in service.get("volumes", []) if not v.startswith((".", "/"))]
        assert set(named) <= set(compose["volumes"]), f"{name} mounts an undeclared volume"
        assert "image" in service or "build" in service, f"{name} has neither an image nor a build"
        assert isinstance(service.get("command", []), list), f"{name}'s command is not a list"


def test_every_stage_is_consumed_by_one_kind_of_worker(compose: dict[str, Any]) -> None:
    from grpod.daemon.celery_app import STAGES

    services = compose["services"]
    consumed = [
        stage
        for service in services.values()
        if service.get("command", [None])[0] == "worker"
        for stage in service["command"][service["command"].index("--queues") + 1].split(",")
    ]
    assert sorted(consumed) == sorted(STAGES), "each stage is consumed by exactly one kind of worker"
