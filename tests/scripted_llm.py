"""A scripted LLM for tests: answers each distillation step from a script, and counts the calls.

It recognises the step by its prompt (the system message of each template says what it asks),
so the real prompt rendering, parsing, validation and recording run around it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from grpod.workers.llm import Completion, parse_answer

Answer = str | Callable[[Sequence[Mapping[str, str]]], str]

STEP_MARKERS = {
    "summary": "Summarise the attempt",
    "advantage": "State at most",
    "operations": "Decide how the new experiences change the library",
    "consolidation": "Merge them into one consistent set",
}


def step_of(messages: Sequence[Mapping[str, str]]) -> str:
    system = messages[0]["content"]
    for step, marker in STEP_MARKERS.items():
        if marker in system:
            return step
    raise AssertionError(f"no step recognised in the prompt: {system[:120]!r}")


class ScriptedLLM:
    """Answers per step: a fixed text, a function of the messages, or a list consumed in order."""

    model = "scripted"

    def __init__(self, script: Mapping[str, Answer | list[Answer]], delay: float = 0.0) -> None:
        self.script = {step: list(a) if isinstance(a, list) else a for step, a in script.items()}
        self.delay = delay
        self.calls: list[str] = []
        self._lock = threading.Lock()

    def complete(
        self,
        messages: Sequence[Mapping[str, str]],
        *,
        schema: Mapping[str, Any] | None = None,
        max_tokens: int = 512,
        temperature: float = 0.0,
        seed: int | None = None,
    ) -> Completion:
        step = step_of(messages)
        with self._lock:
            self.calls.append(step)
            answer = self.script[step]
            if isinstance(answer, list):
                answer = answer.pop(0) if len(answer) > 1 else answer[0]
        if self.delay:
            time.sleep(self.delay)
        text = answer(messages) if callable(answer) else answer
        data, error = parse_answer(text, schema)
        return Completion(
            text, data, self.model, sum(len(m["content"]) for m in messages) // 4, len(text) // 4, 0.01, error
        )


GOOD_SCRIPT: dict[str, Answer | list[Answer]] = {
    "summary": "The agent looked the answer up in the docs before answering.",
    "advantage": '{"experiences": ["When asked about account settings, search the documentation before answering."]}',
    "operations": '{"operations": [{"operation": "ADD", "id": null, "text": "When asked about account settings, '
    'search the documentation before answering.", "reason": "the better attempts did"}]}',
    "consolidation": '{"operations": []}',
}
