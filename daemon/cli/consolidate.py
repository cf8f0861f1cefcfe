"""`grpod consolidate DOMAIN`: merge near-duplicates and keep the library within its budgets, now."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from grpod.daemon.cli.app import JsonOption, app, command_settings, migrated_database, print_json


@app.command()
def consolidate(
    domain: Annotated[str, typer.Argument(metavar="DOMAIN", help="The domain whose library to consolidate.")],
    as_json: JsonOption = False,
) -> None:
    """Consolidate a domain's library now: merge near-duplicates, retire the least useful beyond its
    budgets (max_experiences, max_prompt_tokens), and score the rest; one new version if anything changed."""
    from grpod.daemon.database import connect
    from grpod.daemon.ports import process_embedder, process_llm
    from grpod.workers import consolidation_store, library_store

    settings = command_settings()
    with connect(
        migrated_database(settings), autocommit=True, connect_timeout=settings.database_connect_timeout
    ) as conn:
        library_store.library_state(conn, domain)  # an unknown domain is one sentence
        run = consolidation_store.consolidate(conn, process_llm(), process_embedder(), domain)
    if as_json:
        print_json(run.to_json())
        return
    _print_run(run.to_json())


def _print_run(report: dict[str, Any]) -> None:
    before, after = report["experiences"]["before"], report["experiences"]["after"]
    tokens = report["prompt_tokens"]
    if report["status"] != "published":
        why = {
            "no_change": "nothing to merge, nothing over budget, scores as stored",
            "empty": "its library is empty",
            "frozen": "it is frozen (`grpod library unfreeze` lets it learn again)",
            "busy": "its library kept changing under the consolidation; the next one tries again",
        }[report["status"]]
        typer.echo(f"{report['domain']}: no new version: {why}")
        return
    typer.echo(
        f"{report['domain']}: version {report['version']} ({report['label'] or 'no label'}) from {report['parent']}: "
        f"{before} -> {after} experiences, prompt block {tokens['before']} -> {tokens['after']} tokens"
    )
    for merge in report["merged"]:
        names = ", ".join(f"[{i}]" for i in merge["merged"])
        typer.echo(f"  merged {names} into [{merge['into']}]: {merge['text']}")
    for retired in report["retired"]:
        typer.echo(f"  retired [{retired['id']}] {retired['text']}  ({retired['why']})")
    if report["rescored"]:
        typer.echo(f"  scored {report['rescored']} experience(s)")
    for note in report["notes"]:
        typer.echo(f"  {note['action']}: {note['proposed']}: {note['why']}")
