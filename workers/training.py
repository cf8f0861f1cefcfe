"""Paper mode, the decisions: the labelled set, its batches, the rollout prompt, the groups with a
signal, and a step's report. Plain data; the IO shell is ``workers/training_store.py``.

The paper's protocol (Training-Free GRPO): for each batch of questions, G rollouts of each
question with the current library in the prompt; each rollout rewarded by a verifier; a
question's rollouts are one group, skipped when their rewards are all equal; the batch's groups
distilled, and one new library version per batch; several epochs over the set.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from string import Template
from typing import Any

from grpod.schema.errors import OperatorError
from grpod.schema.library import experience_lines

Messages = list[dict[str, str]]
MAX_PROBLEM_ID = 40  # room in a trace id (128 characters) for the run, epoch and rollout
UNSAFE_ID = re.compile(r"[^A-Za-z0-9_.:-]")


@dataclass(frozen=True)
class Problem:
    """One labelled question of the set."""

    id: str
    question: str
    answer: str


def read_problems(lines: Iterable[str], source: str) -> list[Problem]:
    """The problems of a JSON-lines set (``{"id"?, "question", "answer"}`` per line; ``problem`` is
    taken for ``question``), or one sentence naming the first line that is wrong."""
    problems: list[Problem] = []
    seen: set[str] = set()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{source} line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise OperatorError(f"{where} is not JSON: {error.msg}.") from None
        if not isinstance(row, dict):
            raise OperatorError(f"{where} is a JSON {type(row).__name__}, not an object with question and answer.")
        question = row.get("question", row.get("problem"))
        answer = row.get("answer")
        if not isinstance(question, str) or not question.strip():
            raise OperatorError(f"{where} has no question (a non-empty string).")
        if not isinstance(answer, str | int | float) or isinstance(answer, bool) or not str(answer).strip():
            raise OperatorError(f"{where} has no answer (a string or a number).")
        raw_id = str(row.get("id", number))
        problem_id = UNSAFE_ID.sub("_", raw_id)[:MAX_PROBLEM_ID] or str(number)
        if problem_id in seen:
            raise OperatorError(f"{where} repeats the id {raw_id!r}; each problem needs its own.")
        seen.add(problem_id)
        problems.append(Problem(problem_id, question, str(answer).strip()))
    if not problems:
        raise OperatorError(f"{source} has no problem in it.")
    return problems


def dataset_digest(problems: Sequence[Problem]) -> str:
    canonical = json.dumps([asdict(p) for p in problems], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def run_key(domain: str, problems: Sequence[Problem], settings: Mapping[str, Any]) -> bytes:
    """What makes two runs the same run: a second `grpod train` with these resumes the first."""
    canonical = json.dumps(
        {"domain": domain, "dataset": dataset_digest(problems), "settings": dict(settings)},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).digest()


@dataclass(frozen=True)
class Step:
    """One batch of one epoch."""

    number: int  # from 1, over the whole run
    epoch: int  # from 1
    problems: tuple[Problem, ...]


def plan_steps(problems: Sequence[Problem], epochs: int, batch_size: int, seed: str) -> list[Step]:
    """Every step of the run: each epoch shuffles the set (the same way for the same run, so a
    resumed run takes the same batches) and cuts it into batches."""
    steps: list[Step] = []
    for epoch in range(1, epochs + 1):
        order = list(problems)
        random.Random(f"{seed}:{epoch}").shuffle(order)  # noqa: S311 (an order, not a secret)
        for start in range(0, len(order), batch_size):
            steps.append(Step(len(steps) + 1, epoch, tuple(order[start : start + batch_size])))
    return steps


def rollout_trace_id(run_id: int, epoch: int, problem_id: str, rollout: int) -> str:
    return f"train-{run_id}-e{epoch}-{problem_id}-r{rollout}"


def rollout_seed(trace_id: str) -> int:
    """A rollout's sampling seed: the same rollout asked again samples the same where the server allows."""
    return int.from_bytes(hashlib.sha256(trace_id.encode()).digest()[:4], "big")


def _templates() -> tuple[Template, Template]:
    text = (resources.files("grpod.workers") / "prompts" / "rollout.md").read_text(encoding="utf-8")
    _, _, rest = text.partition("<!-- problem -->")
    problem, marker, experiences = rest.partition("<!-- experiences -->")
    if not marker:
        raise ValueError("prompt rollout.md needs a '<!-- problem -->' and an '<!-- experiences -->' section")
    return Template(problem.strip()), Template(experiences.strip())


def rollout_messages(question: str, library: Mapping[int, str]) -> Messages:
    """The paper's rollout prompt: the problem, then the experiences with the instruction to read
    them first (none with an empty library), then where the final answer goes."""
    problem, experiences = _templates()
    listed = "\n".join(experience_lines(library))
    block = f"\n{experiences.substitute(experiences=listed)}\n" if library else ""
    return [{"role": "user", "content": problem.substitute(problem=question, experiences=block)}]


def rollout_trajectory(question: str, completion: str) -> list[dict[str, str]]:
    """What a rollout's trace keeps: the question and the answer (the library is its version)."""
    return [{"role": "user", "content": question}, {"role": "assistant", "content": completion}]


def has_signal(rewards: Sequence[float]) -> bool:
    """A group teaches something only when its rewards differ (for 0/1 rewards: 0 < mean < 1)."""
    return len(rewards) > 1 and max(rewards) > min(rewards)


@dataclass(frozen=True)
class Usage:
    """Calls and tokens, and their cost where prices are set (per million tokens)."""

    calls: int = 0
    tokens_in: int = 0
    tokens_out: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.calls + other.calls, self.tokens_in + other.tokens_in, self.tokens_out + other.tokens_out)

    def cost(self, price_in: float | None, price_out: float | None) -> float | None:
        if price_in is None or price_out is None:
            return None
        return (self.tokens_in * price_in + self.tokens_out * price_out) / 1_000_000


@dataclass(frozen=True)
class StepReport:
    """A step's row of the table `grpod train` prints after it."""

    step: int
    epoch: int
    questions: int
    rollouts: int
    correct: int
    groups_with_signal: int
    failed_distillations: int  # after the LLM's retries; the step goes on without them
    operations: int
    version: int | None  # what the step published (None: the library did not change)
    label: str | None
    policy: Usage
    distiller: Usage
    cost: float | None  # this step's, where prices are set
    distiller_calls: Mapping[str, int] = field(default_factory=dict)  # by purpose: summary, advantage, ...

    @property
    def accuracy(self) -> float:
        return self.correct / self.rollouts if self.rollouts else 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"accuracy": self.accuracy, "distiller_calls": dict(self.distiller_calls)}

    @classmethod
    def from_json(cls, row: Mapping[str, Any]) -> StepReport:
        values = {key: row[key] for key in cls.__dataclass_fields__ if key in row}
        values["policy"], values["distiller"] = Usage(**row["policy"]), Usage(**row["distiller"])
        return cls(**values)


def step_cost(policy: Usage, distiller: Usage, prices: Mapping[str, float | None]) -> float | None:
    """The step's cost: the policy's tokens at its prices, the distiller's at the LLM's."""
    parts = [
        policy.cost(prices.get("policy_in"), prices.get("policy_out")),
        distiller.cost(prices.get("llm_in"), prices.get("llm_out")),
    ]
    return None if any(part is None for part in parts) else sum(part or 0.0 for part in parts)
