"""Library versions, the database shell: read a version, append the next one.

Versions are append-only (a trigger refuses any change to a stored one). Only the domain update,
which holds the domain's update lock, writes them; labels, rollback and serving build on this.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from grpod.daemon.sql import load_queries
from grpod.workers.library import Experience, Library, Provenance, next_experiences
from grpod.workers.operations import Note, Operation

QUERIES = ("grpod.schema", "queries/library.sql")


def _queries() -> Any:
    return load_queries(*QUERIES)


def current_version(conn: psycopg.Connection[Any], domain: str) -> int:
    """The version new learning builds on (0: the empty library)."""
    row = conn.execute(_queries()["current_version"], {"domain": domain}).fetchone()
    return int(row[0]) if row else 0


def load(conn: psycopg.Connection[Any], domain: str, version: int) -> Library:
    """One version of the domain's library; version 0 is the empty library."""
    queries = _queries()
    if version == 0:
        row = conn.execute(queries["next_experience_id"], {"domain": domain}).fetchone()
        return Library(domain, 0, {}, int(row[0]) if row else 1)
    row = conn.execute(queries["version_experiences"], {"domain": domain, "version": version}).fetchone()
    if row is None:
        raise LookupError(f"domain {domain!r} has no library version {version}")
    experiences = {int(item["id"]): Experience.from_json(item) for item in row[0]}
    # Ids given out by any later version (then rolled back) are not given out again.
    used = conn.execute(queries["next_experience_id"], {"domain": domain}).fetchone()
    return Library(domain, version, experiences, max(int(row[1]), int(used[0]) if used else 1))


def publish(
    conn: psycopg.Connection[Any],
    parent: Library,
    operations: Sequence[Operation],
    notes: Sequence[Note],
    *,
    created_by: str,
    reason: str,
    provenance: Provenance,
    distillation_ids: Sequence[int] = (),
    llm_call_ids: Sequence[int] = (),
) -> int:
    """Append the version ``operations`` make of ``parent``; its number is the domain's next one.

    Run it inside the caller's transaction, under the domain's update lock.
    """
    queries = _queries()
    row = conn.execute(queries["newest_version"], {"domain": parent.domain}).fetchone()
    version = (int(row[0]) if row else 0) + 1
    # The parent may have been read before another version gave out more ids: count those too.
    used = conn.execute(queries["next_experience_id"], {"domain": parent.domain}).fetchone()
    parent = replace(parent, next_experience_id=max(parent.next_experience_id, int(used[0]) if used else 1))
    experiences, next_id = next_experiences(parent, operations, version, provenance)
    conn.execute(
        queries["insert_version"],
        {
            "domain": parent.domain,
            "version": version,
            "parent": parent.version,
            "experiences": Jsonb([experience.to_json() for experience in experiences.values()]),
            "operations": Jsonb([operation.to_json() for operation in operations]),
            "notes": Jsonb([note.to_json() for note in notes]),
            "next_experience_id": next_id,
            "created_by": created_by,
            "reason": reason,
            "distillation_ids": list(distillation_ids),
            "llm_call_ids": list(llm_call_ids),
        },
    )
    return version


def lock_updates(conn: psycopg.Connection[Any], domain: str) -> bool:
    """Take the domain's update lock for this session; False when another session holds it."""
    row = conn.execute(_queries()["lock_domain_update"], {"domain": domain}).fetchone()
    return bool(row and row[0])


def unlock_updates(conn: psycopg.Connection[Any], domain: str) -> None:
    conn.execute(_queries()["unlock_domain_update"], {"domain": domain})
