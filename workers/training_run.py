"""`grpod train`: the paper's protocol on a labelled set, through production's own path.

Each step (one batch of one epoch): G rollouts of each question by the policy, with the library
the step started with in the prompt; each one verified and stored as a trace with its reward
(ingestion's validation and storage); each question's rollouts one group, distilled when their
rewards differ (production's distillation, with its ledger and idempotency); then the update
window publishes the step's one version, labelled by the domain's publish policy.

Resumable: the rollouts are stored as they finish, under ids fixed by the run, so a run started
again with the same set and settings asks only for the ones it lacks; a distillation's input key
finds one already made; a step whose traces were used is not distilled again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import psycopg

from grpod.schema.errors import OperatorError
from grpod.schema.events import Limits
from grpod.workers import grouping_store, library_store, training_store
from grpod.workers.distillation import Sample
from grpod.workers.distillation_store import distill_samples, domain_settings, require_autocommit
from grpod.workers.embeddings import Embedder
from grpod.workers.llm import LLM, Completion
from grpod.workers.rollouts import RolloutJob, roll_out
from grpod.workers.training import (
    Problem,
    Step,
    StepReport,
    Usage,
    has_signal,
    plan_steps,
    rollout_seed,
    rollout_trace_id,
    rollout_trajectory,
    run_key,
    step_cost,
)
from grpod.workers.update_window import run_window
from grpod.workers.verifiers import Verdict, Verifier


@dataclass(frozen=True)
class TrainSettings:
    group_size: int = 5
    epochs: int = 3
    batch_size: int = 25
    temperature: float = 0.7
    verifier: str = "math"
    max_tokens: int = 4096
    concurrency: int = 8  # rollouts in flight at once

    def key(self, policy_model: str) -> dict[str, Any]:
        """What makes a run this run (concurrency only changes how fast)."""
        values = asdict(self) | {"policy_model": policy_model}
        del values["concurrency"]
        return values


class TrainProgress(Protocol):
    def step_started(self, step: Step, rollouts: int, stored: int) -> None: ...
    def rollout_done(self) -> None: ...
    def distilling(self, question: int, of: int) -> None: ...
    def step_done(self, report: StepReport) -> None: ...


@dataclass
class TrainRun:
    run_id: int
    steps: int  # planned
    finished_before: bool  # nothing to do: this run had finished
    reports: list[StepReport] = field(default_factory=list)


@dataclass(frozen=True)
class Ports:
    """What a run asks of the world: the policy, the distiller and the embedder (built when first
    needed), the verifier, and ingestion's limits."""

    policy: LLM
    distiller: Callable[[], LLM]
    embedder: Callable[[], Embedder]
    verifier: Verifier
    limits: Limits
    payload_limit: int
    prices: Mapping[str, float | None]


def reward_source(verifier: str) -> str:
    return f"verifier:{verifier}"[:200]


def train(
    conn: psycopg.Connection[Any],
    ports: Ports,
    domain: str,
    problems: Sequence[Problem],
    dataset: str,
    settings: TrainSettings,
    progress: TrainProgress,
    *,
    new_run: bool = False,
) -> TrainRun:
    require_autocommit(conn)
    grouping_store.ensure_domain(conn, domain)
    if library_store.library_state(conn, domain).frozen:
        raise OperatorError(f"domain {domain!r} is frozen: it learns nothing until `grpod library unfreeze {domain}`.")
    key = run_key(domain, problems, settings.key(ports.policy.model))
    run_id, finished = training_store.open_run(
        conn, domain, key, dataset, settings.key(ports.policy.model), new_run=new_run
    )
    steps = plan_steps(problems, settings.epochs, settings.batch_size, seed=key.hex())
    run = TrainRun(run_id, len(steps), finished)
    if finished:
        run.reports = training_store.step_reports(conn, run_id)
        return run
    for step in steps:
        run.reports.append(_run_step(conn, ports, domain, run_id, step, settings, progress))
    training_store.finish_run(conn, run_id)
    return run


def _run_step(
    conn: psycopg.Connection[Any],
    ports: Ports,
    domain: str,
    run_id: int,
    step: Step,
    settings: TrainSettings,
    progress: TrainProgress,
) -> StepReport:
    parent, done = training_store.start_step(conn, run_id, step.number, library_store.current_version(conn, domain))
    if done:
        (report,) = [r for r in training_store.step_reports(conn, run_id) if r.step == step.number]
        progress.step_done(report)
        return report
    source = reward_source(settings.verifier)
    ids = {
        (problem.id, k): rollout_trace_id(run_id, step.epoch, problem.id, k)
        for problem in step.problems
        for k in range(1, settings.group_size + 1)
    }
    stored = training_store.rollouts(conn, list(ids.values()), source)
    progress.step_started(step, len(ids), len(stored))
    missing = [(problem, k) for problem in step.problems for k in range(1, settings.group_size + 1)]
    missing = [(problem, k) for problem, k in missing if ids[(problem.id, k)] not in stored]
    library = library_store.load(conn, domain, parent).texts()
    _roll_out(conn, ports, domain, run_id, step, parent, library, missing, ids, settings, progress)
    stored = training_store.rollouts(conn, list(ids.values()), source)

    _, learning, _ = domain_settings(conn, domain)
    distillation_ids: set[int] = set()
    with_signal = [p for p in step.problems if has_signal(_rewards(p, ids, stored, settings.group_size))]
    for number, problem in enumerate(with_signal, start=1):
        found = [stored.get(ids[(problem.id, k)]) for k in range(1, settings.group_size + 1)]
        rollouts = [r for r in found if r is not None and r.reward is not None]  # a rejected one is not
        used = {r.used_by for r in rollouts if r.used_by is not None}
        if used:  # distilled before the run stopped
            distillation_ids |= used
            continue
        progress.distilling(number, len(with_signal))
        samples = [_sample(problem, rollout) for rollout in rollouts]
        distilled = distill_samples(conn, ports.distiller(), ports.embedder(), domain, learning, samples, group_id=None)
        if distilled.id is not None:
            distillation_ids.add(distilled.id)
    state = training_store.distillations_of(conn, sorted(distillation_ids))
    label = None
    if any(status == "distilled" for _, status, _ in state):  # waiting for the window: publish the step
        window = run_window(conn, ports.distiller(), domain, force=True)
        label = window.label
        state = training_store.distillations_of(conn, sorted(distillation_ids))
    versions = sorted({version for _, _, version in state if version is not None})
    failed = sum(1 for _, status, _ in state if status == "failed")
    report = _report(
        conn, ports, domain, step, stored, ids, with_signal, sorted(distillation_ids), versions, label, failed
    )
    training_store.finish_step(conn, run_id, report)
    progress.step_done(report)
    return report


def _rewards(
    problem: Problem, ids: Mapping[tuple[str, int], str], stored: Mapping[str, training_store.Rollout], g: int
) -> list[float]:
    found = [stored.get(ids[(problem.id, k)]) for k in range(1, g + 1)]
    return [r.reward for r in found if r is not None and r.reward is not None]


def _sample(problem: Problem, rollout: training_store.Rollout) -> Sample:
    assert rollout.reward is not None
    return Sample(
        trace_id=rollout.trace_id,
        reward=rollout.reward,
        query=problem.question,
        trajectory=tuple(rollout_trajectory(problem.question, rollout.answer)),
        answer=rollout.answer,
        critique=rollout.critique,
        ground_truth=problem.answer,
    )


def _roll_out(
    conn: psycopg.Connection[Any],
    ports: Ports,
    domain: str,
    run_id: int,
    step: Step,
    parent: int,
    library: Mapping[int, str],
    missing: Sequence[tuple[Problem, int]],
    ids: Mapping[tuple[str, int], str],
    settings: TrainSettings,
    progress: TrainProgress,
) -> None:
    """Ask the policy for the missing rollouts, several at once; store each as it finishes."""
    jobs = [
        RolloutJob((problem, k), problem.question, problem.answer, library, rollout_seed(ids[(problem.id, k)]))
        for problem, k in missing
    ]
    for done in roll_out(
        ports.policy,
        ports.verifier,
        jobs,
        temperature=settings.temperature,
        max_tokens=settings.max_tokens,
        concurrency=settings.concurrency,
    ):
        problem, k = done.job.key
        events = _rollout_events(domain, run_id, step, parent, problem, k, ids, done.completion, done.verdict, settings)
        training_store.store_rollouts(conn, run_id, events, ports.limits, ports.payload_limit)
        progress.rollout_done()


def _rollout_events(
    domain: str,
    run_id: int,
    step: Step,
    parent: int,
    problem: Problem,
    k: int,
    ids: Mapping[tuple[str, int], str],
    completion: Completion,
    verdict: Verdict,
    settings: TrainSettings,
) -> list[dict[str, Any]]:
    """The trace and reward events of one rollout, as an agent would send them."""
    now = datetime.now(UTC).isoformat()
    trace_id = ids[(problem.id, k)]
    trace = {
        "type": "trace",
        "schema_version": 1,
        "trace_id": trace_id,
        "domain": domain,
        "query": problem.question,
        "trajectory": rollout_trajectory(problem.question, completion.text),
        "answer": completion.text,
        "library_version": parent,
        "created_at": now,
        "metadata": {
            "training_run": run_id,
            "step": step.number,
            "epoch": step.epoch,
            "problem": problem.id,
            "rollout": k,
            "model": completion.model,
            "usage": {"tokens_in": completion.tokens_in, "tokens_out": completion.tokens_out},
        },
    }
    reward = {
        "type": "reward",
        "schema_version": 1,
        "trace_id": trace_id,
        "value": 1.0 if verdict.correct else 0.0,
        "source": reward_source(settings.verifier),
        "critique": verdict.reason[:2000],
        "ground_truth": problem.answer,
        "created_at": now,
    }
    return [trace, reward]


def _report(
    conn: psycopg.Connection[Any],
    ports: Ports,
    domain: str,
    step: Step,
    stored: Mapping[str, training_store.Rollout],
    ids: Mapping[tuple[str, int], str],
    with_signal: Sequence[Problem],
    distillation_ids: Sequence[int],
    versions: Sequence[int],
    label: str | None,
    failed: int,
) -> StepReport:
    rollouts = [stored[trace_id] for trace_id in ids.values() if trace_id in stored]
    policy = Usage(len(rollouts), sum(r.tokens_in for r in rollouts), sum(r.tokens_out for r in rollouts))
    distiller = Usage(*training_store.distiller_usage(conn, domain, distillation_ids, versions))
    version = versions[-1] if versions else None
    if version is not None and label is None:
        label = next((name for name, at in library_store.labels(conn, domain).items() if at == version), None)
    return StepReport(
        step=step.number,
        epoch=step.epoch,
        questions=len(step.problems),
        rollouts=len(rollouts),
        correct=sum(1 for r in rollouts if r.reward is not None and r.reward > 0),
        groups_with_signal=len(with_signal),
        failed_distillations=failed,
        operations=training_store.operations_in(conn, domain, versions),
        version=version,
        label=label,
        policy=policy,
        distiller=distiller,
        cost=step_cost(policy, distiller, ports.prices),
        distiller_calls=training_store.distiller_calls_by_purpose(conn, domain, distillation_ids, versions),
    )
