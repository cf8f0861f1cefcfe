"""No secret reaches output: URLs are redacted wherever they are shown, and a bad value is a sentence."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from grpod.daemon.settings import Settings, load_settings
from grpod.schema.errors import ConfigError
from grpod.schema.urls import redact

SECRET = "S3cr3t-PASSWORD"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"postgresql://grpod:{SECRET}@db:5432/grpod", "postgresql://grpod:***@db:5432/grpod"),
        (f"amqp://guest:{SECRET}@127.0.0.1:5672//", "amqp://guest:***@127.0.0.1:5672//"),
        (f"postgresql://u:{SECRET}@h:notaport/db", "postgresql://u:***@h:notaport/db"),
        (f"postgresql://h/db?sslmode=require&password={SECRET}", "postgresql://h/db?sslmode=require&password=***"),
        (f"https://api.example/v1?api_key={SECRET}", "https://api.example/v1?api_key=***"),
        (f"host=db dbname=grpod password={SECRET}", "host=db dbname=grpod password=***"),
        (f"host=db password='{SECRET} with space'", "host=db password=***"),
        (f"mysql://u:{SECRET}@[::1/db", "mysql://***"),
        ("postgresql://db/grpod", "postgresql://db/grpod"),
    ],
)
def test_redact_hides_every_kind_of_secret_and_never_raises(url: str, shown: str) -> None:
    assert redact(url) == shown


@given(st.text())
def test_redact_never_raises(text: str) -> None:
    redact(text)


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("GRPOD_DATABASE_URL", f"mysql://u:{SECRET}@h/db", "is not a PostgreSQL URL"),
        ("GRPOD_BROKER_URL", f"redis://u:{SECRET}@h:1/0", "has scheme 'redis'"),
        ("GRPOD_DATABASE_URL", f"postgresql://u:{SECRET}@h:notaport/db", "has a port that is not a number"),
        ("GRPOD_BROKER_URL", f"amqp://u:{SECRET}@h:70000//", "has a port that is not a number"),
        ("GRPOD_LLM_BASE_URL", f"ftp://u:{SECRET}@h/v1", "must be an http(s) URL"),
    ],
)
def test_a_bad_url_is_one_sentence_without_its_password(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, says: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert says in str(raised.value) and variable in str(raised.value)
    assert SECRET not in str(raised.value)


def test_the_settings_repr_hides_passwords_and_keys() -> None:
    settings = Settings(
        database_url=f"postgresql://grpod:{SECRET}@db/grpod",
        broker_url=f"amqp://grpod:{SECRET}@mq//",
        llm_api_key=SECRET,  # type: ignore[arg-type]
    )
    assert SECRET not in repr(settings) and SECRET not in str(settings)
    assert "postgresql://grpod:***@db/grpod" in repr(settings)


def test_the_command_line_prints_a_bad_port_as_a_sentence_not_a_traceback(tmp_path: object) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "grpod.daemon", "status"],
        capture_output=True,
        text=True,
        timeout=120,
        env={
            "PATH": "/usr/bin:/bin",
            "GRPOD_HOME": str(tmp_path),
            "GRPOD_DATABASE_URL": f"postgresql://u:{SECRET}@h:x/db",
        },
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and SECRET not in result.stderr + result.stdout
    assert "GRPOD_DATABASE_URL=postgresql://u:***@h:x/db has a port that is not a number" in result.stderr
