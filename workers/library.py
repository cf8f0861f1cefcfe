"""Library versions, the decisions: the next version's experiences from a parent and operations.

Plain data. An experience keeps its id for life; its provenance lists, oldest first, every
change that made it what it is (the version, the operation, and the distillations, groups and
traces behind it). The database shell is ``workers/library_store.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from grpod.schema.library import Experience
from grpod.workers.operations import Operation, apply


@dataclass(frozen=True)
class LibraryVersion:
    """One version of a domain's library as stored (version 0 is the empty one)."""

    domain: str
    version: int
    experiences: Mapping[int, Experience]
    next_experience_id: int  # the first id never used in the domain

    def texts(self) -> dict[int, str]:
        return {experience_id: experience.text for experience_id, experience in self.experiences.items()}


Provenance = Callable[[Operation], Mapping[str, Any]]


def next_experiences(
    parent: LibraryVersion,
    operations: Sequence[Operation],
    version: int,
    provenance: Provenance,
    usefulness: Mapping[int, float] | None = None,
) -> tuple[dict[int, Experience], int]:
    """The experiences of ``version`` (parent + operations) and the next unused id.

    Ids never change and are never reused: new experiences take ids from the domain's
    ``next_experience_id`` on, which counts every id any version ever gave out. An experience
    keeps its parent's usefulness score while its text stays; a new or changed one has none until
    a consolidation scores it (``usefulness``: the scores a consolidation gives, by id).
    """
    applied = apply(parent.texts(), operations, parent.next_experience_id)
    result: dict[int, Experience] = {}
    changed: dict[int, Operation] = {}
    for op in operations:
        if op.kind == "UPDATE" and op.experience_id is not None:
            changed[op.experience_id] = op
    new_ids = iter(sorted(applied.added))
    adds = [op for op in operations if op.kind == "ADD" and op.text]
    for op, new_id in zip(adds, new_ids, strict=True):
        changed[new_id] = op
    for experience_id, text in sorted(applied.library.items()):
        before = parent.experiences.get(experience_id)
        history = before.provenance if before is not None else ()
        change = changed.get(experience_id)
        if change is not None and (before is None or before.text != text):
            history = (*history, {"version": version, "operation": change.kind, **provenance(change)})
        kept = before.usefulness if before is not None and before.text == text else None
        score = usefulness.get(experience_id, kept) if usefulness is not None else kept
        result[experience_id] = Experience(experience_id, text, history, score)
    return result, applied.next_id


def diff_libraries(before: LibraryVersion, after: LibraryVersion) -> dict[str, list[dict[str, Any]]]:
    """What changed from one version to another: experiences added, removed, and changed (same id)."""
    added = [after.experiences[i].to_json() for i in sorted(set(after.experiences) - set(before.experiences))]
    removed = [before.experiences[i].to_json() for i in sorted(set(before.experiences) - set(after.experiences))]
    changed = [
        {"id": i, "from": before.experiences[i].text, "to": after.experiences[i].text}
        for i in sorted(set(before.experiences) & set(after.experiences))
        if before.experiences[i].text != after.experiences[i].text
    ]
    return {"added": added, "removed": removed, "changed": changed}


def removal_refusal(
    parent: Mapping[int, object], operations: Sequence[Operation], max_deletes: int, max_fraction: float
) -> str | None:
    """Why a version that applies ``operations`` to ``parent`` must not be published, or None.

    A version may remove at most ``max_deletes`` of its parent's experiences, and at most
    ``max_fraction`` of them (rounded down, but always at least one): one broken or injected
    answer cannot empty a library in production.
    """
    removed = {op.experience_id for op in operations if op.kind == "DELETE" and op.experience_id in parent}
    if not removed:
        return None
    share = max(1, math.floor(max_fraction * len(parent)))
    if len(removed) > max_deletes:
        return (
            f"it removes {len(removed)} of its parent's {len(parent)} experiences, "
            f"more than max_deletes_per_version ({max_deletes})"
        )
    if len(removed) > share:
        return (
            f"it removes {len(removed)} of its parent's {len(parent)} experiences, more than "
            f"max_removed_fraction ({max_fraction:g}) allows ({share})"
        )
    return None
