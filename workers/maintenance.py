"""Maintenance stage: liveness of the service's processes."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from typing import Any

import psycopg
from psycopg.rows import class_row

from grpod.schema.sql import load_queries

QUERIES = ("grpod.schema", "queries/heartbeats.sql")
PROCESS_STARTED_AT = datetime.now(UTC)


@dataclass(frozen=True)
class Heartbeat:
    role: str
    hostname: str
    pid: int
    version: str
    started_at: datetime


@dataclass(frozen=True)
class SeenProcess:
    role: str
    hostname: str
    pid: int
    version: str
    started_at: datetime
    seen_at: datetime
    age_seconds: float
    state: str | None = None  # an ingest consumer's: consuming, waiting_for_database, ...


def this_process(role: str, started_at: datetime) -> Heartbeat:
    return Heartbeat(
        role=role,
        hostname=socket.gethostname(),
        pid=os.getpid(),
        version=version("grpod"),
        started_at=started_at,
    )


def record_heartbeats(conn: psycopg.Connection[tuple[object, ...]], beats: list[Heartbeat]) -> None:
    query = load_queries(*QUERIES)["beat_heart"]
    with conn.transaction(), conn.cursor() as cursor:
        cursor.executemany(
            query,
            [
                {
                    "role": beat.role,
                    "hostname": beat.hostname,
                    "pid": beat.pid,
                    "version": beat.version,
                    "started_at": beat.started_at,
                }
                for beat in beats
            ],
        )


def fetch_heartbeats(conn: psycopg.Connection[tuple[object, ...]]) -> list[SeenProcess]:
    with conn.cursor(row_factory=class_row(SeenProcess)) as cursor:
        return cursor.execute(load_queries(*QUERIES)["fetch_heartbeats"]).fetchall()


def expire_orphan_rewards(conn: psycopg.Connection[Any], ttl_seconds: int) -> int:
    """Move rewards whose trace never came into the rejected store; returns how many."""
    with conn.transaction():
        rows = conn.execute(
            load_queries("grpod.schema", "queries/ingest.sql")["expire_orphan_rewards"], {"ttl_seconds": ttl_seconds}
        ).fetchall()
    return len(rows)


def record_consumer_state(conn: psycopg.Connection[Any], hostname: str, pid: int, state: str) -> None:
    """What this host's ingest consumer is doing (consuming, waiting for the database, ...)."""
    conn.execute(
        load_queries(*QUERIES)["record_consumer_state"],
        {"hostname": hostname, "pid": pid, "version": version("grpod"), "state": state},
    )
