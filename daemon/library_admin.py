"""Operator actions on a domain's experience library: show, history, diff, rollback, promote, pin, freeze.

Every action that changes something runs in one transaction under the domain's update lock (the
lock the publishing of versions takes), records who did it and why in the append-only audit log,
and NOTIFYs agents when a label moves. A request that cannot be done raises ``OperatorError``
with one sentence, before anything changed.
"""

from __future__ import annotations

from typing import Any

import psycopg

from grpod.schema.errors import OperatorError
from grpod.schema.sql import load_queries
from grpod.workers import library_store
from grpod.workers.grouping import DomainSettings
from grpod.workers.library import diff_libraries
from grpod.workers.promotion import Stats

QUERIES = ("grpod.schema", "queries/library.sql")


def _history_hint(domain: str) -> str:
    return f"`grpod library history {domain}` lists them"


def _require_version(conn: psycopg.Connection[Any], domain: str, version: int) -> None:
    if version != 0 and not library_store.version_exists(conn, domain, version):
        raise OperatorError(f"domain {domain!r} has no library version {version}; {_history_hint(domain)}.")


def resolve(conn: psycopg.Connection[Any], domain: str, version: int | None, label: str | None) -> int:
    """The version an operator means: by number, by label, or production (0, the empty library, if none)."""
    library_store.library_state(conn, domain)  # an unknown domain is refused here
    if version is not None and label is not None:
        raise OperatorError("give --version or --label, not both.")
    current = library_store.labels(conn, domain)
    if label is not None:
        if label not in library_store.LABELS:
            raise OperatorError(f"there is no label {label!r}; the labels are production and candidate.")
        if label not in current:
            raise OperatorError(f"domain {domain!r} has no {label} version now; {_history_hint(domain)}.")
        return current[label]
    if version is None:
        return current.get("production", 0)
    _require_version(conn, domain, version)
    return version


def show(
    conn: psycopg.Connection[Any], domain: str, *, version: int | None = None, label: str | None = None
) -> dict[str, Any]:
    chosen = resolve(conn, domain, version, label)
    library = library_store.load(conn, domain, chosen)
    state = library_store.library_state(conn, domain)
    return {
        "domain": domain,
        "version": chosen,
        "labels": sorted(name for name, at in library_store.labels(conn, domain).items() if at == chosen),
        "pinned": state.pinned_version,
        "frozen": state.frozen,
        "experiences": [experience.to_json() for experience in library.experiences.values()],
    }


def history(conn: psycopg.Connection[Any], domain: str, limit: int = 100) -> list[dict[str, Any]]:
    """The domain's versions, newest first, each with its labels and the reward record of its traces."""
    state = library_store.library_state(conn, domain)
    queries = load_queries(*QUERIES)
    rows = conn.execute(queries["version_rows"], {"domain": domain, "limit": limit}).fetchall()
    current = library_store.labels(conn, domain)
    combination = DomainSettings.from_json(state.settings).reward_combination
    rewards = library_store.version_rewards(conn, domain, [int(row[0]) for row in rows], combination)
    listed = []
    for version, parent, created_at, created_by, reason, operations, notes, distillations, size in rows:
        values = [reward.value for reward in rewards.get(int(version), [])]
        stats = Stats.of(values)
        listed.append(
            {
                "version": int(version),
                "parent": int(parent),
                "created_at": created_at.isoformat(),
                "created_by": created_by,
                "reason": reason,
                "operations": operations,
                "notes": notes,
                "distillation_ids": list(distillations),
                "experiences": int(size),
                "labels": sorted(name for name, at in current.items() if at == version),
                "reward": {"traces": stats.traces, "mean": stats.mean, "stddev": stats.stddev},
            }
        )
    return listed


def events(conn: psycopg.Connection[Any], domain: str, limit: int = 100) -> list[dict[str, Any]]:
    """The domain's audit log, newest first."""
    library_store.library_state(conn, domain)
    rows = conn.execute(load_queries(*QUERIES)["events"], {"domain": domain, "limit": limit}).fetchall()
    keys = ("id", "action", "label", "from_version", "to_version", "actor", "reason", "statistics", "created_at")
    return [dict(zip(keys, row[:-1], strict=False)) | {"created_at": row[-1].isoformat()} for row in rows]


def diff(conn: psycopg.Connection[Any], domain: str, a: int, b: int) -> dict[str, Any]:
    library_store.library_state(conn, domain)
    for version in (a, b):
        _require_version(conn, domain, version)
    return {"domain": domain, "from": a, "to": b} | diff_libraries(
        library_store.load(conn, domain, a), library_store.load(conn, domain, b)
    )


def _refuse_if_pinned(state: library_store.LibraryState, domain: str) -> None:
    if state.pinned_version is not None:
        raise OperatorError(
            f"production of {domain!r} is pinned at version {state.pinned_version}; "
            f"`grpod library unpin {domain}` first; nothing was changed."
        )


def _move_production(
    conn: psycopg.Connection[Any], domain: str, version: int, *, action: str, reason: str, actor: str
) -> tuple[int | None, dict[str, int]]:
    """Point production at an existing version of the domain, for an operator; returns where it
    pointed before and the labels as they were. Run inside a transaction."""
    library_store.lock_updates_now(conn, domain)
    state = library_store.library_state(conn, domain)
    if version == 0 or not library_store.version_exists(conn, domain, version):
        raise OperatorError(f"domain {domain!r} has no library version {version}; {_history_hint(domain)}.")
    _refuse_if_pinned(state, domain)
    current = library_store.labels(conn, domain)
    if current.get("production") == version:
        raise OperatorError(f"version {version} of {domain!r} is production already; nothing was changed.")
    library_store.move_label(conn, domain, "production", version, action=action, actor=actor, reason=reason)
    return current.get("production"), current


def rollback(conn: psycopg.Connection[Any], domain: str, to: int, *, reason: str, actor: str) -> dict[str, Any]:
    """Move production back to version ``to``; history stays, and learning builds on ``to`` from now on."""
    with conn.transaction():
        before, _ = _move_production(conn, domain, to, action="rollback", reason=reason, actor=actor)
        library_store.discard_candidate(conn, domain, actor=actor, reason=f"production rolled back to version {to}")
    return {"domain": domain, "label": "production", "from": before, "to": to, "actor": actor, "reason": reason}


def promote(conn: psycopg.Connection[Any], domain: str, version: int, *, reason: str, actor: str) -> dict[str, Any]:
    """Make ``version`` production now (an operator's promotion skips the reward gate)."""
    with conn.transaction():
        before, current = _move_production(conn, domain, version, action="promote", reason=reason, actor=actor)
        if current.get("candidate") == version:
            library_store.move_label(
                conn, domain, "candidate", None, action="promote", actor=actor, reason="promoted to production"
            )
    return {"domain": domain, "label": "production", "from": before, "to": version, "actor": actor, "reason": reason}


def pin(conn: psycopg.Connection[Any], domain: str, version: int | None, *, reason: str, actor: str) -> dict[str, Any]:
    """Hold production at ``version`` (default: where it is) whatever gets learned, until unpinned."""
    with conn.transaction():
        library_store.lock_updates_now(conn, domain)
        state = library_store.library_state(conn, domain)
        production = library_store.labels(conn, domain).get("production")
        target = version if version is not None else production
        if target is None:
            raise OperatorError(f"domain {domain!r} has no production version to pin; give --version N.")
        if target == 0 or not library_store.version_exists(conn, domain, target):
            raise OperatorError(f"domain {domain!r} has no library version {target}; {_history_hint(domain)}.")
        if state.pinned_version is not None:
            raise OperatorError(
                f"production of {domain!r} is pinned at version {state.pinned_version} already; "
                f"`grpod library unpin {domain}` first; nothing was changed."
            )
        conn.execute(load_queries(*QUERIES)["set_pin"], {"domain": domain, "version": target})
        if production != target:
            library_store.move_label(conn, domain, "production", target, action="pin", actor=actor, reason=reason)
        else:
            library_store.record_event(
                conn,
                domain,
                "pin",
                actor=actor,
                reason=reason,
                label="production",
                from_version=production,
                to_version=target,
            )
    return {"domain": domain, "pinned": target, "actor": actor, "reason": reason}


def unpin(conn: psycopg.Connection[Any], domain: str, *, reason: str, actor: str) -> dict[str, Any]:
    with conn.transaction():
        library_store.lock_updates_now(conn, domain)
        state = library_store.library_state(conn, domain)
        if state.pinned_version is None:
            raise OperatorError(f"production of {domain!r} is not pinned; nothing was changed.")
        conn.execute(load_queries(*QUERIES)["set_pin"], {"domain": domain, "version": None})
        library_store.record_event(
            conn, domain, "unpin", actor=actor, reason=reason, label="production", from_version=state.pinned_version
        )
    return {"domain": domain, "pinned": None, "actor": actor, "reason": reason}


def set_frozen(conn: psycopg.Connection[Any], domain: str, frozen: bool, *, reason: str, actor: str) -> dict[str, Any]:
    """Stop (or resume) learning for the domain; its events are stored either way."""
    with conn.transaction():
        library_store.lock_updates_now(conn, domain)
        state = library_store.library_state(conn, domain)
        if state.frozen == frozen:
            word = "frozen" if frozen else "not frozen"
            raise OperatorError(f"domain {domain!r} is {word} already; nothing was changed.")
        conn.execute(load_queries(*QUERIES)["set_frozen"], {"domain": domain, "frozen": frozen})
        library_store.record_event(conn, domain, "freeze" if frozen else "unfreeze", actor=actor, reason=reason)
    return {"domain": domain, "frozen": frozen, "actor": actor, "reason": reason}
