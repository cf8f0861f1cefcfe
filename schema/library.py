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


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def experience_lines(experiences: Mapping[int, str]) -> list[str]:
    """The paper's format: ``[id] text``, by id."""
    return [f"[{experience_id}] {text}" for experience_id, text in sorted(experiences.items())]


def render_prompt(experiences: Mapping[int, str], token_budget: int | None = None) -> str:
    """The block for the agent's prompt; empty for an empty library. Experiences that do not fit the
    budget are left out, newest (highest id) first, so the long-standing ones stay."""
    lines = experience_lines(experiences)
    if not lines:
        return ""
    kept = [PROMPT_HEADER]
    used = estimate_tokens(PROMPT_HEADER)
    for line in lines:
        cost = estimate_tokens(line) + 1
        if token_budget is not None and used + cost > token_budget:
            break
        kept.append(line)
        used += cost
    return "\n".join(kept) if len(kept) > 1 else ""


@dataclass(frozen=True)
class Experience:
    """One learned experience: its id (stable for life), its text, and, where known, its provenance:
    every change that made it what it is, oldest first (the version, the operation, and the
    distillations, groups and traces behind it)."""

    id: int
    text: str
    provenance: tuple[Mapping[str, Any], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "text": self.text, "provenance": [dict(entry) for entry in self.provenance]}

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> Experience:
        return cls(int(value["id"]), str(value["text"]), tuple(value.get("provenance") or ()))


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
        experiences = tuple(Experience(int(row["id"]), str(row["text"])) for row in rows)
        prompt = render_prompt({e.id: e.text for e in experiences}, token_budget)
        return cls(domain, label, version, experiences, prompt)
