"""A library as an agent uses it: its version, its experiences, and the block it puts into its prompt.

Shared by the SDK, the workers and the command line. The prompt
block follows the paper: one experience per line, with its id, within a token budget.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

PROMPT_HEADER = "Experiences learned from earlier attempts (use the ones that apply):"
CHARS_PER_TOKEN = 4  # a conservative estimate for English text; no tokenizer is needed in the agent
# The usefulness of an experience with no score yet (new since the last consolidation, or stored
# before scores were): what an experience with no reward evidence, just confirmed, scores.
NEUTRAL_USEFULNESS = 0.05


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def experience_lines(experiences: Mapping[int, str]) -> list[str]:
    """The paper's format: ``[id] text``, by id."""
    return [f"[{experience_id}] {text}" for experience_id, text in sorted(experiences.items())]


def line_tokens(experience_id: int, text: str) -> int:
    """What one experience's line costs in a prompt: ``[id] text`` and its line break."""
    return estimate_tokens(f"[{experience_id}] {text}") + 1


def block_tokens(experiences: Mapping[int, str]) -> int:
    """What the whole block of these experiences costs in tokens, as ``render_prompt`` charges it."""
    if not experiences:
        return 0
    return estimate_tokens(PROMPT_HEADER) + sum(line_tokens(i, text) for i, text in experiences.items())


def serving_order(experiences: Mapping[int, str], usefulness: Mapping[int, float | None] | None = None) -> list[int]:
    """Which experiences a budget keeps first: the most useful (the score each version stores,
    from its evidence), then the lowest id. With no scores at all this is id order."""
    scores = usefulness or {}

    def key(experience_id: int) -> tuple[float, int]:
        score = scores.get(experience_id)
        return (-(NEUTRAL_USEFULNESS if score is None else score), experience_id)

    return sorted(experiences, key=key)


def render_prompt(
    experiences: Mapping[int, str],
    token_budget: int | None = None,
    usefulness: Mapping[int, float | None] | None = None,
) -> str:
    """The block for the agent's prompt; empty for an empty library. Within a budget it keeps the
    longest run of experiences in serving order (best evidence first) that fits, shown by id."""
    if not experiences:
        return ""
    kept: list[int] = []
    used = estimate_tokens(PROMPT_HEADER)
    for experience_id in serving_order(experiences, usefulness):
        cost = line_tokens(experience_id, experiences[experience_id])
        if token_budget is not None and used + cost > token_budget:
            break
        kept.append(experience_id)
        used += cost
    if not kept:
        return ""
    return "\n".join([PROMPT_HEADER, *experience_lines({i: experiences[i] for i in kept})])


@dataclass(frozen=True)
class Experience:
    """One learned experience: its id (stable for life), its text, and, where known, its provenance:
    every change that made it what it is, oldest first (the version, the operation, and the
    distillations, groups and traces behind it)."""

    id: int
    text: str
    provenance: tuple[Mapping[str, Any], ...] = ()
    # Its usefulness when its version was made (workers/evidence.py): what a token budget keeps first.
    usefulness: float | None = None

    def to_json(self) -> dict[str, Any]:
        value: dict[str, Any] = {
            "id": self.id,
            "text": self.text,
            "provenance": [dict(entry) for entry in self.provenance],
        }
        if self.usefulness is not None:
            value["usefulness"] = self.usefulness
        return value

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> Experience:
        score = value.get("usefulness")
        return cls(
            int(value["id"]),
            str(value["text"]),
            tuple(value.get("provenance") or ()),
            float(score) if isinstance(score, int | float) and not isinstance(score, bool) else None,
        )


@dataclass(frozen=True)
class Library:
    """What an agent fetches: a domain's library at a label (version 0: nothing learned yet)."""

    domain: str
    label: str
    version: int
    experiences: tuple[Experience, ...] = field(default_factory=tuple)
    prompt: str = ""

    @classmethod
    def from_rows(
        cls, domain: str, label: str, version: int, rows: Sequence[Mapping[str, Any]], token_budget: int | None
    ) -> Library:
        experiences = tuple(
            Experience(int(row["id"]), str(row["text"]), usefulness=Experience.from_json(row).usefulness)
            for row in rows
        )
        prompt = render_prompt(
            {e.id: e.text for e in experiences}, token_budget, {e.id: e.usefulness for e in experiences}
        )
        return cls(domain, label, version, experiences, prompt)
