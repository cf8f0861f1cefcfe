"""`grpod library ...`: what operators do with a domain's experience library."""

from __future__ import annotations

import getpass
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from grpod.daemon.cli.app import app
from grpod.schema.errors import OperatorError

if TYPE_CHECKING:
    import psycopg

library_app = typer.Typer(
    help="A domain's experience library: show, history, diff, rollback, promote, pin, freeze, export, import.",
    no_args_is_help=True,
)
app.add_typer(library_app, name="library")

Domain = Annotated[str, typer.Argument(metavar="DOMAIN", help="The domain.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
Reason = Annotated[str, typer.Option(help="Why: kept in the audit log.")]
Actor = Annotated[str | None, typer.Option(help="Who: kept in the audit log (default: operator:<login name>).")]


@contextmanager
def _connection() -> Iterator[psycopg.Connection[Any]]:
    from grpod.daemon.cli.app import command_settings, migrated_database
    from grpod.daemon.database import connect

    settings = command_settings()
    with connect(
        migrated_database(settings), autocommit=True, connect_timeout=settings.database_connect_timeout
    ) as conn:
        yield conn


def _actor(actor: str | None) -> str:
    if actor:
        return actor
    try:
        return f"operator:{getpass.getuser()}"
    except (KeyError, OSError):  # no login name (a container without a passwd entry)
        return "operator"


def _print_json(value: Any) -> None:
    from grpod.daemon.cli.app import print_json

    print_json(value)


@library_app.command("show")
def show(
    domain: Domain,
    version: Annotated[int | None, typer.Option(help="This version (default: production).")] = None,
    label: Annotated[
        str | None, typer.Option(help="The version this label points at: production or candidate.")
    ] = None,
    format: Annotated[
        str, typer.Option("--format", help="text, json or prompt (the block agents put in their prompt).")
    ] = "text",
    token_budget: Annotated[int | None, typer.Option(help="With --format prompt: at most this many tokens.")] = None,
    as_json: JsonOption = False,
) -> None:
    """A version of the library (production by default) with its experiences and their provenance."""
    from grpod.daemon import library_admin
    from grpod.schema.library import render_prompt

    if format not in ("text", "json", "prompt"):
        raise OperatorError(f"--format must be text, json or prompt, not {format!r}.")
    with _connection() as conn:
        report = library_admin.show(conn, domain, version=version, label=label)
    if as_json or format == "json":
        _print_json(report)
        return
    texts = {e["id"]: e["text"] for e in report["experiences"]}
    if format == "prompt":
        usefulness = {e["id"]: e.get("usefulness") for e in report["experiences"]}
        typer.echo(render_prompt(texts, token_budget, usefulness))
        return
    labels = f" ({', '.join(report['labels'])})" if report["labels"] else ""
    state = []
    if report["pinned"] is not None:
        state.append(f"pinned at {report['pinned']}")
    if report["frozen"]:
        state.append("frozen")
    typer.echo(f"{domain} library version {report['version']}{labels}{'; ' + ', '.join(state) if state else ''}")
    if not texts:
        typer.echo("  (no experiences)")
    for experience in report["experiences"]:
        origin = experience["provenance"][-1] if experience["provenance"] else {}
        source = f"  (v{origin.get('version')}, groups {origin.get('groups', [])})" if origin else ""
        typer.echo(f"  [{experience['id']}] {experience['text']}{source}")


@library_app.command("history")
def history(
    domain: Domain,
    limit: Annotated[int, typer.Option(min=1, help="At most this many versions, newest first.")] = 50,
    as_json: JsonOption = False,
) -> None:
    """The versions, newest first: parent, who made them and why, labels, and the rewards of their traces."""
    from grpod.daemon import library_admin

    with _connection() as conn:
        rows = library_admin.history(conn, domain, limit)
    if as_json:
        _print_json(rows)
        return
    table = Table("version", "parent", "labels", "by", "experiences", "traces", "mean reward", "reason", title=domain)
    for row in rows:
        reward = row["reward"]
        table.add_row(
            str(row["version"]),
            str(row["parent"]),
            ", ".join(row["labels"]),
            row["created_by"],
            str(row["experiences"]),
            str(reward["traces"]),
            f"{reward['mean']:.3f}" if reward["mean"] is not None else "-",
            escape(row["reason"]),
        )
    Console().print(table)


@library_app.command("log")
def log(
    domain: Domain,
    limit: Annotated[int, typer.Option(min=1, help="At most this many entries, newest first.")] = 50,
    as_json: JsonOption = False,
) -> None:
    """The audit log: every label move, pin and freeze, with who, why and the statistics behind it."""
    from grpod.daemon import library_admin

    with _connection() as conn:
        rows = library_admin.events(conn, domain, limit)
    if as_json:
        _print_json(rows)
        return
    table = Table("when", "action", "label", "from", "to", "actor", "reason", title=f"{domain}: audit log")
    for row in rows:
        table.add_row(
            row["created_at"][:19],
            row["action"],
            row["label"] or "",
            "" if row["from_version"] is None else str(row["from_version"]),
            "" if row["to_version"] is None else str(row["to_version"]),
            escape(row["actor"]),
            escape(row["reason"]),
        )
    Console().print(table)


@library_app.command("diff")
def diff(
    domain: Domain,
    a: Annotated[int, typer.Argument(metavar="A", help="From this version.")],
    b: Annotated[int, typer.Argument(metavar="B", help="To this version.")],
    as_json: JsonOption = False,
) -> None:
    """Experiences added, removed and changed from version A to version B."""
    from grpod.daemon import library_admin

    with _connection() as conn:
        report = library_admin.diff(conn, domain, a, b)
    if as_json:
        _print_json(report)
        return
    typer.echo(f"{domain}: version {a} -> {b}")
    for experience in report["added"]:
        typer.echo(f"+ [{experience['id']}] {experience['text']}")
    for experience in report["removed"]:
        typer.echo(f"- [{experience['id']}] {experience['text']}")
    for change in report["changed"]:
        typer.echo(f"~ [{change['id']}] {change['from']}\n    -> {change['to']}")
    if not (report["added"] or report["removed"] or report["changed"]):
        typer.echo("  (no difference)")


@library_app.command("export")
def export(
    domain: Domain,
    version: Annotated[int | None, typer.Option(help="This version (default: production).")] = None,
    output: Annotated[
        str | None, typer.Option("--output", metavar="FILE", help="Write it to FILE (default: standard output).")
    ] = None,
) -> None:
    """A version as a JSON file to share: its experiences, their provenance summarised, the model(s) that learned it."""
    from grpod.daemon import library_admin

    with _connection() as conn:
        document = library_admin.export_version(conn, domain, version)
    if output is None or output == "-":
        sys.stdout.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
        return
    library_admin.write_document(document, output)
    typer.echo(
        f"{domain}: version {document['version']} ({len(document['experiences'])} experience(s), "
        f"learned with {', '.join(document['models'])}) written to {output}"
    )


@library_app.command("import")
def import_(
    domain: Domain,
    file: Annotated[
        str, typer.Argument(metavar="FILE", help="A file `grpod library export` wrote (-: standard input).")
    ],
    reason: Reason,
    actor: Actor = None,
    as_json: JsonOption = False,
) -> None:
    """Make an exported library a new version of DOMAIN: always the candidate, judged by the reward gate."""
    from grpod.daemon import library_admin
    from grpod.workers.library_transfer import MAX_DOCUMENT_BYTES, read_document

    # The file is read and checked before anything connects: a bad one changes nothing.
    if file == "-":
        document = read_document(sys.stdin.buffer.read(MAX_DOCUMENT_BYTES + 1), "standard input")
    else:
        document = library_admin.read_document_file(file)
    with _connection() as conn:
        report = library_admin.import_document(conn, domain, document, reason=reason, actor=_actor(actor))
    if report["model_warning"]:
        typer.echo(f"grpod: warning: {report['model_warning']}", err=True)
    if as_json:
        _print_json(report)
        return
    source = report["source"]
    origin = f"{source['domain']} version {source['version']}"
    if report["version"] is None:
        typer.echo(f"{domain}: no new version: none of the {len(document.experiences)} experiences of {origin} is new")
    else:
        typer.echo(
            f"{domain}: version {report['version']} (candidate) from {report['parent']}: "
            f"{len(report['added'])} experience(s) imported from {origin}, {len(report['skipped'])} already there"
        )
    for experience in report["added"]:
        typer.echo(f"+ [{experience['id']}] {experience['text']}")
    for note in report["notes"]:
        typer.echo(f"  {note['action']}: {note['proposed']}: {note['why']}")


def _act(
    action: Callable[[psycopg.Connection[Any]], dict[str, Any]], as_json: bool, say: Callable[[dict[str, Any]], str]
) -> None:
    with _connection() as conn:
        report = action(conn)
    if as_json:
        _print_json(report)
    else:
        typer.echo(say(report))


@library_app.command("rollback")
def rollback(
    domain: Domain,
    to: Annotated[int, typer.Option("--to", help="The version production goes back to.")],
    reason: Annotated[str, typer.Option(help="Why: kept in the audit log.")],
    actor: Actor = None,
    as_json: JsonOption = False,
) -> None:
    """Move production back to an earlier version (history is kept; learning builds on it from now on)."""
    from grpod.daemon import library_admin

    _act(
        lambda conn: library_admin.rollback(conn, domain, to, reason=reason, actor=_actor(actor)),
        as_json,
        lambda r: f"{domain}: production rolled back from version {r['from']} to {r['to']}",
    )


@library_app.command("promote")
def promote(
    domain: Domain,
    version: Annotated[int, typer.Argument(metavar="N", help="The version to make production.")],
    reason: Reason = "promoted by an operator",
    actor: Actor = None,
    as_json: JsonOption = False,
) -> None:
    """Make a version production now, without waiting for the reward gate."""
    from grpod.daemon import library_admin

    _act(
        lambda conn: library_admin.promote(conn, domain, version, reason=reason, actor=_actor(actor)),
        as_json,
        lambda r: f"{domain}: version {r['to']} is production (was {r['from']})",
    )


@library_app.command("pin")
def pin(
    domain: Domain,
    version: Annotated[int | None, typer.Option(help="Pin this version (default: production as it is).")] = None,
    reason: Reason = "pinned by an operator",
    actor: Actor = None,
    as_json: JsonOption = False,
) -> None:
    """Hold production at one version whatever gets learned (new versions wait as candidates)."""
    from grpod.daemon import library_admin

    _act(
        lambda conn: library_admin.pin(conn, domain, version, reason=reason, actor=_actor(actor)),
        as_json,
        lambda r: f"{domain}: production pinned at version {r['pinned']}",
    )


@library_app.command("unpin")
def unpin(
    domain: Domain, reason: Reason = "unpinned by an operator", actor: Actor = None, as_json: JsonOption = False
) -> None:
    """Let production move again."""
    from grpod.daemon import library_admin

    _act(
        lambda conn: library_admin.unpin(conn, domain, reason=reason, actor=_actor(actor)),
        as_json,
        lambda r: f"{domain}: production unpinned",
    )


@library_app.command("freeze")
def freeze(
    domain: Domain, reason: Reason = "frozen by an operator", actor: Actor = None, as_json: JsonOption = False
) -> None:
    """Stop learning for the domain (its events are still stored; its library still serves)."""
    from grpod.daemon import library_admin

    _act(
        lambda conn: library_admin.set_frozen(conn, domain, True, reason=reason, actor=_actor(actor)),
        as_json,
        lambda r: f"{domain}: frozen; nothing is learned until `grpod library unfreeze {domain}`",
    )


@library_app.command("unfreeze")
def unfreeze(
    domain: Domain, reason: Reason = "unfrozen by an operator", actor: Actor = None, as_json: JsonOption = False
) -> None:
    """Resume learning for the domain."""
    from grpod.daemon import library_admin

    _act(
        lambda conn: library_admin.set_frozen(conn, domain, False, reason=reason, actor=_actor(actor)),
        as_json,
        lambda r: f"{domain}: learning again",
    )
