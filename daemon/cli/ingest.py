"""`grpod ingest FILE` and `grpod rejected`: events in from a file, and the events that were not stored."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from grpod.daemon.cli.app import JsonOption, app, command_settings, migrated_database, print_json
from grpod.schema.errors import OperatorError


@app.command()
def ingest(
    file: Annotated[str, typer.Argument(help="A JSON-lines file of trace and reward events, or - for standard input.")],
    as_json: JsonOption = False,
) -> None:
    """Load events from a file through the same validation and storage as the queue (backfill)."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

    from grpod.daemon.backfill import backfill, summary
    from grpod.daemon.database import connect

    settings = command_settings()
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
    with (
        progress,
        stream,
        connect(migrated_database(settings), connect_timeout=settings.database_connect_timeout) as conn,
    ):
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
    domain: Annotated[str | None, typer.Option(help="Only the events that named this domain.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many, newest first.")] = 50,
    as_json: JsonOption = False,
) -> None:
    """List rejected events, newest first."""
    if ctx.invoked_subcommand is not None:
        return
    from grpod.daemon.database import connect
    from grpod.daemon.rejected import list_rejected

    settings = command_settings()
    with connect(migrated_database(settings), connect_timeout=settings.database_connect_timeout) as conn:
        rows = list_rejected(conn, reason, limit, [domain] if domain is not None else None)
    if as_json:
        print_json(rows)
        return
    table = Table("id", "received", "domain", "reason", "detail", "trace", "replayed", title="rejected events")
    for row in rows:
        table.add_row(
            str(row["id"]),
            row["received_at"][:19],
            row["domain"] or "",
            row["reason"],
            escape(row["detail"][:80]),  # the event's own text: markup in it is shown, not obeyed
            escape(row["trace_id"] or ""),
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

    settings = command_settings()
    with connect(migrated_database(settings), connect_timeout=settings.database_connect_timeout) as conn:
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
