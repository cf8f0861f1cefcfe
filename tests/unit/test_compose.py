"""No Docker engine runs here, so the deployment file is checked as data."""

from __future__ import annotations

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
    assert set(compose["services"]) == {"postgres", "rabbitmq", "migrate", "worker", "beat"}


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
    for role in ("worker", "beat"):
        assert services[role]["command"] == [role]
        assert services[role]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert services[role]["depends_on"]["rabbitmq"]["condition"] == "service_healthy"
    assert services["beat"]["deploy"]["replicas"] == 1


def test_the_worker_scales_no_fixed_name_or_port(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    assert "container_name" not in worker
    assert "ports" not in worker


def test_grpod_services_point_at_the_compose_postgres_and_rabbitmq(compose: dict[str, Any]) -> None:
    for role in ("migrate", "worker", "beat"):
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
