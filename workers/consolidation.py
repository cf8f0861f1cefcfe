"""Library consolidation, the decisions: merge near-duplicates, keep the library within its budgets.

Plain functions over plain data. The IO shell is ``workers/consolidation_store.py``.

- **Near-duplicates.** Experiences within ``merge_distance`` (cosine) of each other form a cluster;
  a cluster is complete-linkage (every member within the distance of every other), so no chain
  of small steps drifts from one rule to an unrelated one, and at most MAX_CLUSTER long. One LLM
  call per cluster writes the one text that replaces it; the lowest id (the longest standing)
  keeps it, and the others are deleted with a reason that names it.
- **Budgets.** Then, while the library has more than ``max_experiences`` or its prompt block
  more than ``max_prompt_tokens``, the least useful experience (``workers/evidence.py``) retires.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt

from grpod.schema.library import block_tokens
from grpod.workers.distillation import Ask, LearningSettings, Messages, StepFailedError, ask_until, render
from grpod.workers.evidence import Evidence, retirement_order
from grpod.workers.llm import Completion, extract_json
from grpod.workers.operations import Note, Operation, validate
from grpod.workers.upkeep_settings import UpkeepSettings

MAX_CLUSTER = 5  # experiences one merge call rewrites at most
RESCORE_DELTA = 0.01  # a score that moved less than this is not worth a new version on its own

Similarity = npt.NDArray[np.float32]


def similarities(vectors: npt.NDArray[np.float32]) -> Similarity:
    """Cosine similarity of every pair of rows."""
    if len(vectors) == 0:
        return np.zeros((0, 0), dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = vectors / np.where(norms == 0, 1, norms)
    return np.asarray(unit @ unit.T, dtype=np.float32)


def closeness(ids: Sequence[int], similarity: Similarity, clusters: Sequence[tuple[int, ...]] = ()) -> dict[int, float]:
    """Each experience's highest similarity to another one (0 alone), in the library as it will be
    once ``clusters`` are merged: a cluster counts as one experience, as close to another as its
    closest member is, and never close to itself."""
    row = {experience_id: index for index, experience_id in enumerate(ids)}
    merged = {member for cluster in clusters for member in cluster}
    units = [tuple(row[m] for m in cluster) for cluster in clusters] + [(row[i],) for i in ids if i not in merged]
    unit_of = {ids[r]: unit for unit in units for r in unit}
    result: dict[int, float] = {}
    for experience_id in ids:
        mine = unit_of[experience_id]
        others = [r for unit in units if unit != mine for r in unit]
        best = float(similarity[np.ix_(list(mine), others)].max()) if others else 0.0
        result[experience_id] = max(0.0, best)
    return result


def near_duplicate_clusters(
    ids: Sequence[int], similarity: Similarity, merge_distance: float, max_cluster: int = MAX_CLUSTER
) -> list[tuple[int, ...]]:
    """Clusters of near-duplicates, closest pairs first; each sorted by id, and listed by their
    lowest id. Deterministic for the same library and vectors."""
    pairs = sorted(
        (round(1.0 - float(similarity[a, b]), 6), ids[a], ids[b], a, b)
        for a in range(len(ids))
        for b in range(a + 1, len(ids))
        if 1.0 - float(similarity[a, b]) <= merge_distance
    )
    row = {experience_id: index for index, experience_id in enumerate(ids)}
    cluster_of: dict[int, list[int]] = {}

    def joins(member: int, cluster: list[int]) -> bool:
        return len(cluster) < max_cluster and all(
            1.0 - float(similarity[row[member], row[other]]) <= merge_distance for other in cluster
        )

    for _, first, second, _, _ in pairs:
        one, two = cluster_of.get(first), cluster_of.get(second)
        if one is None and two is None:
            cluster = [first, second]
            cluster_of[first] = cluster_of[second] = cluster
        elif one is not None and two is None and joins(second, one):
            one.append(second)
            cluster_of[second] = one
        elif two is not None and one is None and joins(first, two):
            two.append(first)
            cluster_of[first] = two
    unique = {id(cluster): tuple(sorted(cluster)) for cluster in cluster_of.values()}
    return sorted(unique.values())


def merge_messages(settings: LearningSettings, texts: Sequence[str]) -> Messages:
    return render(
        "merge",
        {
            "agent_objective": settings.agent_objective,
            "max_words": settings.experience_max_words,
            "experiences": "\n".join(f"{number}. {text}" for number, text in enumerate(texts, start=1)),
        },
    )


MERGE_SCHEMA = {
    "type": "object",
    "properties": {"text": {"type": "string", "minLength": 1}, "reason": {"type": "string"}},
    "required": ["text"],
}


def _read_merge(completion: Completion) -> tuple[str, str] | None:
    data = completion.data if completion.data is not None else extract_json(completion.text)
    text = data.get("text") if data is not None else None
    if not isinstance(text, str) or not text.strip():
        return None
    reason = data.get("reason") if data is not None else None
    return " ".join(text.split()), str(reason or "").strip()


@dataclass(frozen=True)
class Merge:
    """A cluster and the one experience that replaces it (kept under the cluster's lowest id)."""

    cluster: tuple[int, ...]
    text: str
    reason: str

    @property
    def keeper(self) -> int:
        return self.cluster[0]

    def to_json(self) -> dict[str, object]:
        return {"into": self.keeper, "merged": list(self.cluster), "text": self.text, "reason": self.reason}


def merge_cluster(
    ask: Ask, settings: LearningSettings, cluster: tuple[int, ...], library: Mapping[int, str]
) -> Merge | Note:
    """One LLM call (asked again on an unusable answer) writes the cluster's one experience; the
    text passes the same checks as any operation's. A cluster it cannot merge stays as it is."""
    described = f"merge of {', '.join(f'[{i}]' for i in cluster)}"
    try:
        text, reason = ask_until(
            ask,
            "merge",
            merge_messages(settings, [library[i] for i in cluster]),
            MERGE_SCHEMA,
            64 + settings.experience_max_words * 3,
            _read_merge,
        )
    except StepFailedError as error:
        return Note(described, "dropped", f"{error}; the experiences stay as they are")
    checked, notes = validate([Operation("UPDATE", text, cluster[0])], library, settings.experience_max_words)
    if not checked and not notes:  # the keeper's own text: it stays as it is, and the others go
        return Merge(cluster, library[cluster[0]], reason)
    if not checked:
        why = notes[0].why if notes else "the merged text was not usable"
        return Note(described, "dropped", f"{why}; the experiences stay as they are")
    return Merge(cluster, checked[0].text or text, reason)


@dataclass(frozen=True)
class Retirement:
    experience_id: int
    text: str
    evidence: Evidence
    why: str

    def to_json(self) -> dict[str, object]:
        return {"id": self.experience_id, "text": self.text, "why": self.why, **self.evidence.to_json()}


def retirements(
    library: Mapping[int, str], scored: Mapping[int, Evidence], settings: UpkeepSettings
) -> list[Retirement]:
    """The least useful experiences, in order, until the library is within both budgets."""
    remaining = dict(library)
    retired: list[Retirement] = []
    for experience_id in retirement_order({i: scored[i] for i in library}):
        over = []
        if len(remaining) > settings.max_experiences:
            over.append(f"{len(remaining)} experiences, over max_experiences {settings.max_experiences}")
        tokens = block_tokens(remaining)
        if tokens > settings.max_prompt_tokens:
            over.append(f"a {tokens}-token prompt block, over max_prompt_tokens {settings.max_prompt_tokens}")
        if not over:
            break
        evidence = scored[experience_id]
        why = f"the least useful left (usefulness {evidence.usefulness:g}) of {' and '.join(over)}"
        retired.append(Retirement(experience_id, remaining.pop(experience_id), evidence, why))
    return retired


@dataclass(frozen=True)
class Plan:
    """What one consolidation does: the operations of its version and the scores it stores."""

    merges: list[Merge] = field(default_factory=list)
    retired: list[Retirement] = field(default_factory=list)
    operations: list[Operation] = field(default_factory=list)
    usefulness: dict[int, float] = field(default_factory=dict)
    rescored: int = 0  # experiences whose stored score was missing or moved by RESCORE_DELTA or more

    @property
    def changes(self) -> bool:
        return bool(self.operations) or self.rescored > 0


def plan(
    library: Mapping[int, str],
    stored_usefulness: Mapping[int, float | None],
    scored: Mapping[int, Evidence],
    merges: Sequence[Merge],
    settings: UpkeepSettings,
) -> Plan:
    """The version a consolidation makes: merges first, then retirements within the budgets, and
    every remaining experience scored (``scored`` as the library will be once merged: see
    ``closeness``)."""
    merged_library = dict(library)
    merged_scores = dict(scored)
    operations: list[Operation] = []
    for merge in merges:
        merged_library[merge.keeper] = merge.text
        # The keeper keeps its own reward record; it was changed just now.
        merged_scores[merge.keeper] = replace(scored[merge.keeper], days_since_confirmed=0.0)
        for gone in merge.cluster[1:]:
            merged_library.pop(gone)
            merged_scores.pop(gone)
    retired = retirements(merged_library, merged_scores, settings)
    retiring = {r.experience_id for r in retired}
    for merge in merges:
        names = ", ".join(f"[{i}]" for i in merge.cluster)
        if merge.keeper not in retiring and merge.text != library[merge.keeper]:
            why = f"merged near-duplicates {names}" + (f": {merge.reason}" if merge.reason else "")
            operations.append(Operation("UPDATE", merge.text, merge.keeper, why))
        for gone in merge.cluster[1:]:
            operations.append(Operation("DELETE", None, gone, f"merged into [{merge.keeper}] with {names}"))
    operations += [Operation("DELETE", None, r.experience_id, f"retired: {r.why}") for r in retired]
    usefulness = {i: merged_scores[i].usefulness for i in merged_library if i not in retiring}
    rescored = sum(
        1
        for i, score in usefulness.items()
        if stored_usefulness.get(i) is None or abs(score - float(stored_usefulness[i] or 0.0)) >= RESCORE_DELTA
    )
    return Plan(list(merges), retired, operations, usefulness, rescored)
