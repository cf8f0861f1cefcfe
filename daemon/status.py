"""What `grpod status` reports, gathered as plain data."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from grpod.daemon.database import connect, redact
from grpod.daemon.settings import Settings
from grpod.daemon.sql import load_queries
from grpod.workers.maintenance import fetch_heartbeats


def collect_status(settings: Settings, database_url: str) -> dict[str, Any]:
    migrations = load_queries("grpod.schema", "queries/migrations.sql")
    with connect(database_url, connect_timeout=settings.database_connect_timeout) as conn:
        table = conn.execute(migrations["migrations_table_exists"]).fetchone()
        schema_version = 0
        if table is not None and table[0]:
            row = conn.execute(migrations["current_version"]).fetchone()
            schema_version = int(row[0]) if row else 0
        processes = [asdict(process) for process in fetch_heartbeats(conn)] if schema_version >= 2 else []
    return {
        "database": redact(database_url),
        "database_mode": "embedded" if settings.embedded_database else "external",
        "schema_version": schema_version,
        "broker": redact(settings.effective_broker_url()),
        "broker_mode": "embedded" if settings.embedded_broker else "external",
        "home": str(settings.home),
        "processes": processes,
    }
