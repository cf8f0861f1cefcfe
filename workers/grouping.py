"""Grouping stage, the decisions: which group a query joins, how rewards combine, when a group is ready,
which groups merge.

Plain functions over plain data (vectors, numbers, small records); the database shell that runs
them is ``workers/grouping_store.py``. Vectors are L2-normalised embeddings; a group's centroid is
the running mean of its members' vectors, compared by cosine distance (1 - cosine similarity).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from grpod.schema.errors import SettingError

Vector = npt.NDArray[np.float32]
Combination = Literal["mean", "min", "max", "latest"]
COMBINATIONS: tuple[Combination, ...] = ("mean", "min", "max", "latest")


@dataclass(frozen=True)
class DomainSettings:
    """A domain's grouping settings (stored as JSON on the domain; these are the defaults)."""

    group_threshold: float = 0.5  # cosine distance to a centroid within which a query joins the group
    group_size: int = 5  # G: rewarded, unused traces a group needs before distillation
    reward_spread: float = 0.0  # a group is ready only if its rewards differ by more than this
    reward_combination: Combination = "mean"  # how several sources' rewards for one trace combine

    @classmethod
    def from_json(cls, values: Mapping[str, object]) -> DomainSettings:
        defaults = cls()
        threshold = values.get("group_threshold", defaults.group_threshold)
        size = values.get("group_size", defaults.group_size)
        spread = values.get("reward_spread", defaults.reward_spread)
        combination = values.get("reward_combination", defaults.reward_combination)
        return validated_settings(threshold, size, spread, combination)

    def to_json(self) -> dict[str, object]:
        return {
            "group_threshold": self.group_threshold,
            "group_size": self.group_size,
            "reward_spread": self.reward_spread,
            "reward_combination": self.reward_combination,
        }


def validated_settings(threshold: object, size: object, spread: object, combination: object) -> DomainSettings:
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 < float(threshold) < 2:
        raise SettingError(f"group_threshold must be a cosine distance between 0 and 2 (exclusive), not {threshold!r}")
    if isinstance(size, bool) or not isinstance(size, int) or not 2 <= size <= 1000:
        raise SettingError(f"group_size must be a whole number from 2 to 1000, not {size!r}")
    if isinstance(spread, bool) or not isinstance(spread, int | float) or not math.isfinite(spread) or spread < 0:
        raise SettingError(f"reward_spread must be a finite number of at least 0, not {spread!r}")
    if combination not in COMBINATIONS:
        raise SettingError(f"reward_combination must be one of {', '.join(COMBINATIONS)}, not {combination!r}")
    return DomainSettings(float(threshold), size, float(spread), combination)


# Assignment -----------------------------------------------------------------------------------


def cosine_distance(a: Vector, b: Vector) -> float:
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    return 1.0 if norm == 0 else 1.0 - float(np.dot(a, b)) / norm


def joins_nearest(distance: float | None, threshold: float) -> bool:
    """Join the nearest group when it is within the threshold; otherwise start a new one."""
    return distance is not None and distance <= threshold


def moved_centroid(centroid: Vector, size: int, vector: Vector) -> Vector:
    """The running mean after one more member."""
    return ((centroid * size + vector) / (size + 1)).astype(np.float32)


def cluster(vectors: Sequence[Vector], threshold: float) -> list[int]:
    """The online rule the database applies, in memory: each vector, in order, joins the group with
    the nearest centroid if within ``threshold``, else starts a new group. Returns a group per vector.
    (Used to choose the default threshold and to test the rule; the service runs it in PostgreSQL.)"""
    centroids: list[Vector] = []
    sizes: list[int] = []
    labels: list[int] = []
    for vector in vectors:
        nearest, distance = None, None
        if centroids:
            matrix = np.stack(centroids)
            norms = np.linalg.norm(matrix, axis=1) * float(np.linalg.norm(vector))
            distances = 1.0 - (matrix @ vector) / np.where(norms == 0, 1.0, norms)
            nearest = int(np.argmin(distances))
            distance = float(distances[nearest])
        if nearest is not None and joins_nearest(distance, threshold):
            centroids[nearest] = moved_centroid(centroids[nearest], sizes[nearest], vector)
            sizes[nearest] += 1
            labels.append(nearest)
        else:
            centroids.append(vector.astype(np.float32))
            sizes.append(1)
            labels.append(len(centroids) - 1)
    return labels


@dataclass(frozen=True)
class ClusterQuality:
    purity: float  # share of queries whose group's majority intent is their own
    completeness: float  # share of queries in the group holding most of their intent
    groups: int

    @property
    def f1(self) -> float:
        total = self.purity + self.completeness
        return 0.0 if total == 0 else 2 * self.purity * self.completeness / total


def cluster_quality(labels: Sequence[int], intents: Sequence[str]) -> ClusterQuality:
    if not labels:
        return ClusterQuality(1.0, 1.0, 0)
    by_group: dict[int, Counter[str]] = {}
    by_intent: dict[str, Counter[int]] = {}
    for label, intent in zip(labels, intents, strict=True):
        by_group.setdefault(label, Counter())[intent] += 1
        by_intent.setdefault(intent, Counter())[label] += 1
    total = len(labels)
    purity = sum(counts.most_common(1)[0][1] for counts in by_group.values()) / total
    completeness = sum(counts.most_common(1)[0][1] for counts in by_intent.values()) / total
    return ClusterQuality(purity, completeness, len(by_group))


# Rewards and readiness ------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceReward:
    source: str
    value: float
    received_at: float  # seconds since the epoch, to find the latest


def combine_rewards(rewards: Sequence[SourceReward], how: Combination) -> float | None:
    """One number per trace from its sources' rewards (None when it has none yet)."""
    if not rewards:
        return None
    values = [reward.value for reward in rewards]
    if how == "mean":
        return math.fsum(values) / len(values)
    if how == "min":
        return min(values)
    if how == "max":
        return max(values)
    return max(rewards, key=lambda reward: (reward.received_at, reward.source)).value


@dataclass(frozen=True)
class Member:
    trace_id: str
    rewards: tuple[SourceReward, ...]
    used: bool = False  # consumed by an earlier distillation


@dataclass(frozen=True)
class Readiness:
    ready: bool
    size: int
    rewarded: int  # rewarded members not used by an earlier distillation
    spread: float  # max - min of their combined rewards (0 with fewer than two)
    reason: str


def readiness(members: Sequence[Member], settings: DomainSettings) -> Readiness:
    """A group is ready when it has at least G rewarded traces not used before, whose (combined)
    rewards differ by more than the domain's spread threshold: all-equal rewards carry no relative
    signal, for binary rewards (all 0 or all 1) and continuous ones (all 0.5) alike."""
    combined = [
        value
        for member in members
        if not member.used and (value := combine_rewards(member.rewards, settings.reward_combination)) is not None
    ]
    spread = (max(combined) - min(combined)) if len(combined) >= 2 else 0.0
    if len(combined) < settings.group_size:
        reason = f"{len(combined)} of {settings.group_size} rewarded traces"
        return Readiness(False, len(members), len(combined), spread, reason)
    if spread <= settings.reward_spread:
        reason = f"rewards differ by {spread:g}, not more than {settings.reward_spread:g}"
        return Readiness(False, len(members), len(combined), spread, reason)
    return Readiness(True, len(members), len(combined), spread, "ready")


def evaluate_threshold(
    vectors: Sequence[Vector], domains: Sequence[str], intents: Sequence[str], threshold: float, seeds: Sequence[int]
) -> ClusterQuality:
    """Group a labelled set per domain, in shuffled arrival orders (the online rule depends on
    order), and return the median purity and completeness over the orders."""
    import random
    import statistics

    qualities = []
    for seed in seeds:
        order = list(range(len(vectors)))
        random.Random(seed).shuffle(order)  # noqa: S311 - a reproducible arrival order, not a secret
        labels: list[int] = []
        ordered_intents: list[str] = []
        offset = 0
        for domain in sorted(set(domains)):
            picked = [i for i in order if domains[i] == domain]
            domain_labels = cluster([vectors[i] for i in picked], threshold)
            labels += [label + offset for label in domain_labels]
            offset += max(domain_labels, default=-1) + 1
            ordered_intents += [intents[i] for i in picked]
        qualities.append(cluster_quality(labels, ordered_intents))
    return ClusterQuality(
        purity=statistics.median(q.purity for q in qualities),
        completeness=statistics.median(q.completeness for q in qualities),
        groups=int(statistics.median(q.groups for q in qualities)),
    )


# Merging groups that never reach their size ---------------------------------------------------

MergeRule = Literal["close", "waited"]


@dataclass(frozen=True)
class MergeCandidate:
    """A group as the merge decision sees it."""

    id: int  # ids are handed out in creation order: the smaller is the older
    centroid: Vector  # the mean of its members' vectors
    size: int
    idle_seconds: float  # since it last grew (or was created)
    # Members that can still count toward readiness (neither used nor expired; None: all): a group
    # with fewer than G of them is small, since it cannot become ready on its own.
    counting: int | None = None
    # It may disappear into another group: no distillation ever named it, it is not marked ready
    # and none of its traces is used. Otherwise it can only take others in.
    absorbable: bool = True
    # A distillation of it is running: it takes no part, and a group whose nearest it is waits.
    busy: bool = False


@dataclass(frozen=True)
class Merge:
    survivor: int
    absorbed: int
    distance: float  # the joining group's members from the other's centroid, on average, just before
    rule: MergeRule  # close: within the threshold; waited: a small group that waited, within the relaxed one

    def to_json(self) -> dict[str, object]:
        return {"survivor": self.survivor, "absorbed": self.absorbed, "distance": self.distance, "rule": self.rule}


def plan_merges(
    groups: Sequence[MergeCandidate], *, threshold: float, group_size: int, wait_seconds: float, factor: float
) -> list[Merge]:
    """The merges of one domain's groups, in the order they apply.

    Each group that may be absorbed joins its nearest group (by centroid) when its members are, on
    average, within ``threshold`` of that group's centroid (rule ``close``): the test online
    assignment applies to one query, applied to each of the group's queries. Centroids are not
    compared directly because a centroid is a mean: those of two different intents can be nearer
    to each other than their own queries are to them. A small group (fewer than ``group_size``
    members that can still count) that has not grown for ``wait_seconds`` joins within
    ``threshold * factor`` (rule ``waited``); a young one waits. A group whose nearest is busy
    waits too, rather than join its second nearest.

    The closest join happens first (ties by ids), and the merged group's centroid is recomputed as
    the mean of all its members before the next is chosen, so a group joins a merged group only
    when it is near the merged whole, never by a chain from neighbour to neighbour. A merged group
    makes no relaxed join of its own in the same pass (its wait starts again, as the database's
    ``updated_at`` does): at most one relaxed hop per group and pass.

    The merged group keeps the id of the one that cannot be absorbed, if one cannot, else of the
    larger, else of the older. Deterministic: the order of ``groups`` does not matter.
    """
    ordered = sorted(groups, key=lambda group: group.id)
    count = len(ordered)
    if count < 2:
        return []
    ids = np.array([group.id for group in ordered], dtype=np.int64)
    sizes = np.array([group.size for group in ordered], dtype=np.int64)
    counting = np.array([group.size if group.counting is None else group.counting for group in ordered])
    # Member sums: a merged group's mean is then exact, whatever the sizes.
    sums = np.stack([np.asarray(group.centroid, dtype=np.float64) * group.size for group in ordered])
    units = _unit_rows(sums)
    # The length of a mean of unit vectors is its members' average cosine similarity to its
    # direction: 1 - cohesion * cos(a, b) is the average distance of a's members from b's centroid.
    cohesion = np.linalg.norm(sums, axis=1) / np.maximum(sizes, 1)
    alive = np.ones(count, dtype=bool)
    grew = np.zeros(count, dtype=bool)
    absorbable = np.array([group.absorbable for group in ordered], dtype=bool)
    busy = np.array([group.busy for group in ordered], dtype=bool)
    waited = np.array([group.idle_seconds >= wait_seconds for group in ordered], dtype=bool)
    movable = absorbable & ~busy  # the groups that may join another
    nearest = np.zeros(count, dtype=np.int64)
    similarity = np.full(count, -np.inf)  # cosine similarity to the nearest

    def find_nearest(rows: npt.NDArray[np.int64]) -> None:
        if rows.size == 0:
            return
        similarities = _rounded(units[rows] @ units.T)
        similarities[:, ~alive] = -np.inf
        similarities[np.arange(rows.size), rows] = -np.inf
        nearest[rows] = np.argmax(similarities, axis=1)  # the first of equals: the smaller id
        similarity[rows] = similarities[np.arange(rows.size), nearest[rows]]

    find_nearest(np.flatnonzero(movable))
    # After a merge, a group that pointed at either merged group keeps its similarity as an upper
    # bound (dirty) and looks again only if it comes up as the closest pair: most never do.
    dirty = np.zeros(count, dtype=bool)
    relaxed = threshold * factor
    merges: list[Merge] = []
    while True:
        looking = movable & alive & np.isfinite(similarity) & (dirty | ~busy[nearest])
        waiting = movable & alive & (counting < group_size) & waited & ~grew
        # Of each group's members from its nearest's centroid (a group alone has no nearest).
        distance = np.where(np.isfinite(similarity), 1.0 - cohesion * np.maximum(similarity, -1.0), np.inf)
        close = looking & (distance <= threshold)
        late = looking & ~close & waiting & (distance <= relaxed)
        eligible = np.flatnonzero(close | late)
        if eligible.size == 0:
            return merges
        low = np.minimum(ids[eligible], ids[nearest[eligible]])
        high = np.maximum(ids[eligible], ids[nearest[eligible]])
        picked = int(eligible[np.lexsort((high, low, ~dirty[eligible], distance[eligible]))[0]])
        if dirty[picked]:
            find_nearest(np.array([picked], dtype=np.int64))
            dirty[picked] = False
            continue
        joined = int(nearest[picked])
        rule: MergeRule = "close" if close[picked] else "waited"
        keeps_joined = (
            not absorbable[joined]
            or sizes[joined] > sizes[picked]
            or (sizes[joined] == sizes[picked] and ids[joined] < ids[picked])
        )
        survivor, gone = (joined, picked) if keeps_joined else (picked, joined)
        merges.append(Merge(int(ids[survivor]), int(ids[gone]), float(distance[picked]), rule))
        sums[survivor] += sums[gone]
        sizes[survivor] += sizes[gone]
        counting[survivor] += counting[gone]
        units[survivor] = _unit_rows(sums[survivor : survivor + 1])[0]
        cohesion[survivor] = float(np.linalg.norm(sums[survivor])) / int(sizes[survivor])
        units[gone] = 0.0
        alive[gone] = False
        grew[survivor] = True
        # Only pairs with the survivor changed. A group the survivor is now strictly nearer to
        # than its (exact or bounding) similarity points at it, exactly.
        rows = movable & alive & (np.arange(count) != survivor)
        dirty |= rows & ((nearest == gone) | (nearest == survivor))
        to_survivor = _rounded(units @ units[survivor])
        closer = rows & (to_survivor > similarity)
        closer |= rows & ~dirty & (to_survivor == similarity) & (survivor < nearest)
        nearest[closer] = survivor
        similarity[closer] = to_survivor[closer]
        dirty[closer] = False
        if movable[survivor]:  # its own nearest, from the same products
            to_survivor[~alive] = -np.inf
            to_survivor[survivor] = -np.inf
            nearest[survivor] = int(np.argmax(to_survivor))
            similarity[survivor] = to_survivor[nearest[survivor]]
            dirty[survivor] = False


def _rounded(similarities: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    # Products of the same two rows may differ in the last bit with the path that computed them
    # (one row or many): rounded, they agree, and a tie goes by id whichever path saw it.
    rounded: npt.NDArray[np.float64] = np.round(similarities, 12)
    return rounded


def _unit_rows(matrix: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    units: npt.NDArray[np.float64] = np.divide(matrix, norms, out=np.zeros_like(matrix), where=norms > 0)
    return units


def merged_into(merges: Sequence[Merge]) -> dict[int, int]:
    """Where each absorbed group's traces end up, following merges of merged groups."""
    into: dict[int, int] = {}
    for merge in merges:
        into[merge.absorbed] = merge.survivor
    for absorbed in into:
        final = into[absorbed]
        while final in into:
            final = into[final]
        into[absorbed] = final
    return into
