"""`grpod migrate --read-only-role NAME`: a database role that reads every grpod table and changes
nothing, for operators who want SQL. Its password comes from GRPOD_READ_ONLY_PASSWORD and is never
shown; running it again sets the password again and grants the tables made since."""

from __future__ import annotations

import re
from typing import Any

import psycopg
from psycopg import sql

from grpod.schema.errors import OperatorError
from grpod.schema.sql import load_queries

ROLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def ensure_read_only_role(conn: psycopg.Connection[Any], role: str, password: str) -> bool:
    """Create (True) or update (False) the role, and grant it read access to every table."""
    if not ROLE_NAME.match(role):
        raise OperatorError(f"a role name is 1 to 63 lower-case letters, digits and _, not {role!r}.")
    if len(password) < 12:
        raise OperatorError("GRPOD_READ_ONLY_PASSWORD must hold the role's password, of 12 characters or more.")
    named = load_queries("grpod.schema", "queries/roles.sql")
    database = conn.execute("SELECT current_database()").fetchone()
    assert database is not None
    values = {
        "role": sql.Identifier(role),
        "password": sql.Literal(password),
        "database": sql.Identifier(str(database[0])),
    }
    with conn.transaction():
        created = conn.execute(named["role_exists"], {"role": role}).fetchone() is None
        statement = named["create_role"] if created else named["set_role_password"]
        conn.execute(sql.SQL(statement).format(**values))
        conn.execute(sql.SQL(named["grant_read_only"]).format(**values))
    return created
