"""Prompt-size benchmark: tokens in per distillation of one G=5 group as the library grows, with the
bounded prompts (the experiences nearest the group, within ``context_tokens``) against the paper's
scheme (the whole library in every prompt).

What it measures, in one embedded PostgreSQL with pgvector, per library size (0, 100, 1,000
experiences by default) and per scheme: a fresh database; a library of that many generated
experiences (distinct rules over twenty topics, plus, for a non-empty library, one rule close to
what the scripted group advantage states, so that the operations step is asked, as it is when a
library is large); five traces of one intent with differing rewards, stored through the ingest
path and grouped; then ``distillation_store.distill_group`` with the real prompts and the real
OpenAI adapter against a scripted OpenAI-compatible endpoint on loopback, which counts tokens as
characters / 4. "Tokens in" is the sum over the distillation's calls in the ledger. The paper's
scheme is the same run with ``context_tokens`` above the library's size. Goal: bounded at most 1.2
times the figure for a library of one experience, which makes the same calls (the empty library's
distillation needs no operations call: both baselines are printed).

Run from the repository root::

    .venv/bin/python bench/prompt_tokens.py
    .venv/bin/python bench/prompt_tokens.py --sizes 0 100 1000 5000
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

# bench/ for embedded_postgres; the repository root for the test helpers (not an installed package).
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from embedded_postgres import Postgres

from grpod.daemon.resources import open_pool
from grpod.daemon.settings import Settings
from grpod.workers import distillation_store, grouping_store
from grpod.workers.distillation import CONTEXT_TOKENS
from grpod.workers.embeddings import LocalEmbedder
from grpod.workers.grouping import DomainSettings
from grpod.workers.llm import OpenAILLM
from grpod.workers.operations import Operation
from tests.factories import KEY_QUERIES, KEY_REWARDS, agent_trace, reward
from tests.integration.stored import ingest, publish
from tests.scripted_llm import GOOD_SCRIPT, ScriptedEndpoint

TOPICS = [
    "invoices", "refunds", "shipping", "passwords", "webhooks", "exports", "teams", "billing", "quotas",
    "single sign-on", "audit logs", "rate limits", "data retention", "time zones", "currencies", "mobile app",
    "notifications", "search", "permissions", "backups",
]  # fmt: skip
ACTIONS = ["check", "quote", "link", "compare", "confirm"]
CLOSE_RULE = "When asked about account settings, look the answer up in the documentation first."
GOAL = 1.2


def generated_library(size: int) -> list[str]:
    rules = [
        f"When a user asks about {TOPICS[n % len(TOPICS)]} (case {n}), {ACTIONS[n // len(TOPICS) % 5]} "
        f"the {TOPICS[n % len(TOPICS)]} page before answering."
        for n in range(max(0, size - 1))
    ]
    return [*rules[: size // 2], CLOSE_RULE, *rules[size // 2 :]] if size else []


@dataclass(frozen=True)
class Measured:
    size: int
    scheme: str
    tokens_in: int
    calls: dict[str, int]


def measure(
    postgres: Postgres, embedder: LocalEmbedder, endpoint: ScriptedEndpoint, size: int, whole: bool
) -> Measured:
    with (
        postgres.fresh_database() as url,
        open_pool(url, Settings(database_url=url)) as pool,
        pool.connection() as conn,
    ):
        grouping_store.prepare(conn)
        ids = [f"t{i}" for i in range(len(KEY_QUERIES))]
        ingest(
            conn,
            *(agent_trace(t, q, good=v > 0.5) for t, q, v in zip(ids, KEY_QUERIES, KEY_REWARDS, strict=True)),
            *(reward(t, v) for t, v in zip(ids, KEY_REWARDS, strict=True)),
        )
        texts = generated_library(size)
        if texts:
            publish(conn, "support", [Operation("ADD", text) for text in texts])
        context = 10 * sum(len(text) for text in texts) + CONTEXT_TOKENS if whole else CONTEXT_TOKENS
        grouping_store.set_settings(conn, "support", DomainSettings(), {"context_tokens": min(100_000, context)})
        (group_id,) = grouping_store.group_domain(conn, embedder, "support").ready
        llm = OpenAILLM(base_url=endpoint.url, model="scripted")
        run = distillation_store.distill_group(conn, llm, embedder, group_id)
        assert run.status == "distilled", run.reason
        rows = conn.execute(
            "SELECT purpose, count(*), sum(tokens_in) FROM llm_calls WHERE distillation_id = %s GROUP BY purpose",
            [run.id],
        ).fetchall()
    return Measured(
        size, "whole" if whole else "bounded", sum(int(r[2]) for r in rows), {r[0]: int(r[1]) for r in rows}
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--sizes", type=int, nargs="+", default=[0, 1, 100, 1000])
    args = parser.parse_args()
    console = Console()
    root = Path(tempfile.mkdtemp(prefix="grpod-bench-tokens-"))
    postgres = Postgres(root)
    results: list[Measured] = []
    try:
        embedder = LocalEmbedder()
        with ScriptedEndpoint(GOOD_SCRIPT) as endpoint:
            for size in args.sizes:
                for whole in (False, True):
                    results.append(measure(postgres, embedder, endpoint, size, whole))
    finally:
        postgres.close()
        shutil.rmtree(root, ignore_errors=True)

    table = Table(title=f"tokens in per distillation (G=5; context_tokens={CONTEXT_TOKENS})")
    for column in ("experiences", "calls", "bounded", "x empty", "x 1", "paper's scheme", "x empty", "x 1"):
        table.add_column(column, justify="right")
    by = {(m.size, m.scheme): m for m in results}
    failed = False
    for size in args.sizes:
        row = [f"{size:,}", ", ".join(f"{p} {n}" for p, n in sorted(by[size, "bounded"].calls.items()))]
        for scheme in ("bounded", "whole"):
            tokens = by[size, scheme].tokens_in
            empty, one = by.get((0, scheme)), by.get((1, scheme))
            row += [f"{tokens:,}", ratio(tokens, empty), ratio(tokens, one)]
            if scheme == "bounded" and one is not None and size >= 1:
                failed |= tokens / one.tokens_in > GOAL
        table.add_row(*row)
    console.print(table)
    console.print(
        "x empty: against the empty library, whose distillation needs no operations call; x 1: against a library "
        "of one experience, close to the group's new one, so with the same calls as the larger ones."
    )
    console.print(
        f"goal: bounded at most {GOAL} x the one-experience figure at every size: {'FAIL' if failed else 'PASS'}"
    )
    return 1 if failed else 0


def ratio(tokens: int, base: Measured | None) -> str:
    return f"{tokens / base.tokens_in:.2f}" if base is not None else "-"


if __name__ == "__main__":
    raise SystemExit(main())
