"""Library versions, the database shell: read a version, append the next one, move labels.

Versions are append-only (a trigger refuses any change to a stored one), and so is the audit log
of label moves and operator actions. Whatever writes versions or moves labels holds the domain's
update lock (an advisory lock), so a publish and an operator's rollback never interleave.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from grpod.schema.errors import NotFoundError
from grpod.schema.library import Experience
from grpod.schema.sql import load_queries
from grpod.workers.grouping import Combination, DomainSettings, SourceReward, combine_rewards
from grpod.workers.library import LibraryVersion, Provenance, next_experiences
from grpod.workers.operations import Note, Operation
from grpod.workers.promotion import PublishSettings, Reward, Verdict, judge_candidate, judge_regression

QUERIES = ("grpod.schema", "queries/library.sql")


def _queries() -> Any:
    return load_queries(*QUERIES)


def current_version(conn: psycopg.Connection[Any], domain: str) -> int:
    """The version new learning builds on (0: the empty library)."""
    row = conn.execute(_queries()["current_version"], {"domain": domain}).fetchone()
    return int(row[0]) if row else 0


def load(conn: psycopg.Connection[Any], domain: str, version: int) -> LibraryVersion:
    """One version of the domain's library; version 0 is the empty library."""
    queries = _queries()
    if version == 0:
        row = conn.execute(queries["next_experience_id"], {"domain": domain}).fetchone()
        return LibraryVersion(domain, 0, {}, int(row[0]) if row else 1)
    row = conn.execute(queries["version_experiences"], {"domain": domain, "version": version}).fetchone()
    if row is None:
        raise LookupError(f"domain {domain!r} has no library version {version}")
    experiences = {int(item["id"]): Experience.from_json(item) for item in row[0]}
    # Ids given out by any later version (then rolled back) are not given out again.
    used = conn.execute(queries["next_experience_id"], {"domain": domain}).fetchone()
    return LibraryVersion(domain, version, experiences, max(int(row[1]), int(used[0]) if used else 1))


def publish(
    conn: psycopg.Connection[Any],
    parent: LibraryVersion,
    operations: Sequence[Operation],
    notes: Sequence[Note],
    *,
    created_by: str,
    reason: str,
    provenance: Provenance,
    distillation_ids: Sequence[int] = (),
    llm_call_ids: Sequence[int] = (),
    usefulness: Mapping[int, float] | None = None,
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
    experiences, next_id = next_experiences(parent, operations, version, provenance, usefulness)
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


# Labels and the audit log ------------------------------------------------------------------------

LABELS = ("production", "candidate")


def labels(conn: psycopg.Connection[Any], domain: str) -> dict[str, int]:
    """The domain's labels and the versions they point at."""
    return {str(label): int(version) for label, version in conn.execute(_queries()["labels"], {"domain": domain})}


def lock_updates_now(conn: psycopg.Connection[Any], domain: str) -> None:
    """Wait for the domain's update lock, held until the caller's transaction ends."""
    conn.execute(_queries()["lock_domain_update_now"], {"domain": domain})


def record_event(
    conn: psycopg.Connection[Any],
    domain: str,
    action: str,
    *,
    actor: str,
    reason: str,
    label: str | None = None,
    from_version: int | None = None,
    to_version: int | None = None,
    statistics: Mapping[str, Any] | None = None,
) -> int:
    row = conn.execute(
        _queries()["record_event"],
        {
            "domain": domain,
            "action": action,
            "label": label,
            "from_version": from_version,
            "to_version": to_version,
            "actor": actor,
            "reason": reason,
            "statistics": Jsonb(dict(statistics)) if statistics is not None else None,
        },
    ).fetchone()
    assert row is not None
    return int(row[0])


def move_label(
    conn: psycopg.Connection[Any],
    domain: str,
    label: str,
    version: int | None,
    *,
    action: str,
    actor: str,
    reason: str,
    statistics: Mapping[str, Any] | None = None,
) -> int | None:
    """Point ``label`` at ``version`` (None: remove it), record who and why, and NOTIFY agents.

    Run it inside the caller's transaction, under the domain's update lock. Returns where the
    label pointed before.
    """
    queries = _queries()
    before = labels(conn, domain).get(label)
    if version is None:
        conn.execute(queries["drop_label"], {"domain": domain, "label": label})
    else:
        conn.execute(queries["set_label"], {"domain": domain, "label": label, "version": version})
    record_event(
        conn,
        domain,
        action,
        actor=actor,
        reason=reason,
        label=label,
        from_version=before,
        to_version=version,
        statistics=statistics,
    )
    payload = json.dumps({"domain": domain, "label": label, "version": version})
    conn.execute(queries["notify"], {"payload": payload})
    return before


@dataclass(frozen=True)
class LibraryState:
    pinned_version: int | None
    frozen: bool
    settings: Mapping[str, Any]


def discard_candidate(conn: psycopg.Connection[Any], domain: str, *, actor: str, reason: str) -> None:
    """Remove the candidate label, if there is one (recorded like every other move)."""
    if "candidate" in labels(conn, domain):
        move_label(conn, domain, "candidate", None, action="discard", actor=actor, reason=reason)


def library_state(conn: psycopg.Connection[Any], domain: str) -> LibraryState:
    row = conn.execute(_queries()["library_state"], {"domain": domain}).fetchone()
    if row is None:
        raise NotFoundError(f"there is no domain {domain!r}; `grpod domains` lists them.")
    return LibraryState(int(row[0]) if row[0] is not None else None, row[1] is not None, row[2] or {})


def label_new_version(conn: psycopg.Connection[Any], domain: str, version: int, *, actor: str, reason: str) -> str:
    """Label a just-published version by the domain's publish policy; returns the label it got.

    ``auto``: it becomes production at once. ``gated``, or production pinned: it becomes the
    candidate (replacing an older candidate, which it was built on).
    """
    state = library_state(conn, domain)
    policy = PublishSettings.from_json(state.settings).publish_policy
    label = "production" if policy == "auto" and state.pinned_version is None else "candidate"
    move_label(conn, domain, label, version, action="publish", actor=actor, reason=reason)
    if label == "production":
        discard_candidate(conn, domain, actor=actor, reason=f"superseded by version {version}")
    return label


def refuse_new_version(conn: psycopg.Connection[Any], domain: str, version: int, *, reason: str) -> None:
    """A just-stored version the guard refused: no label moves; the audit log says why, and an
    operator may still publish it (``grpod library promote``)."""
    record_event(conn, domain, "refuse", actor="guard", reason=reason, to_version=version)


def version_exists(conn: psycopg.Connection[Any], domain: str, version: int) -> bool:
    return conn.execute(_queries()["version_exists"], {"domain": domain, "version": version}).fetchone() is not None


def version_rewards(
    conn: psycopg.Connection[Any], domain: str, versions: Sequence[int], combination: Combination
) -> dict[int, list[Reward]]:
    """Each version's rewarded traces: the (combined) reward and when it arrived."""
    result: dict[int, list[Reward]] = {version: [] for version in versions}
    rows = conn.execute(_queries()["version_rewards"], {"domain": domain, "versions": list(versions)})
    for version, sources, values, received in rows:
        rewards = [SourceReward(s, float(v), float(r)) for s, v, r in zip(sources, values, received, strict=True)]
        value = combine_rewards(rewards, combination)
        if value is not None:
            # When it first became rewarded: a later source changes its value, not its place in the looks.
            result.setdefault(int(version), []).append(Reward(value, min(r.received_at for r in rewards)))
    return result


# Judging versions on live traffic ----------------------------------------------------------------


@dataclass(frozen=True)
class Judgement:
    domain: str
    label: str  # the label judged: candidate (promotion) or production (rollback)
    version: int
    verdict: Verdict
    acted: bool  # whether the verdict moved a label


def judge_domain(conn: psycopg.Connection[Any], domain: str, *, actor: str = "judge") -> list[Judgement]:
    """Promote or discard the domain's candidate, and roll production back if it regressed.

    Runs in one transaction under the domain's update lock. A pinned domain is not judged (its
    production is held); a frozen one is (it learns nothing new, but what it serves still counts).
    """
    judgements: list[Judgement] = []
    with conn.transaction():
        lock_updates_now(conn, domain)
        state = library_state(conn, domain)
        if state.pinned_version is not None:
            return []
        settings = PublishSettings.from_json(state.settings)
        combination = DomainSettings.from_json(state.settings).reward_combination
        current = labels(conn, domain)
        production = current.get("production")
        candidate = current.get("candidate")
        if candidate is not None:
            reference = production if production is not None else 0
            rewards = version_rewards(conn, domain, [candidate, reference], combination)
            verdict = judge_candidate(rewards[candidate], rewards[reference], settings)
            statistics = verdict.to_json() | {"production": reference}
            if verdict.decision == "promote":
                move_label(
                    conn,
                    domain,
                    "production",
                    candidate,
                    action="promote",
                    actor=actor,
                    reason=verdict.reason,
                    statistics=statistics,
                )
                move_label(
                    conn,
                    domain,
                    "candidate",
                    None,
                    action="promote",
                    actor=actor,
                    reason=f"promoted to production: {verdict.reason}",
                    statistics=statistics,
                )
                production = candidate
            elif verdict.decision == "discard":
                move_label(
                    conn,
                    domain,
                    "candidate",
                    None,
                    action="discard",
                    actor=actor,
                    reason=verdict.reason,
                    statistics=statistics,
                )
            judgements.append(Judgement(domain, "candidate", candidate, verdict, verdict.decision != "wait"))
        if production is not None and settings.auto_rollback:
            arrival = conn.execute(
                _queries()["production_arrival"], {"domain": domain, "version": production}
            ).fetchone()
            predecessor = arrival[1] if arrival is not None and arrival[0] in ("publish", "promote") else None
            if predecessor is not None:
                rewards = version_rewards(conn, domain, [production, predecessor], combination)
                verdict = judge_regression(rewards[production], rewards[predecessor], settings)
                if verdict.decision == "rollback":
                    statistics = verdict.to_json() | {"predecessor": predecessor}
                    move_label(
                        conn,
                        domain,
                        "production",
                        predecessor,
                        action="rollback",
                        actor="auto-rollback",
                        reason=verdict.reason,
                        statistics=statistics,
                    )
                    discard_candidate(
                        conn,
                        domain,
                        actor="auto-rollback",
                        reason=f"built on version {production}, which was rolled back",
                    )
                judgements.append(Judgement(domain, "production", production, verdict, verdict.decision == "rollback"))
    return judgements


def domains_to_judge(conn: psycopg.Connection[Any]) -> list[str]:
    return [str(row[0]) for row in conn.execute(_queries()["domains_to_judge"])]
