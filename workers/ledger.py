"""The LLM call ledger: every call a distillation makes, recorded, and a recording answered back.

A ``Ledger`` is the ``Ask`` the distillation steps call. It answers from the recorded calls of
the same distillation first (a distillation resumed after a crash pays again only for the calls
it had not made; a replay is a ledger with a recording and no LLM), and otherwise asks the LLM
and hands the record to its ``record`` callback, which stores it. Calls are matched by purpose and
prompt hash, in their recorded order, so concurrent summaries replay whatever order they ran in.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from grpod.workers.distillation import Messages, Purpose
from grpod.workers.llm import LLM, Completion, parse_answer


class NotRecordedError(Exception):
    """A replay asked for a call the recording does not hold: the prompts are not the recorded ones."""


def prompt_hash(messages: Sequence[Mapping[str, str]], schema: Mapping[str, Any] | None) -> bytes:
    """What identifies a call's prompt: its messages and its answer schema (canonical JSON, SHA-256)."""
    canonical = json.dumps({"messages": list(messages), "schema": schema}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).digest()


@dataclass(frozen=True)
class CallRecord:
    purpose: Purpose
    model: str
    prompt_hash: bytes
    request: dict[str, Any]  # messages, schema, max_tokens, temperature
    response: str
    error: str | None
    tokens_in: int
    tokens_out: int
    latency_seconds: float
    id: int | None = None
    replayed: bool = False  # answered from the recording, not asked now

    def completion(self) -> Completion:
        """The recorded answer, read again exactly as it was read when it was made."""
        data, error = parse_answer(self.response, self.request.get("schema"))
        return Completion(
            text=self.response,
            data=data,
            model=self.model,
            tokens_in=self.tokens_in,
            tokens_out=self.tokens_out,
            latency_seconds=self.latency_seconds,
            error=error,
            recorded=True,
        )

    def summary(self) -> dict[str, Any]:
        """What a report says about a call."""
        return {
            "id": self.id,
            "purpose": self.purpose,
            "model": self.model,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "latency_seconds": round(self.latency_seconds, 3),
            "replayed": self.replayed,
        }


class Ledger:
    """An ``Ask`` over an LLM that records each call, answering from ``recorded`` first.

    ``llm=None`` is a pure replay: a call that is not in the recording raises ``NotRecordedError``.
    """

    def __init__(
        self,
        llm: LLM | None,
        record: Callable[[CallRecord], int] | None = None,
        recorded: Sequence[CallRecord] = (),
    ) -> None:
        self._llm = llm
        self._record = record
        self._recorded: dict[tuple[str, bytes], deque[CallRecord]] = {}
        for call in recorded:
            self._recorded.setdefault((call.purpose, call.prompt_hash), deque()).append(call)
        self._lock = threading.Lock()
        self.calls: list[CallRecord] = []  # the calls this run used, in the order they were answered

    def __call__(
        self,
        purpose: Purpose,
        messages: Messages,
        *,
        schema: Mapping[str, Any] | None,
        max_tokens: int,
        temperature: float,
        seed: int | None = None,
    ) -> Completion:
        digest = prompt_hash(messages, schema)
        with self._lock:
            waiting = self._recorded.get((purpose, digest))
            found = waiting.popleft() if waiting else None
            if found is not None:
                self.calls.append(replace(found, replayed=True))
                return found.completion()
        if self._llm is None:
            raise NotRecordedError(
                f"the recording holds no {purpose} call with this prompt (hash {digest.hex()[:12]}): "
                "it was made with other prompts or other inputs"
            )
        completion = self._llm.complete(
            messages, schema=schema, max_tokens=max_tokens, temperature=temperature, seed=seed
        )
        call = CallRecord(
            purpose=purpose,
            model=completion.model,
            prompt_hash=digest,
            request={
                "messages": messages,
                "schema": dict(schema) if schema is not None else None,
                "max_tokens": max_tokens,
                "temperature": temperature,
                "seed": seed,
            },
            response=completion.text,
            error=completion.error,
            tokens_in=completion.tokens_in,
            tokens_out=completion.tokens_out,
            latency_seconds=completion.latency_seconds,
        )
        if self._record is not None:
            call = replace(call, id=self._record(call))
        with self._lock:
            self.calls.append(call)
        return completion

    @property
    def unused(self) -> int:
        """Recorded calls nobody asked for (a replay that matched should leave none)."""
        with self._lock:
            return sum(len(waiting) for waiting in self._recorded.values())
