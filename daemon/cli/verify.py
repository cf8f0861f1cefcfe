"""`grpod verify ANSWER GROUND_TRUTH`: what a verifier makes of one answer; no database needed."""

from __future__ import annotations

from typing import Annotated

import typer

from grpod.daemon.cli.app import app, print_json


@app.command()
def verify(
    answer: Annotated[str, typer.Argument(metavar="ANSWER", help="The answer, as the agent gave it.")],
    ground_truth: Annotated[str, typer.Argument(metavar="GROUND_TRUTH", help="The right answer.")],
    verifier: Annotated[
        str, typer.Option("--verifier", help="math, exact, or module:function (a verifier of your own).")
    ] = "math",
    as_json: Annotated[bool, typer.Option("--json", help="Print the verdict as one JSON object.")] = False,
) -> None:
    """Check one answer against its ground truth, as `grpod train`/`grpod eval` would: exit code 0
    when it is correct, 1 when not."""
    from grpod.workers.verifiers import load_verifier

    verdict = load_verifier(verifier)(answer, ground_truth)
    if as_json:
        print_json(verdict.to_json())
    else:
        typer.echo(f"{'correct' if verdict.correct else 'incorrect'}: {verdict.reason}")
        typer.echo(f"extracted answer: {verdict.extracted}" if verdict.extracted is not None else "no answer extracted")
    raise typer.Exit(0 if verdict.correct else 1)
