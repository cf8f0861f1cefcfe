"""`grpod token create|list|revoke`: the HTTP API's bearer tokens."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from grpod.daemon.cli.app import JsonOption, app, command_settings, migrated_database, print_json

token_app = typer.Typer(help="The HTTP API's bearer tokens: create, list, revoke.", no_args_is_help=True)
app.add_typer(token_app, name="token")


@contextmanager
def _connection() -> Iterator[Any]:
    from grpod.daemon.database import connect

    settings = command_settings()
    with connect(
        migrated_database(settings), autocommit=True, connect_timeout=settings.database_connect_timeout
    ) as conn:
        yield conn


@token_app.command("create")
def create(
    name: Annotated[str, typer.Argument(metavar="NAME", help="What the token is for (kept as the actor).")],
    domain: Annotated[list[str] | None, typer.Option("--domain", help="A domain it may reach (repeat).")] = None,
    all_domains: Annotated[bool, typer.Option("--all-domains", help="Every domain, now and later.")] = False,
    scope: Annotated[
        list[str] | None, typer.Option("--scope", help="publish, read or operate (repeat for several).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Make a token and print it, once: only its hash is stored."""
    from grpod.daemon import access, token_store

    wanted = access.validated(name, domain or [], all_domains, scope or [])
    with _connection() as conn:
        token, secret = token_store.create(conn, wanted)
    if as_json:
        print_json(
            {
                "name": token.name,
                "token": secret,
                "domains": list(token.domains) if token.domains is not None else "all",
                "scopes": list(token.scopes),
            }
        )
        return
    reach = ", ".join(token.domains) if token.domains is not None else "every domain"
    typer.echo(f"token {token.name} ({', '.join(token.scopes)} on {reach}); it is shown this once:")
    typer.echo(secret)


@token_app.command("list")
def list_tokens(as_json: JsonOption = False) -> None:
    """The tokens, newest first: name, domains, scopes, when made, last used and revoked (never the token)."""
    from grpod.daemon import token_store

    with _connection() as conn:
        found = token_store.tokens(conn)
    if as_json:
        print_json([token.to_json() for token in found])
        return
    table = Table("name", "domains", "scopes", "created", "last used", "revoked")
    for token in found:
        row = token.to_json()
        domains = row["domains"]
        table.add_row(
            token.name,
            ", ".join(domains) if isinstance(domains, list) else "all",
            ", ".join(token.scopes),
            str(row["created_at"] or "")[:19],
            str(row["last_used_at"] or "")[:19],
            str(row["revoked_at"] or "")[:19],
        )
    Console().print(table)


@token_app.command("revoke")
def revoke(name: Annotated[str, typer.Argument(metavar="NAME")]) -> None:
    """Revoke a token: from now on it gets 401."""
    from grpod.daemon import token_store

    with _connection() as conn:
        token_store.revoke(conn, name)
    typer.echo(f"token {name} revoked")
