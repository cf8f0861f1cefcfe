"""The `grpod` command line.

Every command that lists things also speaks ``--json``. A wrong setting or a
request that cannot be done ends with one sentence on stderr and exit code 2.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
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


def _database(settings: Settings) -> str:
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


def _declare_broker(settings: Settings) -> str | None:
    """On RabbitMQ, declare the events queue and the dead-letter queues, so that events published
    before any worker has started are kept, not dropped as unroutable."""
    from grpod.daemon.topology import is_rabbitmq

    url = settings.broker_url
    if url is None or not is_rabbitmq(url):
        return None
    from kombu.connection import Connection
    from kombu.exceptions import OperationalError

    from grpod.daemon.celery_app import create_app, declare_dead_letter_queue
    from grpod.daemon.event_queue import declare_event_queues
    from grpod.daemon.urls import redact

    try:
        with Connection(url, connect_timeout=settings.publish_timeout) as connection:
            connection.ensure_connection(max_retries=2, timeout=settings.publish_timeout)
            declare_event_queues(connection.channel(), settings.queue_prefix, url, settings.delivery_limit)
        declare_dead_letter_queue(create_app(settings), settings)
    except (OSError, OperationalError) as error:
        raise ConfigError(
            f"GRPOD_BROKER_URL={redact(url)} cannot be reached ({error}); check the URL and that RabbitMQ runs."
        ) from None
    return redact(url)


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


@app.command()
def up() -> None:
    """Start the service: embedded database (unless configured), migrations, a worker and beat."""
    from grpod.daemon.runtime import Supervisor

    raise typer.Exit(Supervisor(_settings()).run())


@app.command()
def migrate(as_json: JsonOption = False) -> None:
    """Apply the schema migrations the database lacks, and declare the broker's queues (both idempotent)."""
    from grpod.daemon.migrations import migrate as apply_migrations

    settings = _settings()
    report = apply_migrations(resources.database_url(), connect_timeout=settings.database_connect_timeout)
    broker = _declare_broker(settings)
    applied = [{"version": m.version, "name": m.name} for m in report.applied]
    if as_json:
        print_json({"applied": applied, "current_version": report.current_version, "broker_declared": broker})
        return
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
        int | None, typer.Option(min=1, help="Worker processes (default: GRPOD_WORKER_CONCURRENCY).")
    ] = None,
    pool: Annotated[str, typer.Option(help="Celery pool: prefork, threads or solo.")] = "prefork",
) -> None:
    """Run one worker against the configured broker and database."""
    from grpod.daemon.celery_app import STAGES, create_app, declare_dead_letter_queue
    from grpod.daemon.topology import queue_name

    settings = _settings()
    stages = [stage.strip() for stage in queues.split(",")] if queues else list(STAGES)
    unknown = [stage for stage in stages if stage not in STAGES]
    if unknown:
        raise OperatorError(f"unknown stage {unknown[0]!r}; the stages are {', '.join(STAGES)}.")
    _database(settings)  # fail fast, with a clear sentence, on a bad or unmigrated database
    celery = create_app(settings)
    declare_dead_letter_queue(celery, settings)
    if "ingest" in stages:
        from grpod.workers.ingest_step import IngestConsumerStep

        celery.steps["worker"].add(IngestConsumerStep)
    processes = concurrency or settings.worker_concurrency
    if settings.llm_threads is None and pool == "prefork":
        # Each process loads its own bundled model: share the cores between them, not each all of them.
        os.environ["GRPOD_LLM_THREADS"] = str(max(1, (os.cpu_count() or 1) // processes))
    celery.worker_main(
        [
            "--quiet",  # no banner: our own log lines say what runs where
            "worker",
            f"--loglevel={settings.log_level}",
            f"--queues={','.join(queue_name(settings.queue_prefix, stage) for stage in stages)}",
            f"--concurrency={processes}",
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
    """Database, broker, queue depths, per-domain counts, rewards waiting, rejected events, live processes."""
    from grpod.daemon.status import collect_status

    settings = _settings()
    report = collect_status(settings, _database(settings) if settings.embedded_database else resources.database_url())
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
            f"{counts['distilled']}, published {counts['applied']}; library versions {report['library_versions']}; "
            f"LLM calls {llm['calls']} ({llm['tokens_in']} tokens in, {llm['tokens_out']} out)"
        )
    _print_domains(console, report["domains"])
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


def _print_domains(console: Console, domains: list[dict[str, Any]]) -> None:
    table = Table("domain", "traces", "rewarded traces", title="domains")
    for row in domains:
        table.add_row(escape(row["domain"]), str(row["traces"]), str(row["rewarded_traces"]))
    console.print(table)


@app.command()
def domains(as_json: JsonOption = False) -> None:
    """The domains, with their traces and rewarded traces."""
    from grpod.daemon.database import connect
    from grpod.daemon.status import domain_counts

    settings = _settings()
    with connect(_database(settings), connect_timeout=settings.database_connect_timeout) as conn:
        rows = domain_counts(conn)
    if as_json:
        print_json(rows)
        return
    _print_domains(Console(), rows)


@app.command()
def ingest(
    file: Annotated[str, typer.Argument(help="A JSON-lines file of trace and reward events, or - for standard input.")],
    as_json: JsonOption = False,
) -> None:
    """Load events from a file through the same validation and storage as the queue (backfill)."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

    from grpod.daemon.backfill import backfill, summary
    from grpod.daemon.database import connect

    settings = _settings()
    if file == "-":
        stream, total = sys.stdin.buffer, None
    else:
        path = Path(file)
        if not path.is_file():
            raise OperatorError(f"{file} is not a readable file.")
        stream, total = path.open("rb"), path.stat().st_size
    progress = Progress(
        TextColumn("ingesting"),
        BarColumn(),
        DownloadColumn(),
        TextColumn("{task.fields[events]} events"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=as_json,
    )
    with progress, stream, connect(_database(settings), connect_timeout=settings.database_connect_timeout) as conn:
        task = progress.add_task("ingest", total=total, events=0)
        seen = 0

        def advance(events: int, size: int) -> None:
            nonlocal seen
            seen += events
            progress.update(task, advance=size, events=seen)

        outcome = backfill(conn, stream, settings, advance)
    counts = summary(outcome)
    if as_json:
        print_json(counts)
        return
    typer.echo(
        f"accepted {counts['accepted']}, duplicates {counts['duplicates']}, rejected {sum(counts['rejected'].values())}"
    )
    for reason, count in counts["rejected"].items():
        typer.echo(f"  {reason}: {count}")


rejected_app = typer.Typer(
    help="Events that were not stored, with their reasons: list and replay.", no_args_is_help=False
)
app.add_typer(rejected_app, name="rejected")


@rejected_app.callback(invoke_without_command=True)
def rejected_list(
    ctx: typer.Context,
    reason: Annotated[str | None, typer.Option(help="Only this reason (e.g. schema_violation).")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many, newest first.")] = 50,
    as_json: JsonOption = False,
) -> None:
    """List rejected events, newest first."""
    if ctx.invoked_subcommand is not None:
        return
    from grpod.daemon.database import connect
    from grpod.daemon.rejected import list_rejected

    settings = _settings()
    with connect(_database(settings), connect_timeout=settings.database_connect_timeout) as conn:
        rows = list_rejected(conn, reason, limit)
    if as_json:
        print_json(rows)
        return
    table = Table("id", "received", "reason", "detail", "trace", "replayed", title="rejected events")
    for row in rows:
        table.add_row(
            str(row["id"]),
            row["received_at"][:19],
            row["reason"],
            row["detail"][:80],
            row["trace_id"] or "",
            row["replay_outcome"] or "",
        )
    Console().print(table)


@rejected_app.command("replay")
def rejected_replay(
    rejected_id: Annotated[int, typer.Argument(metavar="ID", help="The id shown by `grpod rejected`.")],
    as_json: JsonOption = False,
) -> None:
    """Run one rejected event through validation and storage again (after a fix)."""
    from grpod.daemon.database import connect
    from grpod.daemon.rejected import replay

    settings = _settings()
    with connect(_database(settings), connect_timeout=settings.database_connect_timeout) as conn:
        result = replay(conn, rejected_id, settings)
    if as_json:
        print_json(
            {"id": result.id, "outcome": result.outcome, "reason": result.reason, "rejected_id": result.rejected_id}
        )
        return
    if result.outcome == "rejected":
        typer.echo(f"rejected event {result.id} was rejected again: {result.reason} (now #{result.rejected_id})")
    else:
        typer.echo(f"rejected event {result.id} replayed: {result.outcome}")


@app.command()
def groups(
    domain: Annotated[str, typer.Argument(help="The domain whose groups to list.")],
    limit: Annotated[int, typer.Option(min=1, help="At most this many, largest first.")] = 50,
    as_json: JsonOption = False,
) -> None:
    """A domain's groups of similar queries: size, rewarded traces, reward spread, readiness, samples."""
    from grpod.daemon.database import connect
    from grpod.workers.grouping_store import list_groups, prepare

    settings = _settings()
    with connect(_database(settings), autocommit=True, connect_timeout=settings.database_connect_timeout) as conn:
        prepare(conn)
        rows = list_groups(conn, domain, limit)
    if as_json:
        print_json(rows)
        return
    table = Table("id", "size", "rewarded", "spread", "ready", "sample queries", title=f"groups of {domain}")
    for row in rows:
        table.add_row(
            str(row["id"]),
            str(row["size"]),
            str(row["rewarded"]),
            f"{row['spread']:.3g}",
            "yes" if row["ready"] else escape(row["why_not_ready"] or "no"),
            escape(" | ".join(sample[:60] for sample in row["samples"])),
        )
    Console().print(table)


@app.command()
def demo(as_json: JsonOption = False) -> None:
    """Run grpod end to end on the embedded default, in a few minutes: stream, group, distil, publish, roll back."""
    from grpod.daemon.demo import print_report, report_json, run_demo

    settings = _settings()
    configure_logging("WARNING", settings.log_format)  # the progress bars tell the story
    report = run_demo(settings, Console(stderr=True))
    if as_json:
        print_json(report_json(report))
        return
    print_report(report, Console())


@app.command()
def distill(
    domain: Annotated[str | None, typer.Argument(help="The domain to distil now.")] = None,
    group: Annotated[int | None, typer.Option("--group", help="Distil only this group.")] = None,
    replay: Annotated[
        int | None, typer.Option("--replay", metavar="ID", help="Re-run a recorded distillation, with no LLM.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Distil a domain now, in this process: group its waiting traces, distil its ready groups, publish."""
    from grpod.daemon.database import connect
    from grpod.workers import distillation_store

    settings = _settings()
    if (domain is None) == (replay is None):
        raise OperatorError("give either a DOMAIN to distil or --replay ID, not both or neither.")
    with connect(_database(settings), autocommit=True, connect_timeout=settings.database_connect_timeout) as conn:
        if replay is not None:
            replayed = distillation_store.replay(conn, replay)
            if as_json:
                print_json(replayed.to_json())
            else:
                _print_operations(f"distillation {replay} replayed from its recording", replayed.operations)
            if not replayed.same:
                sys.stderr.write(f"grpod: the replay of distillation {replay} gave other operations than recorded\n")
                raise typer.Exit(1)
            return
        assert domain is not None
        report = _distil_domain(conn, domain, group, quiet=as_json)
    if as_json:
        print_json(report.to_json())
        return
    _print_domain_run(report)


def _distil_domain(conn: Any, domain: str, group: int | None, *, quiet: bool) -> Any:
    from rich.status import Status

    from grpod.workers import distillation_store, grouping_store
    from grpod.workers.embeddings import process_embedder
    from grpod.workers.llm import process_llm

    grouping_store.prepare(conn)
    with Status("grouping", console=Console(stderr=True, quiet=quiet)) as status:
        return distillation_store.distil_domain(
            conn, process_llm, process_embedder, domain, group_id=group, progress=status.update
        )


def _print_operations(title: str, operations: list[Any]) -> None:
    typer.echo(title + (":" if operations else ": no operations"))
    for operation in operations:
        target = f" [{operation.experience_id}]" if operation.experience_id is not None else ""
        typer.echo(f"  {operation.kind}{target} {operation.text or ''}".rstrip())


def _print_domain_run(report: Any) -> None:
    typer.echo(
        f"{report.domain}: grouped {report.grouped.placed} waiting traces ({report.grouped.new_groups} new groups)"
    )
    if not report.distillations:
        typer.echo("no group is ready to distil (`grpod groups DOMAIN` says why)")
    for run in report.distillations:
        calls = run.calls
        cost = (
            f"{len(calls)} LLM calls, {sum(c.tokens_in for c in calls)} tokens in, "
            f"{sum(c.tokens_out for c in calls)} out"
        )
        if run.status == "distilled":
            _print_operations(f"distillation {run.id} of group {run.group_id} ({cost})", run.operations)
        else:
            typer.echo(f"group {run.group_id}: {run.status}: {run.reason} ({cost})")
    window = report.window
    if window is not None:
        if window.version is not None:
            _print_operations(f"published library version {window.version} of {report.domain}", window.operations)
        else:
            typer.echo(f"library of {report.domain} unchanged: the distillations proposed no change")


domain_app = typer.Typer(help="One domain's settings: show, set, re-embed.", no_args_is_help=True)
app.add_typer(domain_app, name="domain")


def _domain_settings(conn: Any, name: str) -> tuple[Any, Any, Any]:
    """A domain's grouping, learning and publishing settings, from one read of its stored settings."""
    from grpod.workers.distillation import LearningSettings
    from grpod.workers.grouping import DomainSettings
    from grpod.workers.library_store import library_state
    from grpod.workers.promotion import PublishSettings

    stored = library_state(conn, name).settings
    return DomainSettings.from_json(stored), LearningSettings.from_json(stored), PublishSettings.from_json(stored)


def _domain_report(conn: Any, name: str) -> dict[str, Any]:
    from grpod.workers.grouping_store import domain_state

    state = domain_state(conn, name)
    _, learning, publishing = _domain_settings(conn, name)
    return {
        "domain": name,
        "settings": state.settings.to_json() | learning.to_json() | publishing.to_json(),
        "embedding_model": state.embedding_model,
        "embedding_dimension": state.embedding_dimension,
    }


@domain_app.command("show")
def domain_show(
    name: Annotated[str, typer.Argument(metavar="DOMAIN")],
    as_json: JsonOption = False,
) -> None:
    """A domain's settings and the embedding model of its vectors."""
    from grpod.daemon.database import connect

    settings = _settings()
    with connect(_database(settings), connect_timeout=settings.database_connect_timeout) as conn:
        report = _domain_report(conn, name)
    if as_json:
        print_json(report)
        return
    for key, value in report["settings"].items():
        typer.echo(f"{key:20} {value}")
    typer.echo(f"{'embedding_model':20} {report['embedding_model'] or '(none yet)'} ({report['embedding_dimension']})")


@domain_app.command("set")
def domain_set(
    name: Annotated[str, typer.Argument(metavar="DOMAIN")],
    threshold: Annotated[float | None, typer.Option(help="Cosine distance within which a query joins a group.")] = None,
    group_size: Annotated[int | None, typer.Option(help="G: rewarded traces a group needs.")] = None,
    reward_spread: Annotated[float | None, typer.Option(help="Rewards must differ by more than this.")] = None,
    reward_combination: Annotated[
        str | None, typer.Option(help="How several sources' rewards combine: mean, min, max, latest.")
    ] = None,
    agent_objective: Annotated[str | None, typer.Option(help="What the domain's agent is for (in prompts).")] = None,
    learning_objective: Annotated[
        str | None, typer.Option(help="What a good experience for this domain looks like (in prompts).")
    ] = None,
    max_new_experiences: Annotated[int | None, typer.Option(help="K: new experiences one group may propose.")] = None,
    experience_max_words: Annotated[int | None, typer.Option(help="Word limit of an experience.")] = None,
    update_window_seconds: Annotated[
        float | None, typer.Option(help="Distillations wait this long to be published together.")
    ] = None,
    update_window_groups: Annotated[
        int | None, typer.Option(help="... or until this many distillations are waiting.")
    ] = None,
    publish_policy: Annotated[
        str | None, typer.Option(help="auto: new versions become production; gated: candidate first.")
    ] = None,
    promotion_min_traces: Annotated[int | None, typer.Option(help="Rewarded traces per look of the gate.")] = None,
    promotion_margin: Annotated[
        float | None, typer.Option(help="A candidate may be this much worse than production.")
    ] = None,
    auto_rollback: Annotated[
        bool | None, typer.Option("--auto-rollback/--no-auto-rollback", help="Roll back regressions.")
    ] = None,
    rollback_min_traces: Annotated[int | None, typer.Option(help="Rewarded traces per look of rollback.")] = None,
    rollback_margin: Annotated[float | None, typer.Option(help="Roll back when worse by more than this.")] = None,
    test_alpha: Annotated[float | None, typer.Option(help="Error budget of promotion and rollback tests.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Change a domain's grouping and learning settings (validated; the embedding model changes with `reembed`)."""
    from grpod.daemon.database import connect
    from grpod.workers import distillation, promotion
    from grpod.workers.grouping import SettingError, validated_settings
    from grpod.workers.grouping_store import set_settings

    settings = _settings()
    with connect(_database(settings), connect_timeout=settings.database_connect_timeout) as conn:
        current, learning, current_publishing = _domain_settings(conn, name)
        given = {
            "agent_objective": agent_objective,
            "learning_objective": learning_objective,
            "max_new_experiences": max_new_experiences,
            "experience_max_words": experience_max_words,
            "update_window_seconds": update_window_seconds,
            "update_window_groups": update_window_groups,
        }
        publishing = {
            "publish_policy": publish_policy,
            "promotion_min_traces": promotion_min_traces,
            "promotion_margin": promotion_margin,
            "auto_rollback": auto_rollback,
            "rollback_min_traces": rollback_min_traces,
            "rollback_margin": rollback_margin,
            "test_alpha": test_alpha,
        }
        try:
            wanted = validated_settings(
                current.group_threshold if threshold is None else threshold,
                current.group_size if group_size is None else group_size,
                current.reward_spread if reward_spread is None else reward_spread,
                current.reward_combination if reward_combination is None else reward_combination,
            )
            wanted_learning = distillation.validated_learning_settings(
                **(learning.to_json() | {key: value for key, value in given.items() if value is not None})
            )
            wanted_publishing = promotion.validated_publish_settings(
                **(current_publishing.to_json() | {k: v for k, v in publishing.items() if v is not None})
            )
        except (SettingError, distillation.SettingError, promotion.SettingError) as error:
            raise OperatorError(f"{error}; nothing was changed.") from None
        set_settings(conn, name, wanted, wanted_learning.to_json() | wanted_publishing.to_json())
        conn.commit()
        report = _domain_report(conn, name)
    if as_json:
        print_json(report)
        return
    typer.echo(f"domain {name}: " + ", ".join(f"{k}={v}" for k, v in report["settings"].items()))


@domain_app.command("reembed")
def domain_reembed(
    name: Annotated[str, typer.Argument(metavar="DOMAIN")],
    as_json: JsonOption = False,
) -> None:
    """Embed and group all of a domain's traces again with the configured model (GRPOD_EMBEDDINGS)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from grpod.daemon.database import connect
    from grpod.workers.embeddings import process_embedder
    from grpod.workers.grouping_store import reembed

    settings = _settings()
    embedder = process_embedder()
    progress = Progress(
        TextColumn("re-embedding"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=as_json,
    )
    with (
        progress,
        connect(_database(settings), autocommit=True, connect_timeout=settings.database_connect_timeout) as conn,
    ):
        task = progress.add_task("reembed", total=None)

        def advance(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        run = reembed(conn, embedder, name, advance)
        report = _domain_report(conn, name)
    summary = {**report, "traces": run.placed, "groups": run.new_groups, "ready_groups": len(run.ready)}
    if as_json:
        print_json(summary)
        return
    typer.echo(
        f"domain {name}: {run.placed} traces in {run.new_groups} groups with {report['embedding_model']} "
        f"({report['embedding_dimension']} dimensions); {len(run.ready)} groups ready"
    )


def _add_library_commands() -> None:
    from grpod.daemon.library_cli import library_app

    app.add_typer(library_app, name="library")


_add_library_commands()


def main() -> None:
    """Entry point: run the app, turning known errors into one sentence and exit code 2."""
    try:
        app(standalone_mode=True)
    except (ConfigError, OperatorError) as error:
        sys.stderr.write(f"grpod: {error}\n")
        sys.exit(2)
