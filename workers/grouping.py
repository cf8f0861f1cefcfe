"""Grouping stage, the decisions: which group a query joins, how rewards combine, when a group is ready.

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
