"""`grpod distill DOMAIN` and `grpod distill --replay ID`: learning now, in this process, and replaying it."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from rich.console import Console

from grpod.daemon.cli.app import JsonOption, app, command_settings, migrated_database, print_json
from grpod.schema.errors import OperatorError


@app.command()
def distill(
    domain: Annotated[str | None, typer.Argument(help="The domain to distill now.")] = None,
    group: Annotated[int | None, typer.Option("--group", help="Distill only this group.")] = None,
    replay: Annotated[
        int | None, typer.Option("--replay", metavar="ID", help="Re-run a recorded distillation, with no LLM.")
    ] = None,
    retry_failed: Annotated[
        bool, typer.Option("--retry-failed", help="Take again the distillations that failed for good.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Distill a domain now, in this process: group its waiting traces, distill its ready groups, publish."""
    from grpod.daemon.database import connect
    from grpod.workers.replay import replay as replay_distillation

    settings = command_settings()
    if (domain is None) == (replay is None):
        raise OperatorError("give either a DOMAIN to distill or --replay ID, not both or neither.")
    with connect(
        migrated_database(settings), autocommit=True, connect_timeout=settings.database_connect_timeout
    ) as conn:
        if replay is not None:
            replayed = replay_distillation(conn, replay)
            if as_json:
                print_json(replayed.to_json())
            else:
                _print_operations(f"distillation {replay} replayed from its recording", replayed.operations)
            if not replayed.same:
                sys.stderr.write(f"grpod: the replay of distillation {replay} gave other operations than recorded\n")
                raise typer.Exit(1)
            return
        assert domain is not None
        report = _distill_domain(conn, domain, group, retry_failed=retry_failed, quiet=as_json)
    if as_json:
        print_json(report.to_json())
        return
    _print_domain_run(report)


def _distill_domain(conn: Any, domain: str, group: int | None, *, retry_failed: bool, quiet: bool) -> Any:
    from rich.status import Status

    from grpod.daemon import distill_domain
    from grpod.daemon.ports import process_embedder, process_llm
    from grpod.workers import grouping_store

    grouping_store.prepare(conn)
    with Status("grouping", console=Console(stderr=True, quiet=quiet)) as status:
        return distill_domain.distill_domain(
            conn,
            process_llm,
            process_embedder,
            domain,
            group_id=group,
            retry_failed=retry_failed,
            progress=status.update,
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
        typer.echo("no group is ready to distill (`grpod groups DOMAIN` says why)")
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
