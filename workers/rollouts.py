"""Rollouts of paper mode: the policy asked several at once, each answer verified as it comes.

`grpod train` stores each as it finishes (so a stopped run keeps it); `grpod eval` counts them.
An ``LLMError`` (the endpoint failed after the client's retries) ends the iteration.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from grpod.workers.llm import LLM, Completion
from grpod.workers.training import rollout_messages
from grpod.workers.verifiers import Verdict, Verifier


@dataclass(frozen=True)
class RolloutJob:
    key: Any  # the caller's name for it
    question: str
    answer: str  # the ground truth
    library: Mapping[int, str]
    seed: int


@dataclass(frozen=True)
class RolloutResult:
    job: RolloutJob
    completion: Completion
    verdict: Verdict


def roll_out(
    policy: LLM,
    verifier: Verifier,
    jobs: Sequence[RolloutJob],
    *,
    temperature: float,
    max_tokens: int,
    concurrency: int,
) -> Iterator[RolloutResult]:
    """Each job's rollout and verdict, in the order they finish, ``concurrency`` in flight."""

    def ask(job: RolloutJob) -> RolloutResult:
        completion = policy.complete(
            rollout_messages(job.question, job.library), max_tokens=max_tokens, temperature=temperature, seed=job.seed
        )
        return RolloutResult(job, completion, verifier(completion.text, job.answer))

    if not jobs:
        return
    with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="rollout") as pool:
        pending: set[Future[RolloutResult]] = {pool.submit(ask, job) for job in jobs}
        try:
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    yield future.result()
        finally:
            for future in pending:
                future.cancel()
