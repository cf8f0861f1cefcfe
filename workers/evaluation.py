"""`grpod eval`, the decisions: Mean@k and Pass@k of each arm, with 95% intervals, and the
difference between the arms. Plain data.

The question is the unit: each question's k rollouts give it an accuracy (correct / k); Mean@k is
the mean of those, and its interval is Student's t over the questions. Pass@k is the share of
questions with at least one correct rollout. The difference of two arms is paired by question
(both arms answer the same questions), so its interval is narrower than the two apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from grpod.workers.promotion import Stats
from grpod.workers.training import Usage


@dataclass(frozen=True)
class Arm:
    """What an arm runs with: a library version (0: the empty library), by name for people."""

    name: str  # "version 3", "no library"
    version: int


@dataclass(frozen=True)
class ArmScore:
    arm: Arm
    k: int
    correct: tuple[int, ...]  # per question, in the set's order: how many of its k were right
    usage: Usage

    @property
    def accuracies(self) -> list[float]:
        return [c / self.k for c in self.correct]

    @property
    def mean_at_k(self) -> float:
        return Stats.of(self.accuracies).mean or 0.0

    @property
    def pass_at_k(self) -> float:
        return sum(1 for c in self.correct if c > 0) / len(self.correct) if self.correct else 0.0

    def to_json(self) -> dict[str, Any]:
        interval = Stats.of(self.accuracies).interval()
        return {
            "arm": self.arm.name,
            "version": self.arm.version,
            "k": self.k,
            "questions": len(self.correct),
            "mean_at_k": self.mean_at_k,
            "mean_at_k_interval": list(interval) if interval else None,
            "pass_at_k": self.pass_at_k,
            "correct": list(self.correct),
            "llm_calls": self.usage.calls,
            "tokens_in": self.usage.tokens_in,
            "tokens_out": self.usage.tokens_out,
        }


def difference(first: ArmScore, second: ArmScore) -> dict[str, Any]:
    """Mean@k of ``first`` minus ``second``, with the 95% interval of the paired difference."""
    if len(first.correct) != len(second.correct):
        raise ValueError("the arms must answer the same questions")
    deltas = [a - b for a, b in zip(first.accuracies, second.accuracies, strict=True)]
    stats = Stats.of(deltas)
    interval = stats.interval()
    return {
        "mean_at_k": stats.mean if stats.mean is not None else 0.0,
        "interval": list(interval) if interval else None,
        "pass_at_k": first.pass_at_k - second.pass_at_k,
    }


def report(first: ArmScore, second: ArmScore, *, domain: str, dataset: str) -> dict[str, Any]:
    """Both arms side by side, and their difference: what `grpod eval --json` prints and stores."""
    return {
        "domain": domain,
        "dataset": dataset,
        "k": first.k,
        "arms": [first.to_json(), second.to_json()],
        "difference": difference(first, second),
    }


def plan_arms(production: int | None, version: int | None, no_library: bool, against: str | None) -> tuple[Arm, Arm]:
    """The two arms: the library (``version``, else production) or none, against ``against``
    (a version, or ``none``; by default no library, or production when the first arm has none)."""
    if no_library:
        first = Arm("no library", 0)
    else:
        chosen = version if version is not None else production
        first = Arm(f"version {chosen}", chosen) if chosen else Arm("no library", 0)
    if against is None:
        against = "none" if first.version else "production"
    if against == "none":
        second = Arm("no library", 0)
    elif against == "production":
        second = Arm(f"version {production}", production) if production else Arm("no library", 0)
    else:
        second = Arm(f"version {int(against)}", int(against))
    return first, second


def parse_against(value: str | None) -> str | None:
    """``--against``: a version number, ``none`` or ``production``; None when not given."""
    if value is None or value in ("none", "production"):
        return value
    if value.isdigit():
        return value
    raise ValueError(f"--against takes a version number, none or production, not {value!r}")
