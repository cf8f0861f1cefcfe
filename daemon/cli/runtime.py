"""`grpod up`, `migrate`, `worker`, `beat`, `status`, `demo`: running the service and looking at it."""

from __future__ import annotations

import os
import socket
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from grpod.daemon import resources
from grpod.daemon.cli.app import JsonOption, app, command_settings, migrated_database, print_json
from grpod.daemon.cli.domains import print_domains
from grpod.daemon.logs import configure_logging
from grpod.daemon.settings import Settings
from grpod.schema.errors import ConfigError, OperatorError


def _declare_broker(settings: Settings) -> str | None:
    """On RabbitMQ, declare the events queue and the dead-letter queues, so that events published
    before any worker has started are kept, not dropped as unroutable."""
    from grpod.schema.topology import is_rabbitmq

    url = settings.broker_url
    if url is None or not is_rabbitmq(url):
        return None
    from kombu.connection import Connection
    from kombu.exceptions import OperationalError

    from grpod.daemon.celery_app import create_app, declare_queues
    from grpod.schema.topology import declare_event_queues
    from grpod.schema.urls import redact

    try:
        with Connection(url, connect_timeout=settings.publish_timeout) as connection:
            connection.ensure_connection(max_retries=2, timeout=settings.publish_timeout)
            declare_event_queues(connection.channel(), settings.queue_prefix, url, settings.delivery_limit)
        declare_queues(create_app(settings), settings)
    except (OSError, OperationalError) as error:
        raise ConfigError(
            f"GRPOD_BROKER_URL={redact(url)} cannot be reached ({error}); check the URL and that RabbitMQ runs."
        ) from None
    return redact(url)


@app.command()
def up() -> None:
    """Start the service: embedded database (unless configured), migrations, a worker and beat."""
    from grpod.daemon.runtime import Supervisor

    raise typer.Exit(Supervisor(command_settings()).run())


@app.command()
def migrate(
    read_only_role: Annotated[
        str | None,
        typer.Option(
            help="Also create (or update) this database role, which reads every table and changes nothing; "
            "its password from GRPOD_READ_ONLY_PASSWORD."
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Apply the schema migrations the database lacks, and declare the broker's queues (both idempotent)."""
    from grpod.daemon.migrations import migrate as apply_migrations

    settings = command_settings()
    report = apply_migrations(resources.database_url(), connect_timeout=settings.database_connect_timeout)
    broker = _declare_broker(settings)
    applied = [{"version": m.version, "name": m.name} for m in report.applied]
    role: dict[str, object] | None = None
    if read_only_role is not None:
        from grpod.daemon.database import connect
        from grpod.daemon.read_only_role import ensure_read_only_role

        with connect(resources.database_url(), connect_timeout=settings.database_connect_timeout) as conn:
            created = ensure_read_only_role(conn, read_only_role, os.environ.get("GRPOD_READ_ONLY_PASSWORD", ""))
        role = {"name": read_only_role, "created": created}
    if as_json:
        print_json(
            {"applied": applied, "current_version": report.current_version, "broker_declared": broker}
            | ({"read_only_role": role} if role is not None else {})
        )
        return
    if role is not None:
        typer.echo(f"Read-only role {read_only_role} {'created' if role['created'] else 'updated'}.")
    if broker:
        typer.echo(f"Broker queues declared on {broker}.")
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
        int | None,
        typer.Option(
            min=1,
            help="Worker processes (default: GRPOD_WORKER_CONCURRENCY); with --pool threads, threads "
            "(default: GRPOD_LLM_CONCURRENCY).",
        ),
    ] = None,
    pool: Annotated[str, typer.Option(help="Celery pool: prefork, threads or solo.")] = "prefork",
    name: Annotated[
        str | None,
        typer.Option(help="This worker's node name, unique per broker (default: grpod-<pid>@<host>)."),
    ] = None,
) -> None:
    """Run one worker against the configured broker and database."""
    from grpod.daemon.celery_app import STAGES, create_app, declare_queues
    from grpod.schema.topology import queue_name

    settings = command_settings()
    stages = [stage.strip() for stage in queues.split(",")] if queues else list(STAGES)
    unknown = [stage for stage in stages if stage not in STAGES]
    if unknown:
        raise OperatorError(f"unknown stage {unknown[0]!r}; the stages are {', '.join(STAGES)}.")
    migrated_database(settings)  # fail fast, with a clear sentence, on a bad or unmigrated database
    celery = create_app(settings)
    declare_queues(celery, settings)
    if "ingest" in stages:
        from grpod.daemon.ingest import IngestConsumerStep

        celery.steps["worker"].add(IngestConsumerStep)
    if pool == "threads":
        # The LLM-bound stages (distill, library) wait on the endpoint: GRPOD_LLM_CONCURRENCY tasks at
        # once in one process, each holding one pooled connection, plus two for its other work.
        processes = concurrency or settings.llm_concurrency
        os.environ.setdefault("GRPOD_DATABASE_POOL_SIZE", str(processes + 2))
        resources.forget()  # the settings are read again, with the pool's size
    else:
        processes = concurrency or settings.worker_concurrency
    if settings.llm_threads is None and pool == "prefork":
        # Each process loads its own bundled model: share the cores between them, not each all of them.
        os.environ["GRPOD_LLM_THREADS"] = str(max(1, (os.cpu_count() or 1) // processes))
    if pool == "prefork" and "OMP_NUM_THREADS" not in os.environ:
        # The same for torch (the local embedder), which reads it when a process first imports it:
        # with every process on all the cores, grouping one trace took 3 times as long (bench/soak.py).
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // processes))
    celery.worker_main(
        [
            "--quiet",  # no banner: our own log lines say what runs where
            "worker",
            f"--loglevel={settings.log_level}",
            f"--queues={','.join(queue_name(settings.queue_prefix, stage) for stage in stages)}",
            f"--concurrency={processes}",
            f"--pool={pool}",
            # A name of its own: two workers named alike (Celery's default, celery@<host>) clash on
            # their exclusive remote-control queue, and the second one dies at its start.
            f"--hostname={name or f'grpod-{os.getpid()}@{socket.gethostname()}'}",
            "--without-mingle",
            "--without-gossip",
        ]
    )


@app.command()
def beat() -> None:
    """Run the scheduler (exactly one per deployment)."""
    from celery.apps.beat import Beat

    from grpod.daemon.celery_app import create_app

    settings = command_settings()
    settings.beat_schedule_file.parent.mkdir(parents=True, exist_ok=True)
    celery = create_app(settings)
    Beat(app=celery, loglevel=settings.log_level, schedule=str(settings.beat_schedule_file), quiet=True).run()


@app.command()
def status(as_json: JsonOption = False) -> None:
    """Database, broker, queue depths, per-domain counts, rewards waiting, rejected events, live processes."""
    from grpod.daemon.status import collect_status

    settings = command_settings()
    report = collect_status(
        settings, migrated_database(settings) if settings.embedded_database else resources.database_url()
    )
    if as_json:
        print_json(report)
        return
    console = Console()
    console.print(f"database  {report['database']} (schema version {report['schema_version']})")
    console.print(f"broker    {report['broker']}")
    queues = ", ".join(f"{name} {depth if depth is not None else '?'}" for name, depth in report["queues"].items())
    console.print(f"queues    {queues}")
    console.print(
        f"rewards waiting for their trace {report['pending_rewards']}, expired {report['expired_rewards']}; "
        f"rejected events {report['rejected']}; last accepted {report.get('last_accepted_at') or 'never'}"
    )
    if "distillations" in report:
        counts = report["distillations"]
        llm = report["llm_calls"]
        console.print(
            f"distillations running {counts['running']}, failed {counts['failed']}, waiting to be published "
            f"{counts['distilled']}, published {counts['applied']}, refused by the guard {counts['refused']}, "
            f"superseded {counts['superseded']}; "
            f"library versions {report['library_versions']}; "
            f"LLM calls {llm['calls']} ({llm['tokens_in']} tokens in, {llm['tokens_out']} out)"
        )
    print_domains(console, report["domains"])
    table = Table("role", "hostname", "pid", "version", "seen", title="processes")
    for process in report["processes"]:
        table.add_row(
            process["role"] + (f" ({process['state'].replace('_', ' ')})" if process.get("state") else ""),
            process["hostname"],
            str(process["pid"]),
            process["version"],
            f"{process['age_seconds']:.0f}s ago",
        )
    console.print(table)


@app.command()
def demo(as_json: JsonOption = False) -> None:
    """Run grpod end to end on the embedded default, in a few minutes: stream, group, distill, publish, roll back."""
    from grpod.daemon.demo import print_report, report_json, run_demo

    settings = command_settings()
    configure_logging("WARNING", settings.log_format)  # the progress bars tell the story
    report = run_demo(settings, Console(stderr=True))
    if as_json:
        print_json(report_json(report))
        return
    print_report(report, Console())


@app.command()
def health(
    live: Annotated[bool, typer.Option("--live", help="Only whether this host's worker runs its consumer.")] = False,
    ready: Annotated[
        bool, typer.Option("--ready", help="Also whether it is consuming and the database answers (the default).")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Exit 0 when this host's worker is live (or ready), 1 when not, saying why."""
    import time

    from grpod.daemon import health as checks

    settings = command_settings()
    if live and ready:
        raise OperatorError("give --live or --ready, not both.")
    # Liveness is about this host's processes alone: it neither reaches nor starts a database.
    reachable = live or checks.database_reachable(resources.database_url(), settings.database_connect_timeout)
    verdict = checks.judge(checks.read_reports(settings), time.time(), reachable)
    ok = verdict.live if live else verdict.ready
    if as_json:
        print_json({"ok": ok, "check": "live" if live else "ready", **verdict.to_json()})
    else:
        typer.echo(("live" if live else "ready") + (": yes" if ok else ": no (" + "; ".join(verdict.reasons) + ")"))
    raise typer.Exit(0 if ok else 1)


@app.command()
def api() -> None:
    """Serve the HTTP API for agents and operators on GRPOD_API_HOST:GRPOD_API_PORT (OpenAPI at /openapi.json)."""
    import uvicorn

    from grpod.daemon.api.app import create_app

    settings = command_settings()
    migrated_database(settings)  # fail fast, with a clear sentence, on a bad or unmigrated database
    # No access log: a request line never shows a token, and grpod logs each request's token name.
    uvicorn.run(create_app(), host=settings.api_host, port=settings.api_port, access_log=False, log_config=None)
