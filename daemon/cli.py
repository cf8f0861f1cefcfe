"""The `grpod` command line.

Every command that lists things also speaks ``--json``. A wrong setting or a
request that cannot be done ends with one sentence on stderr and exit code 2.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from grpod.daemon import resources
from grpod.daemon.errors import ConfigError, OperatorError
from grpod.daemon.logs import configure_logging
from grpod.daemon.settings import Settings

app = typer.Typer(
    name="grpod",
    help="grpod: a continual-learning daemon for LLM agents (Training-Free GRPO on live traffic).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _settings() -> Settings:
    settings = resources.settings()
    configure_logging(settings.log_level, settings.log_format)
    return settings


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


@app.command()
def up() -> None:
    """Start the service: embedded database (unless configured), migrations, a worker and beat."""
    from grpod.daemon.runtime import Supervisor

    raise typer.Exit(Supervisor(_settings()).run())


@app.command()
def migrate(as_json: JsonOption = False) -> None:
    """Apply the schema migrations the database lacks (safe to run concurrently)."""
    from grpod.daemon.migrations import migrate as apply_migrations

    settings = _settings()
    report = apply_migrations(resources.database_url(), connect_timeout=settings.database_connect_timeout)
    applied = [{"version": m.version, "name": m.name} for m in report.applied]
    if as_json:
        print_json({"applied": applied, "current_version": report.current_version})
        return
    if not applied:
        typer.echo(f"Schema is up to date (version {report.current_version}).")
    for migration in applied:
        typer.echo(f"Applied {migration['version']:04d} {migration['name']}")


@app.command()
def worker(
    queues: Annotated[
        str | None,
        typer.Option(help="Comma-separated stages to consume (default: all of them)."),
    ] = None,
    concurrency: Annotated[
        int | None, typer.Option(min=1, help="Worker processes (default: GRPOD_WORKER_CONCURRENCY).")
    ] = None,
    pool: Annotated[str, typer.Option(help="Celery pool: prefork, threads or solo.")] = "prefork",
) -> None:
    """Run one worker against the configured broker and database."""
    from grpod.daemon.celery_app import STAGES, create_app, declare_dead_letter_queue, queue_name

    settings = _settings()
    stages = [stage.strip() for stage in queues.split(",")] if queues else list(STAGES)
    unknown = [stage for stage in stages if stage not in STAGES]
    if unknown:
        raise OperatorError(f"unknown stage {unknown[0]!r}; the stages are {', '.join(STAGES)}.")
    resources.database_url()  # fail fast, with a clear sentence, on a bad database
    celery = create_app(settings)
    declare_dead_letter_queue(celery, settings)
    celery.worker_main(
        [
            "--quiet",  # no banner: our own log lines say what runs where
            "worker",
            f"--loglevel={settings.log_level}",
            f"--queues={','.join(queue_name(settings.queue_prefix, stage) for stage in stages)}",
            f"--concurrency={concurrency or settings.worker_concurrency}",
            f"--pool={pool}",
            "--without-mingle",
            "--without-gossip",
        ]
    )


@app.command()
def beat() -> None:
    """Run the scheduler (exactly one per deployment)."""
    from celery.apps.beat import Beat

    from grpod.daemon.celery_app import create_app

    settings = _settings()
    settings.beat_schedule_file.parent.mkdir(parents=True, exist_ok=True)
    celery = create_app(settings)
    Beat(app=celery, loglevel=settings.log_level, schedule=str(settings.beat_schedule_file), quiet=True).run()


@app.command()
def status(as_json: JsonOption = False) -> None:
    """What is running and where: database, schema version, broker, live processes."""
    from grpod.daemon.status import collect_status

    settings = _settings()
    report = collect_status(settings, resources.database_url())
    if as_json:
        print_json(report)
        return
    console = Console()
    console.print(f"database  {report['database']} (schema version {report['schema_version']})")
    console.print(f"broker    {report['broker']}")
    table = Table("role", "hostname", "pid", "version", "seen", title="processes")
    for process in report["processes"]:
        table.add_row(
            process["role"],
            process["hostname"],
            str(process["pid"]),
            process["version"],
            f"{process['age_seconds']:.0f}s ago",
        )
    console.print(table)


def main() -> None:
    """Entry point: run the app, turning known errors into one sentence and exit code 2."""
    try:
        app(standalone_mode=True)
    except (ConfigError, OperatorError) as error:
        sys.stderr.write(f"grpod: {error}\n")
        sys.exit(2)
