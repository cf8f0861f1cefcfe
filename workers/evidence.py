"""How useful each experience is, from what grpod knows of it: the rule consolidation retires by,
and the score a token budget serves by.

Plain functions over plain data. An experience's usefulness is

    lift + FRESHNESS_WEIGHT * freshness + DISTINCTNESS_WEIGHT * distinctness

- ``lift``: the reward record of the versions that added or changed it, against their parents.
  Each such version's mean reward minus its parent's, weighted by the smaller of their rewarded
  trace counts, and shrunk toward 0 by LIFT_PRIOR_TRACES: a version with few rewarded traces
  says little.
- ``freshness``: 1 when a distillation confirmed or changed it just now, halving every
  FRESHNESS_HALF_LIFE_DAYS.
- ``distinctness``: 1 minus its highest cosine similarity to another experience of the library.
  A near-copy of another adds little.

With no evidence at all, an experience confirmed just now and unlike any other scores 0.10. A
version that lifted rewards by 0.1 over 100 traces adds 0.083 to that. Retirement takes the
lowest scores first, and ties go to the newest (highest id).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

LIFT_PRIOR_TRACES = 20.0
FRESHNESS_HALF_LIFE_DAYS = 30.0
FRESHNESS_WEIGHT = 0.05
DISTINCTNESS_WEIGHT = 0.05


@dataclass(frozen=True)
class Outcome:
    """The rewarded traces served with one version: their mean (combined) reward and how many."""

    mean: float
    traces: int


@dataclass(frozen=True)
class Evidence:
    """What is known of one experience, and the usefulness it comes to."""

    experience_id: int
    lift: float
    traces: int  # the rewarded traces behind the lift (both sides of each comparison)
    days_since_confirmed: float | None  # None: never (treated as long ago)
    closeness: float  # the highest cosine similarity to another experience (0 alone)

    @property
    def freshness(self) -> float:
        if self.days_since_confirmed is None:
            return 0.0
        return float(0.5 ** (max(0.0, self.days_since_confirmed) / FRESHNESS_HALF_LIFE_DAYS))

    @property
    def usefulness(self) -> float:
        distinctness = min(1.0, max(0.0, 1.0 - self.closeness))
        return round(self.lift + FRESHNESS_WEIGHT * self.freshness + DISTINCTNESS_WEIGHT * distinctness, 6)

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.experience_id,
            "usefulness": self.usefulness,
            "lift": round(self.lift, 6),
            "traces": self.traces,
            "days_since_confirmed": (
                round(self.days_since_confirmed, 3) if self.days_since_confirmed is not None else None
            ),
            "closeness": round(self.closeness, 6),
        }


def lift(versions: Sequence[int], outcomes: Mapping[int, Outcome], parents: Mapping[int, int]) -> tuple[float, int]:
    """The shrunk reward difference of ``versions`` (those that added or changed an experience)
    against their parents, and the traces behind it."""
    weighted = 0.0
    weight = 0.0
    for version in versions:
        parent = parents.get(version)
        if parent is None:
            continue
        mine, theirs = outcomes.get(version), outcomes.get(parent)
        if mine is None or theirs is None:
            continue
        w = float(min(mine.traces, theirs.traces))
        weighted += w * (mine.mean - theirs.mean)
        weight += w
    return weighted / (weight + LIFT_PRIOR_TRACES), int(weight)


def evidence(
    experience_id: int,
    versions: Sequence[int],
    outcomes: Mapping[int, Outcome],
    parents: Mapping[int, int],
    confirmed_at: datetime | None,
    closeness: float,
    now: datetime,
) -> Evidence:
    value, traces = lift(versions, outcomes, parents)
    days = (now - confirmed_at).total_seconds() / 86_400 if confirmed_at is not None else None
    return Evidence(experience_id, value, traces, days, closeness if math.isfinite(closeness) else 0.0)


def retirement_order(scored: Mapping[int, Evidence]) -> list[int]:
    """Least useful first; among equals the newest (highest id) goes first."""
    return sorted(scored, key=lambda i: (scored[i].usefulness, -i))
