"""What `grpod status` and `grpod domains` report, gathered as plain data."""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict
from typing import Any

import psycopg

from grpod.daemon.database import connect, redact
from grpod.daemon.settings import Settings
from grpod.schema.spool import spool_depth
from grpod.schema.sql import load_queries
from grpod.schema.topology import events_queue, is_rabbitmq, queue_name
from grpod.workers.maintenance import fetch_heartbeats

STATS = ("grpod.schema", "queries/stats.sql")


def schema_version(conn: psycopg.Connection[Any]) -> int:
    migrations = load_queries("grpod.schema", "queries/migrations.sql")
    table = conn.execute(migrations["migrations_table_exists"]).fetchone()
    if table is None or not table[0]:
        return 0
    row = conn.execute(migrations["current_version"]).fetchone()
    return int(row[0]) if row else 0


def domain_counts(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    rows = conn.execute(load_queries(*STATS)["domain_counts"]).fetchall()
    return [{"domain": name, "traces": traces, "rewarded_traces": rewarded} for name, traces, rewarded in rows]


def _scalar(conn: psycopg.Connection[Any], name: str) -> Any:
    row = conn.execute(load_queries(*STATS)[name]).fetchone()
    return None if row is None else row[0]


def queue_depths(settings: Settings) -> dict[str, int | None]:
    """Messages waiting per queue; None where the broker could not be asked."""
    from grpod.daemon.celery_app import STAGES

    url = settings.effective_broker_url()
    names = ["events", *STAGES]
    if not is_rabbitmq(url):
        return _embedded_depths(settings, names)
    from kombu.connection import Connection
    from kombu.entity import Queue

    depths: dict[str, int | None] = dict.fromkeys(names)
    try:
        with Connection(url, connect_timeout=3) as connection:
            connection.ensure_connection(max_retries=1, timeout=3)
            for name in names:
                full = (
                    events_queue(settings.queue_prefix, url, settings.delivery_limit).name
                    if name == "events"
                    else queue_name(settings.queue_prefix, name)
                )
                with contextlib.suppress(Exception):
                    _, count, _ = Queue(full)(connection.channel()).queue_declare(passive=True)
                    depths[name] = int(count)
    except Exception:
        return depths
    return depths


def _embedded_depths(settings: Settings, names: list[str]) -> dict[str, int | None]:
    depths: dict[str, int | None] = {}
    spool = settings.event_spool
    depths["events"] = spool_depth(spool) if spool.is_dir() else 0
    task_folder = settings.broker_folder / "queue"
    files = [e.name for e in os.scandir(task_folder)] if task_folder.is_dir() else []
    for name in names[1:]:
        # kombu's filesystem transport names each message file after its queue.
        suffix = f".{queue_name(settings.queue_prefix, name)}.msg"
        depths[name] = sum(1 for file in files if file.endswith(suffix))
    return depths


def collect_status(settings: Settings, database_url: str) -> dict[str, Any]:
    with connect(database_url, connect_timeout=settings.database_connect_timeout) as conn:
        version = schema_version(conn)
        processes = [asdict(process) for process in fetch_heartbeats(conn)] if version >= 2 else []
        ingest: dict[str, Any] = {"domains": [], "pending_rewards": 0, "expired_rewards": 0, "rejected": 0}
        if version >= 3:
            rejected: dict[str, int] = dict(conn.execute(load_queries(*STATS)["rejected_counts"]).fetchall())
            last = _scalar(conn, "last_accepted_at")
            ingest = {
                "domains": domain_counts(conn),
                "pending_rewards": int(_scalar(conn, "pending_rewards") or 0),
                "expired_rewards": int(rejected.get("reward_expired", 0)),
                "rejected": sum(rejected.values()),
                "rejected_by_reason": rejected,
                "last_accepted_at": last.isoformat() if last is not None else None,
            }
        learning: dict[str, Any] = {}
        if version >= 5:
            queries = load_queries(*STATS)
            by_status = {str(k): int(v) for k, v in conn.execute(queries["distillation_counts"]).fetchall()}
            calls = conn.execute(queries["llm_totals"]).fetchone()
            learning = {
                "distillations": {
                    s: by_status.get(s, 0)
                    for s in ("running", "failed", "distilled", "applied", "refused", "superseded")
                },
                "library_versions": int(_scalar(conn, "library_version_count") or 0),
                "llm_calls": {
                    "calls": int(calls[0]) if calls else 0,
                    "tokens_in": int(calls[1]) if calls else 0,
                    "tokens_out": int(calls[2]) if calls else 0,
                },
            }
    return {
        "database": redact(database_url),
        "database_mode": "embedded" if settings.embedded_database else "external",
        "schema_version": version,
        "broker": redact(settings.effective_broker_url()),
        "broker_mode": "embedded" if settings.embedded_broker else "external",
        "home": str(settings.home),
        **ingest,
        **learning,
        "queues": queue_depths(settings),
        "processes": processes,
    }
