"""Long simulated run: one domain learns from a stream of rewarded traces, with and without
consolidation. Library size, the rendered prompt block and tokens in per distillation, over time.

The stream: 2,000 rewarded traces (by default) in one domain, in batches of G=5 traces of one
intent (one of 60: an action on a topic) with differing rewards. Each batch goes the production
way in an embedded PostgreSQL with pgvector: stored through the ingest path, grouped with the
bundled embedder, distilled (``distillation_store.distill_group``) with the real prompts and the
real OpenAI adapter against a scripted OpenAI-compatible endpoint on loopback, then published by
the domain's update window. The scripted group advantage states a rule for the batch's intent in
one of four paraphrases, as a real model restates what it learnt in other words; the scripted
operations step adds what it is shown (the common failure that grows a playbook without bound).

Three arms on the same stream, each in a fresh database: the paper's scheme (every prompt shows the
whole library, nothing is ever merged); bounded prompts with no consolidation; and bounded prompts
with ``consolidation_store.consolidate`` every ``--every`` batches (what beat runs hourly), with the
default budgets (100 experiences, 2,000 prompt tokens) and merge distance. The scripted merge
answers with the first experience it is shown.

Run from the repository root::

    .venv/bin/python bench/long_run.py
    .venv/bin/python bench/long_run.py --traces 500 --every 10   # quicker
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from embedded_postgres import Postgres

from grpod.daemon.resources import open_pool
from grpod.daemon.settings import Settings
from grpod.schema.library import block_tokens
from grpod.workers import consolidation_store, distillation_store, grouping_store, library_store, update_window
from grpod.workers.embeddings import LocalEmbedder
from grpod.workers.grouping import DomainSettings
from grpod.workers.llm import OpenAILLM
from grpod.workers.upkeep_settings import UpkeepSettings
from tests.factories import agent_trace, reward
from tests.integration.stored import ingest
from tests.scripted_llm import GOOD_SUMMARY, Scripted, ScriptedEndpoint

RESULTS = Path(__file__).parent / "results"
TOPICS = [
    "invoices", "refunds", "shipping labels", "passwords", "webhooks", "data exports", "team seats", "billing plans",
    "API quotas", "single sign-on", "audit logs", "rate limits",
]  # fmt: skip
ACTIONS = ["change", "cancel", "download", "share", "reset"]
PARAPHRASES = [
    "When a user asks to {action} {topic}, open the {topic} page before answering.",
    "When asked how to {action} {topic}, look up the {topic} page first.",
    "When a user wants to {action} {topic}, check the {topic} documentation before replying.",
    "When someone asks to {action} {topic}, read the {topic} guide first, then answer.",
]
REWARDS = [1.0, 0.0, 1.0, 0.0, 0.5]
ATTEMPTS = "Attempts, best reward first:"


def intent_of(text: str) -> tuple[str, str]:
    for topic in TOPICS:
        for action in ACTIONS:
            if f"{action} my {topic}" in text:
                return action, topic
    return ACTIONS[0], TOPICS[0]


def advantage(messages: Sequence[Mapping[str, str]]) -> str:
    attempts = messages[-1]["content"].split(ATTEMPTS)[-1]
    action, topic = intent_of(attempts)
    case = int(m.group(1)) if (m := re.search(r"case (\d+)", attempts)) else 0
    rule = PARAPHRASES[case % len(PARAPHRASES)].format(action=action, topic=topic)
    return json.dumps({"experiences": [rule]})


def operations(messages: Sequence[Mapping[str, str]]) -> str:
    shown = messages[-1]["content"].split("New experiences:")[-1]
    texts = [line[2:].strip() for line in shown.splitlines() if line.startswith("- ")]
    return json.dumps({"operations": [{"operation": "ADD", "id": None, "text": t, "reason": "new"} for t in texts]})


def merge(messages: Sequence[Mapping[str, str]]) -> str:
    first = messages[-1]["content"].split("Experiences:")[-1].strip().splitlines()[0]
    return json.dumps({"text": first.split(". ", 1)[1], "reason": "the same rule"})


SCRIPT: dict[str, Scripted] = {
    "summary": GOOD_SUMMARY,
    "advantage": advantage,
    "operations": operations,
    "merge": merge,
}


@dataclass(frozen=True)
class Point:
    traces: int
    experiences: int
    prompt_tokens: int
    tokens_in: int  # of this batch's distillation
    version: int


@dataclass(frozen=True)
class Arm:
    name: str
    points: list[Point]
    consolidations: int
    merge_tokens_in: int
    seconds: float


def run_arm(
    postgres: Postgres, embedder: LocalEmbedder, url: str, traces: int, every: int | None, whole: bool = False
) -> Arm:
    started = time.monotonic()
    points: list[Point] = []
    consolidations = 0
    with (
        postgres.fresh_database() as database,
        open_pool(database, Settings(database_url=database)) as pool,
        pool.connection() as conn,
    ):
        conn.autocommit = True
        grouping_store.prepare(conn)
        llm = OpenAILLM(base_url=url, model="scripted")
        for batch in range(traces // len(REWARDS)):
            action = ACTIONS[batch % len(ACTIONS)]
            topic = TOPICS[batch // len(ACTIONS) % len(TOPICS)]
            ids = [f"b{batch}-{n}" for n in range(len(REWARDS))]
            query = f"How do I {action} my {topic}? (case {batch // (len(ACTIONS) * len(TOPICS))})"
            ingest(
                conn,
                *(agent_trace(t, query, good=v > 0.5) for t, v in zip(ids, REWARDS, strict=True)),
                *(reward(t, v) for t, v in zip(ids, REWARDS, strict=True)),
            )
            if batch == 0:
                # The paper's scheme: every prompt shows the whole library (context_tokens above its size).
                context = {"context_tokens": 100_000} if whole else {}
                grouping_store.set_settings(conn, "support", DomainSettings(), {"update_window_groups": 1, **context})
            tokens = 0
            for group_id in grouping_store.group_domain(conn, embedder, "support").ready:
                run = distillation_store.distill_group(conn, llm, embedder, group_id)
                row = conn.execute("SELECT sum(tokens_in) FROM llm_calls WHERE distillation_id = %s", [run.id])
                tokens += int((row.fetchone() or (0,))[0] or 0)
            update_window.run_window(conn, llm, "support", force=True)
            if every is not None and (batch + 1) % every == 0:
                consolidations += consolidation_store.consolidate(conn, llm, embedder, "support").status == "published"
            version = library_store.current_version(conn, "support")
            texts = library_store.load(conn, "support", version).texts()
            points.append(Point((batch + 1) * len(REWARDS), len(texts), block_tokens(texts), tokens, version))
        merged = conn.execute("SELECT coalesce(sum(tokens_in), 0) FROM llm_calls WHERE purpose = 'merge'").fetchone()
    name = (
        "whole library in prompts, no consolidation"
        if whole
        else "bounded prompts, no consolidation"
        if every is None
        else f"bounded prompts, consolidation every {every} batches"
    )
    return Arm(name, points, consolidations, int((merged or (0,))[0]), time.monotonic() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--traces", type=int, default=2000)
    parser.add_argument("--every", type=int, default=20, help="consolidate every this many batches")
    parser.add_argument("--plot", type=Path, default=RESULTS / "long_run.png")
    args = parser.parse_args()
    console = Console()
    root = Path(tempfile.mkdtemp(prefix="grpod-bench-long-"))
    postgres = Postgres(root)
    try:
        embedder = LocalEmbedder()
        with ScriptedEndpoint(SCRIPT) as endpoint:
            arms = [
                run_arm(postgres, embedder, endpoint.url, args.traces, None, whole=True),
                run_arm(postgres, embedder, endpoint.url, args.traces, None),
                run_arm(postgres, embedder, endpoint.url, args.traces, args.every),
            ]
    finally:
        postgres.close()
        shutil.rmtree(root, ignore_errors=True)

    budgets = UpkeepSettings()
    table = Table(
        title=f"a long run: {args.traces:,} rewarded traces in one domain, G=5; "
        "whole library / bounded prompts / bounded prompts and consolidation"
    )
    for column in ("rewarded traces", "experiences", "prompt block tokens", "tokens in / distillation"):
        table.add_column(column, justify="right")
    checkpoints = sorted({len(arms[0].points) * q // 10 - 1 for q in range(1, 11)})
    for index in checkpoints:
        points = [arm.points[index] for arm in arms]
        table.add_row(
            f"{points[0].traces:,}",
            " / ".join(f"{p.experiences:,}" for p in points),
            " / ".join(f"{p.prompt_tokens:,}" for p in points),
            " / ".join(f"{p.tokens_in:,}" for p in points),
        )
    console.print(table)
    for arm in arms:
        console.print(
            f"{arm.name}: {len(arm.points)} distillations, {arm.consolidations} consolidation versions, "
            f"{arm.merge_tokens_in:,} tokens in for merges, {arm.seconds:.0f} s"
        )
    last = arms[-1].points[-1]
    within = last.experiences <= budgets.max_experiences and last.prompt_tokens <= budgets.max_prompt_tokens
    console.print(
        f"with consolidation, the library ends within its budgets ({budgets.max_experiences} experiences, "
        f"{budgets.max_prompt_tokens:,} tokens): {'yes' if within else 'NO'}"
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "long_run.json").write_text(
        json.dumps({"traces": args.traces, "every": args.every, "arms": [asdict(arm) for arm in arms]}, indent=1)
    )
    plot(arms, args.plot)
    console.print(f"plot: {args.plot}")
    return 0 if within else 1


def plot(arms: Sequence[Arm], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    for arm in arms:
        x = [p.traces for p in arm.points]
        axes[0].plot(x, [p.experiences for p in arm.points], label=arm.name)
        axes[1].plot(x, [p.prompt_tokens for p in arm.points], label=arm.name)
        axes[2].plot(x, [p.tokens_in for p in arm.points], label=arm.name, linewidth=0.8)
    for axis, title in zip(
        axes,
        ("library size (experiences)", "rendered prompt block (tokens)", "tokens in per distillation"),
        strict=True,
    ):
        axis.set_title(title)
        axis.set_xlabel("rewarded traces")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
