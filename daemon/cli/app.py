"""The `grpod` command line's base: the app, and what every area's commands share.

Every command that lists things also speaks ``--json``. A wrong setting or a
request that cannot be done ends with one sentence on stderr and exit code 2.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer

from grpod.daemon import resources
from grpod.daemon.logs import configure_logging
from grpod.daemon.settings import Settings
from grpod.schema.errors import ConfigError, OperatorError

app = typer.Typer(
    name="grpod",
    help="grpod: a continual-learning daemon for LLM agents (Training-Free GRPO on live traffic).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def command_settings() -> Settings:
    """The settings, with logging configured as they say."""
    settings = resources.settings()
    configure_logging(settings.log_level, settings.log_format)
    return settings


def migrated_database(settings: Settings) -> str:
    """The database URL, with grpod's schema in place.

    The embedded database is migrated on first use (nothing to run by hand); an external one
    must have been migrated by `grpod migrate`, which an operator runs on purpose.
    """
    from grpod.daemon.migrations import migrate as apply_migrations
    from grpod.daemon.migrations import require_current_schema

    url = resources.database_url()
    if settings.embedded_database:
        apply_migrations(url, connect_timeout=settings.database_connect_timeout)
    else:
        require_current_schema(url, connect_timeout=settings.database_connect_timeout)
    return url


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


def main() -> None:
    """Entry point: run the app, turning known errors into one sentence and exit code 2."""
    try:
        app(standalone_mode=True)
    except (ConfigError, OperatorError) as error:
        sys.stderr.write(f"grpod: {error}\n")
        sys.exit(2)
