from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import structlog
from celery import Celery

from grpod.daemon.celery_app import create_app
from grpod.daemon.logs import configure_logging, get_logger
from grpod.daemon.settings import Settings


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_service_logs_are_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", "json")
    get_logger("grpod.test").info("something happened", count=3)
    logging.getLogger("celery.worker").warning("from the standard library")
    lines = _json_lines(capsys.readouterr().err)
    assert lines[0]["event"] == "something happened"
    assert lines[0]["count"] == 3
    assert lines[0]["level"] == "info"
    assert "timestamp" in lines[0]
    assert lines[1]["event"] == "from the standard library"
    assert lines[1]["logger"] == "celery.worker"


def test_console_format_is_not_json(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", "console")
    get_logger("grpod.test").info("pretty")
    err = capsys.readouterr().err
    assert "pretty" in err
    assert _json_lines(err) == []


def test_debug_lines_are_dropped_at_info(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", "json")
    get_logger("grpod.test").debug("hidden")
    assert "hidden" not in capsys.readouterr().err


def test_every_line_of_a_task_carries_its_id_name_and_domain(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app: Celery = create_app(Settings(home=tmp_path, log_format="json"), broker_url="memory://")
    configure_logging("INFO", "json")

    @app.task(name="grpod.group.example")
    def example(domain: str) -> None:
        get_logger("grpod.test").info("inside the task")
        logging.getLogger("grpod.plain").info("a standard-library line")

    example.apply(kwargs={"domain": "support"}, task_id="task-42")
    lines = [
        line for line in _json_lines(capsys.readouterr().err) if line.get("logger") in ("grpod.test", "grpod.plain")
    ]
    assert len(lines) == 2
    for line in lines:
        assert line["task_id"] == "task-42"
        assert line["task_name"] == "grpod.group.example"
        assert line["domain"] == "support"
    # Nothing leaks out of the task.
    get_logger("grpod.test").info("after")
    after = _json_lines(capsys.readouterr().err)[-1]
    assert "task_id" not in after and "domain" not in after
    structlog.contextvars.clear_contextvars()
