"""Operator actions on a domain's experience library: show, history, diff, rollback, promote, pin,
freeze, export and import.

Every action that changes something runs in one transaction under the domain's update lock (the
lock the publishing of versions takes), records who did it and why in the append-only audit log,
and NOTIFYs agents when a label moves. A request that cannot be done raises ``OperatorError``
with one sentence, before anything changed.
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from grpod.schema.errors import ConfigError, NotFoundError, OperatorError
from grpod.schema.sql import load_queries
from grpod.workers import grouping_store, library_store, library_transfer
from grpod.workers.distillation import LearningSettings
from grpod.workers.grouping import DomainSettings
from grpod.workers.library import LibraryVersion, diff_libraries
from grpod.workers.library_transfer import CallModels, Document
from grpod.workers.promotion import Stats

QUERIES = ("grpod.schema", "queries/library.sql")
TRANSFER_QUERIES = ("grpod.schema", "queries/library_transfer.sql")


def _history_hint(domain: str) -> str:
    return f"`grpod library history {domain}` lists them"


def _require_version(conn: psycopg.Connection[Any], domain: str, version: int) -> None:
    if version != 0 and not library_store.version_exists(conn, domain, version):
        raise NotFoundError(f"domain {domain!r} has no library version {version}; {_history_hint(domain)}.")


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
        bounds = stats.interval()
        interval = list(bounds) if bounds is not None else None  # the 95% interval of the mean
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
                "reward": {"traces": stats.traces, "mean": stats.mean, "stddev": stats.stddev, "interval": interval},
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
        raise NotFoundError(f"domain {domain!r} has no library version {version}; {_history_hint(domain)}.")
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
            raise NotFoundError(f"domain {domain!r} has no library version {target}; {_history_hint(domain)}.")
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


# Sharing a library: export and import ---------------------------------------------------------


def configured_llm_model() -> str:
    """The model name this deployment's LLM calls are recorded with (GRPOD_LLM_MODEL, or the
    bundled model when GRPOD_LLM_BASE_URL is unset)."""
    from grpod.daemon import resources
    from grpod.workers.llm import LOCAL_MODEL

    settings = resources.settings()
    if settings.llm_base_url is None:
        return LOCAL_MODEL
    if not settings.llm_model:
        raise ConfigError("GRPOD_LLM_MODEL must name the model at GRPOD_LLM_BASE_URL; set it.")
    return settings.llm_model


def _call_models(conn: psycopg.Connection[Any], domain: str, library: LibraryVersion) -> CallModels:
    distillations, versions = library_transfer.provenance_references(library)
    queries = load_queries(*TRANSFER_QUERIES)
    by_distillation = conn.execute(
        queries["models_by_distillation"], {"domain": domain, "distillations": distillations}
    ).fetchall()
    by_version = conn.execute(queries["models_by_version"], {"domain": domain, "versions": versions}).fetchall()
    return CallModels(
        {int(row[0]): frozenset(row[1]) for row in by_distillation},
        {int(row[0]): frozenset(row[1]) for row in by_version},
    )


def export_version(
    conn: psycopg.Connection[Any], domain: str, version: int | None = None, *, configured_model: str | None = None
) -> dict[str, Any]:
    """One version of the domain's library (production by default) as a shareable document."""
    chosen = resolve(conn, domain, version, None)
    if chosen == 0:
        if version is None:
            raise OperatorError(f"domain {domain!r} has no production version to export; give --version N.")
        raise OperatorError("version 0 is the empty library; there is nothing to export.")
    library = library_store.load(conn, domain, chosen)
    return library_transfer.build_document(
        library,
        _call_models(conn, domain, library),
        configured_model=configured_model or configured_llm_model(),
        embedding_model=grouping_store.domain_state(conn, domain).embedding_model,
        labels=[name for name, at in library_store.labels(conn, domain).items() if at == chosen],
        exported_at=datetime.now(UTC),
    )


def write_document(document: dict[str, Any], path: str) -> None:
    """Write the document to ``path`` whole or not at all (a reader never finds half a file)."""
    target = Path(path)
    text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    except OSError as error:
        raise OperatorError(f"cannot write {path}: {error.strerror or error}.") from None
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # a file to share: not mkstemp's owner-only mode
        os.replace(temporary, target)
    except OSError as error:
        Path(temporary).unlink(missing_ok=True)
        raise OperatorError(f"cannot write {path}: {error.strerror or error}.") from None


def read_document_file(path: str) -> Document:
    """The document in a file; a missing or unreadable file is one sentence."""
    try:
        with open(path, "rb") as file:
            raw = file.read(library_transfer.MAX_DOCUMENT_BYTES + 1)
    except OSError as error:
        raise OperatorError(f"cannot read {path}: {error.strerror or error}.") from None
    return library_transfer.read_document(raw, path)


def import_document(
    conn: psycopg.Connection[Any],
    domain: str,
    document: Document,
    *,
    reason: str,
    actor: str,
    configured_model: str | None = None,
) -> dict[str, Any]:
    """Make the document's new texts a version of the domain built on its current version.

    The version always becomes the candidate, whatever the publish policy and even with
    production pinned: experiences learned elsewhere earn production on this domain's rewards
    (or by an operator's promote). An import that adds nothing makes no version.
    """
    if not reason.strip():
        raise OperatorError("--reason must say why the library is imported; it is kept in the history.")
    source = document.source
    with conn.transaction():
        library_store.lock_updates_now(conn, domain)
        state = library_store.library_state(conn, domain)  # an unknown domain is refused here
        max_words = LearningSettings.from_json(state.settings).experience_max_words
        parent = library_store.load(conn, domain, library_store.current_version(conn, domain))
        plan = library_transfer.plan_import(document, parent.texts(), max_words)
        version: int | None = None
        if plan.operations:
            version = library_store.publish(
                conn,
                parent,
                plan.operations,
                plan.notes,
                created_by="import",
                reason=reason,
                provenance=library_transfer.imported_provenance(plan, source),
            )
            library_store.move_label(conn, domain, "candidate", version, action="publish", actor=actor, reason=reason)
    added = []
    if version is not None:
        made = library_store.load(conn, domain, version)
        for experience_id in sorted(set(made.experiences) - set(parent.experiences)):
            experience = made.experiences[experience_id]
            origin = experience.provenance[-1]["imported_from"].get("id")
            added.append({"id": experience_id, "text": experience.text, "from": origin})
    return {
        "domain": domain,
        "version": version,
        "parent": parent.version,
        "label": "candidate" if version is not None else None,
        "source": source.to_json(),
        "added": added,
        "skipped": [skipped.to_json() for skipped in plan.skipped],
        "notes": [note.to_json() for note in plan.notes],
        "model_warning": library_transfer.model_warning(source, configured_model or configured_llm_model()),
    }
