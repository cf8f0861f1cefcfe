"""Distillation stage, the decisions: Training-Free GRPO's semantic group advantage, over plain data.

For one ready group: one summary per trajectory (asked concurrently), one group-advantage call
that states at most K new experiences, and one operations call that turns them into ADD /
UPDATE / DELETE / NONE against the domain's library. For a domain's update window: the
operations of its distillations consolidated (one LLM call when several groups proposed
changes) into one set. The LLM is reached through an ``Ask`` callable, which the shell wires to
the cost ledger (or to a recording, for replay); nothing here touches a database.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import cache
from importlib import resources
from string import Template
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from grpod.schema.errors import SettingError
from grpod.schema.library import experience_lines
from grpod.workers.llm import Completion, extract_json
from grpod.workers.operations import (
    MIN_WORDS,
    Note,
    Operation,
    consolidate,
    merged_sources,
    parse_operations,
    validate,
)

Purpose = Literal["summary", "advantage", "operations", "consolidation", "merge"]
PURPOSES: tuple[Purpose, ...] = ("summary", "advantage", "operations", "consolidation")
STEP_ATTEMPTS = 3  # a step whose answer cannot be used is asked again, warmer, this many times in all
RETRY_TEMPERATURE = 0.7
SUMMARY_WORDS = 120
SUMMARY_MAX_TOKENS = 200  # room for SUMMARY_WORDS words; a model that rambles is cut there
TRAJECTORY_CHARS = 6000  # a longer trajectory keeps its beginning and its end
CONTENT_CHARS = 1500  # one message of a trajectory
FEEDBACK_CHARS = 1000
CLOSE_DISTANCE = 0.4  # measured on rule pairs with the bundled MiniLM (README, "Distillation")
CONTEXT_TOKENS = 200  # of the library in one group-advantage or operations prompt (bench/prompt_tokens.py)


@dataclass(frozen=True)
class LearningSettings:
    """A domain's distillation settings (stored with its grouping settings; these are the defaults)."""

    agent_objective: str = "Answer the user's query correctly, completely and efficiently."
    learning_objective: str = (
        "Short, general rules about when to use which tool or strategy, and which mistakes to avoid."
    )
    max_new_experiences: int = 2  # K: new experiences one group may propose
    experience_max_words: int = 32
    update_window_seconds: float = 60.0  # distillations of a domain wait this long to be published together
    update_window_groups: int = 4  # ... or until this many are waiting
    # A new experience with no experience of the library within this cosine distance is added
    # without an operations call. Closer, the operations step decides how it changes the library.
    close_distance: float = CLOSE_DISTANCE
    # A step's prompt shows the experiences nearest to its group, up to this many tokens of them.
    context_tokens: int = CONTEXT_TOKENS

    FIELDS = (
        "agent_objective",
        "learning_objective",
        "max_new_experiences",
        "experience_max_words",
        "update_window_seconds",
        "update_window_groups",
        "close_distance",
        "context_tokens",
    )

    @classmethod
    def from_json(cls, values: Mapping[str, object]) -> LearningSettings:
        defaults = cls()
        return validated_learning_settings(**{name: values.get(name, getattr(defaults, name)) for name in cls.FIELDS})

    def to_json(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self.FIELDS}


def validated_learning_settings(**values: object) -> LearningSettings:
    for name in ("agent_objective", "learning_objective"):
        text = values[name]
        if not isinstance(text, str) or not text.strip() or len(text) > 2000:
            raise SettingError(f"{name} must be a text of 1 to 2000 characters, not {text!r}")
    k, words, window, groups = (
        values["max_new_experiences"],
        values["experience_max_words"],
        values["update_window_seconds"],
        values["update_window_groups"],
    )
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 10:
        raise SettingError(f"max_new_experiences must be a whole number from 1 to 10, not {k!r}")
    if isinstance(words, bool) or not isinstance(words, int) or not 8 <= words <= 200:
        raise SettingError(f"experience_max_words must be a whole number from 8 to 200, not {words!r}")
    if isinstance(window, bool) or not isinstance(window, int | float) or not 0 <= window <= 86400:
        raise SettingError(f"update_window_seconds must be a number of seconds from 0 to 86400, not {window!r}")
    if isinstance(groups, bool) or not isinstance(groups, int) or not 1 <= groups <= 1000:
        raise SettingError(f"update_window_groups must be a whole number from 1 to 1000, not {groups!r}")
    close = values["close_distance"]
    if isinstance(close, bool) or not isinstance(close, int | float) or not 0 <= close <= 2:
        raise SettingError(f"close_distance must be a cosine distance from 0 to 2, not {close!r}")
    context = values["context_tokens"]
    if isinstance(context, bool) or not isinstance(context, int) or not 50 <= context <= 100_000:
        raise SettingError(f"context_tokens must be a whole number of tokens from 50 to 100000, not {context!r}")
    return LearningSettings(
        agent_objective=str(values["agent_objective"]).strip(),
        learning_objective=str(values["learning_objective"]).strip(),
        max_new_experiences=k,
        experience_max_words=words,
        update_window_seconds=float(window),
        update_window_groups=groups,
        close_distance=float(close),
        context_tokens=context,
    )


# Inputs -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One trace of a group with its (combined) reward, as the distillation sees it."""

    trace_id: str
    reward: float
    query: str = ""
    trajectory: tuple[Mapping[str, Any], ...] = ()
    answer: str = ""
    critique: str | None = None
    ground_truth: str | None = None

    def key(self) -> dict[str, Any]:
        """What identifies this sample in a distillation's input (its content is immutable by trace id)."""
        return {
            "trace_id": self.trace_id,
            "reward": self.reward,
            "critique": self.critique,
            "ground_truth": self.ground_truth,
        }


def pick_samples(pool: Sequence[Sample], size: int) -> list[Sample]:
    """``size`` samples of a group, spread over its rewards: the best and the worst are always in.

    Deterministic: the same pool gives the same pick (so a retry has the same input key).
    """
    ordered = sorted(pool, key=lambda sample: (sample.reward, sample.trace_id))
    if len(ordered) <= size:
        return ordered
    if size == 1:
        return [ordered[-1]]
    picked = sorted({round(index * (len(ordered) - 1) / (size - 1)) for index in range(size)})
    return [ordered[index] for index in picked]


def input_key(domain: str, group_id: int | None, samples: Sequence[Sample], parent_version: int) -> bytes:
    """The idempotency key of a distillation: the group's traces with their rewards, and the parent version."""
    canonical = json.dumps(
        {
            "domain": domain,
            "group": group_id,
            "parent": parent_version,
            "samples": sorted((sample.key() for sample in samples), key=lambda key: key["trace_id"]),
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).digest()


# Prompts ----------------------------------------------------------------------------------------

Messages = list[dict[str, str]]


@cache
def _template(step: str) -> tuple[Template, Template]:
    """The (system, user) templates of a step, from ``workers/prompts/<step>.md``."""
    text = (resources.files("grpod.workers") / "prompts" / f"{step}.md").read_text(encoding="utf-8")
    _, _, rest = text.partition("<!-- system -->")
    system, marker, user = rest.partition("<!-- user -->")
    if not marker:
        raise ValueError(f"prompt {step}.md needs a '<!-- system -->' and a '<!-- user -->' section")
    return Template(system.strip()), Template(user.strip())


def render(step: str, values: Mapping[str, object]) -> Messages:
    """The chat messages of a step; every ``$name`` of its template must be given."""
    system, user = _template(step)
    return [
        {"role": "system", "content": system.substitute(values)},
        {"role": "user", "content": user.substitute(values)},
    ]


def render_library(library: Mapping[int, str]) -> str:
    """The library as the paper renders it: one experience per line, with its id."""
    if not library:
        return "(none yet)"
    return "\n".join(experience_lines(library))


def _clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]} [... {len(text) - 2 * half} characters left out ...] {text[-half:]}"


def render_trajectory(trajectory: Sequence[Mapping[str, Any]], limit: int = TRAJECTORY_CHARS) -> str:
    """An OpenAI-style message list as lines a model can read: role, content, tool calls."""
    lines = []
    for message in trajectory:
        role = str(message.get("role", "?"))
        content = message.get("content")
        if not isinstance(content, str):
            content = json.dumps(content, ensure_ascii=False) if content is not None else ""
        line = f"{role}: {_clip(content.strip(), CONTENT_CHARS)}"
        for call in message.get("tool_calls") or []:
            function = call.get("function", call) if isinstance(call, Mapping) else {}
            name = function.get("name", "?") if isinstance(function, Mapping) else "?"
            arguments = function.get("arguments", "") if isinstance(function, Mapping) else ""
            line += f"\n  -> calls {name}({_clip(str(arguments), 300)})"
        lines.append(line)
    return _clip("\n".join(lines), limit) if lines else "(no steps recorded)"


def _feedback(sample: Sample) -> str:
    parts = []
    if sample.critique:
        parts.append(f"Critique: {_clip(sample.critique, FEEDBACK_CHARS)}")
    if sample.ground_truth:
        parts.append(f"Correct answer: {_clip(sample.ground_truth, FEEDBACK_CHARS)}")
    return "\n".join(parts)


def _reward(value: float) -> str:
    return f"{value:.4g}"


def summary_messages(settings: LearningSettings, sample: Sample, lowest: float, highest: float) -> Messages:
    return render(
        "summary",
        {
            "agent_objective": settings.agent_objective,
            "summary_words": SUMMARY_WORDS,
            "query": _clip(sample.query, FEEDBACK_CHARS),
            "trajectory": render_trajectory(sample.trajectory),
            "answer": _clip(sample.answer, FEEDBACK_CHARS),
            "reward": _reward(sample.reward),
            "lowest": _reward(lowest),
            "highest": _reward(highest),
            "feedback": _feedback(sample),
        },
    )


def advantage_messages(
    settings: LearningSettings, samples: Sequence[Sample], summaries: Sequence[str], library: Mapping[int, str]
) -> Messages:
    ranked = sorted(zip(samples, summaries, strict=True), key=lambda pair: (-pair[0].reward, pair[0].trace_id))
    attempts = "\n\n".join(
        f"Attempt {number} (reward {_reward(sample.reward)}), query: {_clip(sample.query, 300)}\n{summary}"
        for number, (sample, summary) in enumerate(ranked, start=1)
    )
    return render(
        "advantage",
        {
            "agent_objective": settings.agent_objective,
            "learning_objective": settings.learning_objective,
            "max_experiences": settings.max_new_experiences,
            "max_words": settings.experience_max_words,
            "library": render_library(library),
            "attempts": attempts,
        },
    )


def operations_messages(
    settings: LearningSettings, new_experiences: Sequence[str], library: Mapping[int, str]
) -> Messages:
    return render(
        "operations",
        {
            "agent_objective": settings.agent_objective,
            "learning_objective": settings.learning_objective,
            "max_words": settings.experience_max_words,
            "library": render_library(library),
            "new_experiences": "\n".join(f"- {text}" for text in new_experiences),
        },
    )


def _describe(operation: Operation) -> str:
    target = f" [{operation.experience_id}]" if operation.experience_id is not None else ""
    text = f": {operation.text}" if operation.text else ""
    return f"{operation.kind}{target}{text}"


def consolidation_messages(
    settings: LearningSettings, proposals: Sequence[Operation], library: Mapping[int, str]
) -> Messages:
    return render(
        "consolidation",
        {
            "agent_objective": settings.agent_objective,
            "max_words": settings.experience_max_words,
            "library": render_library(library),
            "proposed": "\n".join(f"{number}. {_describe(op)}" for number, op in enumerate(proposals, start=1)),
        },
    )


# Answer shapes (the LLM is constrained by them where it can be; answers are still read tolerantly)


def advantage_schema(settings: LearningSettings) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "experiences": {
                "type": "array",
                "items": {"type": "string", "minLength": 1, "maxLength": settings.experience_max_words * 12},
                "maxItems": settings.max_new_experiences,
            }
        },
        "required": ["experiences"],
    }


def operations_schema(settings: LearningSettings, max_items: int, *, merged_from: bool = False) -> dict[str, Any]:
    item: dict[str, Any] = {
        "operation": {"enum": ["ADD", "UPDATE", "DELETE", "NONE"]},
        "id": {"type": ["integer", "null"]},
        "text": {"type": ["string", "null"], "maxLength": settings.experience_max_words * 12},
    }
    if merged_from:
        item["merged_from"] = {"type": "array", "items": {"type": "integer"}, "maxItems": max_items}
    item["reason"] = {"type": "string", "maxLength": 240}
    return {
        "type": "object",
        "properties": {
            "operations": {
                "type": "array",
                "items": {"type": "object", "properties": item, "required": list(item)},
                "maxItems": max_items,
            }
        },
        "required": ["operations"],
    }


# Asking, with retries ---------------------------------------------------------------------------


class Ask(Protocol):
    """One LLM call for a step, recorded by whoever provides it."""

    def __call__(
        self,
        purpose: Purpose,
        messages: Messages,
        *,
        schema: Mapping[str, Any] | None,
        max_tokens: int,
        temperature: float,
        seed: int | None = None,
    ) -> Completion: ...


class StepFailedError(Exception):
    """A step's answer could not be used after its retries; the distillation fails (and is retried later)."""

    def __init__(self, purpose: Purpose, why: str) -> None:
        super().__init__(f"the {purpose} step gave no usable answer after {STEP_ATTEMPTS} attempts: {why}")
        self.purpose = purpose


def ask_until(
    ask: Ask,
    purpose: Purpose,
    messages: Messages,
    schema: Mapping[str, Any] | None,
    max_tokens: int,
    read: Callable[[Completion], Any],
) -> Any:
    """The first answer ``read`` can use (it returns None for one it cannot), asking again warmer.

    Answers from a recording (a resumed or replayed distillation) do not count against the
    attempts: a step that failed before gets its full attempts when it is tried again.
    """
    why = "no answer"
    asked = tried = 0
    while asked < STEP_ATTEMPTS:
        temperature = 0.0 if tried == 0 else RETRY_TEMPERATURE
        completion = ask(
            purpose,
            messages,
            schema=schema,
            max_tokens=max_tokens,
            temperature=temperature,
            seed=step_seed(messages, tried),
        )
        tried += 1
        asked += 0 if completion.recorded else 1
        value = read(completion)
        if value is not None:
            return value
        why = completion.error or "the answer was empty or held nothing usable"
    raise StepFailedError(purpose, why)


def step_seed(messages: Messages, attempt: int) -> int:
    """The sampling seed of a step's attempt, from its input: reruns and replays sample alike."""
    digest = hashlib.sha256(json.dumps([messages, attempt], sort_keys=True).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def _answer_object(completion: Completion) -> dict[str, Any] | None:
    """The answer's JSON object: the schema-valid one, or any object tolerant extraction finds."""
    return completion.data if completion.data is not None else extract_json(completion.text)


def read_summary(completion: Completion) -> str | None:
    text = " ".join(completion.text.split())
    return text or None


def read_new_experiences(completion: Completion, settings: LearningSettings) -> list[str] | None:
    """The new experiences of a group-advantage answer: texts, cut to the word limit, at most K, no repeats.

    An empty list is a valid answer (the group taught nothing new); no list at all is not.
    """
    data = _answer_object(completion)
    items = data.get("experiences") if data is not None else None
    if not isinstance(items, list):
        return None
    texts: list[str] = []
    for item in items:
        text = item.get("text") if isinstance(item, Mapping) else item
        if not isinstance(text, str) or not text.strip():
            continue
        words = text.split()[: settings.experience_max_words]
        if len(words) < MIN_WORDS:  # "When..." is no rule
            continue
        cleaned = " ".join(words)
        if cleaned.lower() not in {known.lower() for known in texts}:
            texts.append(cleaned)
    return texts[: settings.max_new_experiences]


# Which new experiences need the operations step -------------------------------------------------

Neighbour = tuple[int, float]  # the nearest experience's id and its cosine distance to a new experience
Vectors = npt.NDArray[np.float32]


class Near(Protocol):
    """The nearest experience of the library to each text (None for each when the library is empty)."""

    def __call__(self, texts: Sequence[str]) -> Sequence[Neighbour | None]: ...


def nearest(texts: Vectors, experiences: Vectors, ids: Sequence[int]) -> list[Neighbour | None]:
    """For each row of ``texts``, the id of the nearest row of ``experiences`` and its cosine
    distance (rows are of unit length, as every embedder gives them)."""
    if len(ids) == 0:
        return [None] * len(texts)
    distances = 1.0 - np.asarray(texts, dtype=np.float32) @ np.asarray(experiences, dtype=np.float32).T
    return [(int(ids[int(np.argmin(row))]), round(float(np.min(row)), 6)) for row in distances]


class Shown(Protocol):
    """The experiences of the library a step's prompt shows: those relevant to ``texts`` (the group's
    queries, or the new experiences), within the domain's context budget, ``must`` among them."""

    def __call__(self, step: Purpose, texts: Sequence[str], must: Collection[int] = ()) -> Mapping[int, str]: ...


def whole_library(library: Mapping[int, str]) -> Shown:
    """The paper's scheme, every experience in every prompt (distillations recorded before the budget)."""

    def shown(step: Purpose, texts: Sequence[str], must: Collection[int] = ()) -> Mapping[int, str]:
        return library

    return shown


def only_named(library: Mapping[int, str]) -> Shown:
    """Just the experiences a step may change (the window's consolidation: the proposals' targets)."""

    def shown(step: Purpose, texts: Sequence[str], must: Collection[int] = ()) -> Mapping[int, str]:
        return {i: library[i] for i in sorted(must) if i in library}

    return shown


@dataclass(frozen=True)
class Triage:
    far: list[str]  # no experience of the library is close: each is an ADD, without an operations call
    close: list[str]  # the operations step decides what each changes
    notes: list[Note]


def triage(new_experiences: Sequence[str], neighbours: Sequence[Neighbour | None], close_distance: float) -> Triage:
    """Split the new experiences by whether an experience of the library is within ``close_distance``."""
    far: list[str] = []
    close: list[str] = []
    notes: list[Note] = []
    for text, neighbour in zip(new_experiences, neighbours, strict=True):
        if neighbour is not None and neighbour[1] < close_distance:
            close.append(text)
            continue
        far.append(text)
        seen = (
            "the library is empty" if neighbour is None else f"the nearest, [{neighbour[0]}], is at {neighbour[1]:.2f}"
        )
        why = f"no experience within cosine distance {close_distance:g} ({seen}): added without an operations call"
        notes.append(Note(f"ADD {text}"[:200], "added", why))
    return Triage(far, close, notes)


# The steps --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Distilled:
    summaries: list[str]
    new_experiences: list[str]  # what the group advantage stated
    operations: list[Operation]
    notes: list[Note] = field(default_factory=list)
    neighbours: list[Neighbour | None] = field(default_factory=list)  # per new experience, what the triage saw


def distill(
    ask: Ask,
    settings: LearningSettings,
    samples: Sequence[Sample],
    library: Mapping[int, str],
    distillation_id: int,
    *,
    near: Near,
    shown: Shown | None = None,
    concurrency: int = 8,
) -> Distilled:
    """Summaries (concurrent), the group advantage, and the operations for one group.

    A new experience that no experience of the library is close to (by ``near``) is an ADD without
    an operations call; the operations step decides for the others, and when its answer stays
    unusable they change nothing, so no usable experience is lost to a bad operations answer. Each
    prompt shows the experiences ``shown`` picks (by default the whole library). Raises
    ``StepFailedError`` when the summaries or the group advantage cannot be used after their retries.
    """
    if not samples:
        raise ValueError("a distillation needs at least one sample")
    lowest = min(sample.reward for sample in samples)
    highest = max(sample.reward for sample in samples)

    def summarise(sample: Sample) -> str:
        messages = summary_messages(settings, sample, lowest, highest)
        return str(ask_until(ask, "summary", messages, None, SUMMARY_MAX_TOKENS, read_summary))

    with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(samples)))) as executor:
        summaries = list(executor.map(summarise, samples))

    show = shown or whole_library(library)
    k = settings.max_new_experiences
    new_experiences: list[str] = ask_until(
        ask,
        "advantage",
        advantage_messages(settings, samples, summaries, show("advantage", [sample.query for sample in samples])),
        advantage_schema(settings),
        64 + k * settings.experience_max_words * 3,
        lambda completion: read_new_experiences(completion, settings),
    )
    if not new_experiences:
        return Distilled(summaries, [], [], [])

    neighbours = list(near(new_experiences))
    split = triage(new_experiences, neighbours, settings.close_distance)
    proposed = [Operation("ADD", text, reason="no experience is close to it") for text in split.far]
    notes = list(split.notes)
    if split.close:
        try:
            parsed, parse_notes = ask_until(
                ask,
                "operations",
                operations_messages(
                    settings,
                    split.close,
                    # the experiences it may update are the close ones' neighbours: always shown
                    show(
                        "operations",
                        split.close,
                        [n[0] for t, n in zip(new_experiences, neighbours, strict=True) if n and t in split.close],
                    ),
                ),
                operations_schema(settings, max_items=operations_limit(len(split.close))),
                96 + operations_limit(len(split.close)) * settings.experience_max_words * 2,
                _operations_reader(operations_limit(len(split.close))),
            )
        except StepFailedError as error:
            parsed, parse_notes = (
                [],
                [
                    Note(
                        f"new experience {text}"[:200],
                        "dropped",
                        f"{error}; an experience is close to it, so nothing changes",
                    )
                    for text in split.close
                ],
            )
        proposed += parsed
        notes += parse_notes
    valid, validation_notes = validate(proposed, library, settings.experience_max_words)
    stamped = [replace(operation, sources=(distillation_id,)) for operation in valid]
    return Distilled(summaries, new_experiences, stamped, notes + validation_notes, neighbours)


def operations_limit(new_experiences: int) -> int:
    """How many operations an answer about ``new_experiences`` may hold: each may add or update one
    experience and delete one it supersedes, and a few NONEs besides."""
    return 2 * new_experiences + 3


def _operations_reader(max_items: int) -> Callable[[Completion], tuple[list[Operation], list[Note]] | None]:
    """Reads an operations answer, holding it to the schema's item limit even when tolerant
    extraction (not the schema) found it: a longer answer keeps its first ``max_items``."""

    def read(completion: Completion) -> tuple[list[Operation], list[Note]] | None:
        data = _answer_object(completion)
        if data is None or not isinstance(data.get("operations"), list):
            return None
        operations, notes = parse_operations(data)
        if len(operations) > max_items:
            notes.append(
                Note(
                    f"{len(operations) - max_items} operation(s) after the first {max_items}",
                    "dropped",
                    f"the answer held {len(operations)} operations; the limit is {max_items}",
                )
            )
            operations = operations[:max_items]
        return operations, notes

    return read


# The domain's update window ---------------------------------------------------------------------


def window_wait(waited: Sequence[float], settings: LearningSettings) -> float:
    """Seconds until the update window of distillations that have waited ``waited`` seconds closes.

    0 when it is due: the oldest has waited ``update_window_seconds``, or ``update_window_groups``
    are waiting. Infinite when nothing waits.
    """
    if not waited:
        return math.inf
    if len(waited) >= settings.update_window_groups:
        return 0.0
    return max(0.0, settings.update_window_seconds - max(waited))


@dataclass(frozen=True)
class Consolidated:
    operations: list[Operation]
    notes: list[Note]
    asked: bool  # whether an LLM merged the proposals


def consolidate_window(
    ask: Ask,
    settings: LearningSettings,
    proposals: Mapping[int, Sequence[Operation]],
    library: Mapping[int, str],
    shown: Shown | None = None,
) -> Consolidated:
    """One set of operations for the library from the proposals of the window's distillations.

    Each proposal is checked again against the library as it is now (it may have changed since
    the distillation read it). When more than one distillation proposed changes, one LLM call
    merges them; it may only touch the experiences the proposals named, a proposal its answer does
    not account for (in some result's ``merged_from``; a NONE may account for one it drops) is kept
    as proposed, and whatever it answers,
    the deterministic rules (DELETE wins, one UPDATE per id, no duplicate ADDs) hold in the end.
    If its answer cannot be used, the deterministic rules alone consolidate.
    """
    notes: list[Note] = []
    current: list[Operation] = []
    for distillation_id in sorted(proposals):
        checked, dropped = validate(proposals[distillation_id], library, settings.experience_max_words)
        current += [replace(op, sources=op.sources or (distillation_id,)) for op in checked]
        notes += dropped
    contributors = {source for op in current for source in op.sources}
    if len(contributors) <= 1:
        merged, rule_notes = consolidate(current)
        return Consolidated(merged, notes + rule_notes, asked=False)

    named_ids = {op.experience_id for op in current if op.experience_id is not None}

    try:
        answered, answer_notes = ask_until(
            ask,
            "consolidation",
            consolidation_messages(
                settings,
                current,
                (shown or whole_library(library))("consolidation", [op.text for op in current if op.text], named_ids),
            ),
            operations_schema(settings, max_items=len(current) + 1, merged_from=True),
            128 + len(current) * settings.experience_max_words * 3,
            _operations_reader(len(current) + 1),
        )
    except StepFailedError as error:
        merged, rule_notes = consolidate(current)
        fallback = Note("the window's consolidation", "repaired", f"{error}; merged by the rules alone")
        return Consolidated(merged, [*notes, fallback, *rule_notes], asked=True)

    everyone = merged_sources(*(op.sources for op in current))
    # A proposal the answer does not account for (in some result's merged_from, a NONE included)
    # is kept as proposed: a weak model that answers too little must not discard the groups' work.
    accounted = {n for op in answered for n in op.sources if 1 <= n <= len(current)}
    attributed: list[Operation] = []
    for number, op in enumerate(current, start=1):
        if number not in accounted:
            attributed.append(op)
            answer_notes.append(Note(_describe(op)[:200], "repaired", "left out by the consolidation; kept"))
    for op in answered:
        if op.experience_id is not None and op.kind in ("UPDATE", "DELETE") and op.experience_id not in named_ids:
            answer_notes.append(
                Note(_describe(op)[:200], "dropped", f"no group proposed to change experience {op.experience_id}")
            )
            continue
        numbers = [n for n in op.sources if 1 <= n <= len(current)]
        sources = merged_sources(*(current[n - 1].sources for n in numbers)) if numbers else everyone
        attributed.append(replace(op, sources=sources))
    checked, check_notes = validate(attributed, library, settings.experience_max_words)
    merged, rule_notes = consolidate(checked)
    return Consolidated(merged, notes + answer_notes + check_notes + rule_notes, asked=True)
