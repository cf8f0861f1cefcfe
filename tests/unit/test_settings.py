from __future__ import annotations

from pathlib import Path

import pytest

from grpod.daemon.settings import Settings, load_settings
from grpod.schema.errors import ConfigError
from grpod.sdk.settings import default_home


def test_nothing_set_means_everything_embedded() -> None:
    settings = load_settings()
    assert settings.embedded_database
    assert settings.embedded_broker
    assert settings.home == default_home()
    assert settings.effective_broker_url().startswith("filesystem://")
    assert settings.embeddings == "local"
    assert settings.llm_base_url is None


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GRPOD_DATABASE_URL", "postgresql://grpod:secret@db:5432/grpod")
    monkeypatch.setenv("GRPOD_BROKER_URL", "amqp://guest:guest@rabbit:5672//")
    monkeypatch.setenv("GRPOD_HOME", str(tmp_path))
    monkeypatch.setenv("GRPOD_WORKER_CONCURRENCY", "3")
    settings = load_settings()
    assert not settings.embedded_database
    assert not settings.embedded_broker
    assert settings.database_url == "postgresql://grpod:secret@db:5432/grpod"
    assert settings.home == tmp_path
    assert settings.worker_concurrency == 3
    assert settings.pgdata == tmp_path / "pgdata"


def test_toml_file_from_grpod_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "grpod.toml"
    config.write_text(
        'database_url = "postgresql://a@b/c"\nqueue_prefix = "prod"\nlog_level = "DEBUG"\n', encoding="utf-8"
    )
    monkeypatch.setenv("GRPOD_CONFIG", str(config))
    monkeypatch.setenv("GRPOD_LOG_LEVEL", "WARNING")  # the environment wins over the file
    settings = load_settings()
    assert settings.database_url == "postgresql://a@b/c"
    assert settings.queue_prefix == "prod"
    assert settings.log_level == "WARNING"


def test_empty_urls_mean_embedded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRPOD_DATABASE_URL", "")
    monkeypatch.setenv("GRPOD_BROKER_URL", "")
    settings = load_settings()
    assert settings.embedded_database and settings.embedded_broker


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        (
            "GRPOD_DATABASE_URL",
            "mysql://root@localhost/db",
            "GRPOD_DATABASE_URL=mysql://root@localhost/db is not a PostgreSQL URL",
        ),
        (
            "GRPOD_BROKER_URL",
            "kafka://localhost:9092",
            "GRPOD_BROKER_URL=kafka://localhost:9092 has scheme 'kafka'",
        ),
        ("GRPOD_EMBEDDINGS", "remote", "GRPOD_EMBEDDINGS=remote must be 'local' or an http(s) URL"),
        ("GRPOD_LLM_BASE_URL", "localhost:8000", "GRPOD_LLM_BASE_URL=localhost:8000 must be an http(s) URL"),
        ("GRPOD_WORKER_CONCURRENCY", "0", "GRPOD_WORKER_CONCURRENCY=0 is invalid"),
        ("GRPOD_WORKER_CONCURRENCY", "many", "GRPOD_WORKER_CONCURRENCY=many is invalid"),
        ("GRPOD_QUEUE_PREFIX", "Has Spaces", "GRPOD_QUEUE_PREFIX=Has Spaces is invalid"),
        ("GRPOD_LOG_LEVEL", "LOUD", "GRPOD_LOG_LEVEL=LOUD is invalid"),
    ],
)
def test_a_bad_setting_is_one_sentence_naming_it(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as raised:
        load_settings()
    message = str(raised.value)
    assert message.startswith(expected)
    assert "\n" not in message
    assert message.endswith(".")


def test_the_api_key_is_never_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRPOD_LLM_API_KEY", "sk-secret")
    settings = load_settings()
    assert settings.llm_api_key is not None
    assert "sk-secret" not in repr(settings)
    assert settings.llm_api_key.get_secret_value() == "sk-secret"


def test_missing_config_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GRPOD_CONFIG", str(tmp_path / "absent.toml"))
    with pytest.raises(ConfigError, match=r"GRPOD_CONFIG=.*absent.toml is not a readable TOML file"):
        load_settings()


def test_malformed_config_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "broken.toml"
    config.write_text("database_url = \n", encoding="utf-8")
    monkeypatch.setenv("GRPOD_CONFIG", str(config))
    with pytest.raises(ConfigError, match=r"GRPOD_CONFIG=.*broken.toml could not be read"):
        load_settings()


def test_every_setting_is_documented_in_the_readme() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    missing = [f"GRPOD_{name.upper()}" for name in Settings.model_fields if f"`GRPOD_{name.upper()}`" not in readme]
    assert missing == [], f"settings not documented in README.md: {missing}"
    assert "`GRPOD_CONFIG`" in readme
