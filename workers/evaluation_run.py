"""`grpod eval`: both arms on the same questions, k rollouts each, in one run; the report stored.

The rollouts of an evaluation are not learned from: they are counted, not stored as traces.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import psycopg

from grpod.schema.errors import NotFoundError
from grpod.workers import library_store, training_store
from grpod.workers.evaluation import Arm, ArmScore, report
from grpod.workers.llm import LLM
from grpod.workers.rollouts import RolloutJob, roll_out
from grpod.workers.training import Problem, Usage
from grpod.workers.verifiers import Verifier


def evaluate(
    conn: psycopg.Connection[Any],
    policy: LLM,
    verifier: Verifier,
    domain: str,
    problems: Sequence[Problem],
    dataset: str,
    arms: tuple[Arm, Arm],
    *,
    k: int,
    temperature: float,
    max_tokens: int,
    concurrency: int,
    on_rollout: Callable[[], None] = lambda: None,
) -> dict[str, Any]:
    """Run both arms and store the report (with its ``id``); an unknown version is refused first."""
    libraries = {}
    for arm in arms:
        if arm.version and not library_store.version_exists(conn, domain, arm.version):
            raise NotFoundError(
                f"domain {domain!r} has no library version {arm.version}; `grpod library history {domain}` lists them."
            )
        libraries[arm.version] = library_store.load(conn, domain, arm.version).texts() if arm.version else {}
    jobs = [
        RolloutJob((arm_index, question_index), problem.question, problem.answer, libraries[arm.version], seed)
        for arm_index, arm in enumerate(arms)
        for question_index, problem in enumerate(problems)
        for seed in (_seed(dataset, problem, i) for i in range(k))
    ]
    correct = [[0] * len(problems) for _ in arms]
    usage = [Usage(), Usage()]
    for done in roll_out(
        policy, verifier, jobs, temperature=temperature, max_tokens=max_tokens, concurrency=concurrency
    ):
        arm_index, question_index = done.job.key
        correct[arm_index][question_index] += int(done.verdict.correct)
        usage[arm_index] += Usage(1, done.completion.tokens_in, done.completion.tokens_out)
        on_rollout()
    scores = [ArmScore(arm, k, tuple(correct[i]), usage[i]) for i, arm in enumerate(arms)]
    result = report(scores[0], scores[1], domain=domain, dataset=dataset) | {
        "temperature": temperature,
        "policy_model": policy.model,
    }
    evaluation_id, created_at = training_store.save_evaluation(conn, domain, dataset, k, result)
    return {"id": evaluation_id, "created_at": created_at.isoformat()} | result


def _seed(dataset: str, problem: Problem, index: int) -> int:
    """Each rollout samples with its own seed, the same in both arms (common random numbers: the
    paired difference is less noisy), and the same when the evaluation is run again."""
    digest = hashlib.sha256(f"{dataset}:{problem.id}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "big")
