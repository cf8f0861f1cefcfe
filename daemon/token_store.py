"""The HTTP API's tokens in PostgreSQL: made (the secret shown once, its hash stored), found by
their secret, listed, revoked."""

from __future__ import annotations

from typing import Any, cast

import psycopg

from grpod.daemon.access import Scope, Token, new_secret, token_hash
from grpod.schema.errors import OperatorError
from grpod.schema.sql import load_queries

QUERIES = ("grpod.schema", "queries/tokens.sql")


def _token(row: Any) -> Token:
    name, domains, scopes, created, used, revoked = row
    return Token(
        str(name),
        tuple(domains) if domains is not None else None,
        tuple(cast(Scope, scope) for scope in scopes),
        created,
        used,
        revoked,
    )


def create(conn: psycopg.Connection[Any], wanted: Token) -> tuple[Token, str]:
    """Store a new token; returns it and its secret, which nothing stores."""
    secret = new_secret()
    try:
        with conn.transaction():
            row = conn.execute(
                load_queries(*QUERIES)["insert_token"],
                {
                    "name": wanted.name,
                    "token_hash": token_hash(secret),
                    "domains": list(wanted.domains) if wanted.domains is not None else None,
                    "scopes": list(wanted.scopes),
                },
            ).fetchone()
    except psycopg.errors.UniqueViolation:
        raise OperatorError(
            f"a token named {wanted.name!r} exists; `grpod token revoke {wanted.name}` first, or pick another name."
        ) from None
    return _token(row), secret


def authenticate(conn: psycopg.Connection[Any], secret: str) -> Token | None:
    """The active token with this secret (its last use marked, to the minute), or None."""
    row = conn.execute(load_queries(*QUERIES)["active_token"], {"token_hash": token_hash(secret)}).fetchone()
    return _token(row) if row is not None else None


def tokens(conn: psycopg.Connection[Any]) -> list[Token]:
    return [_token(row) for row in conn.execute(load_queries(*QUERIES)["tokens"])]


def revoke(conn: psycopg.Connection[Any], name: str) -> None:
    with conn.transaction():
        row = conn.execute(load_queries(*QUERIES)["revoke_token"], {"name": name}).fetchone()
    if row is None:
        raise OperatorError(f"there is no active token named {name!r}; `grpod token list` shows them.")
