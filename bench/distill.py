"""Distillation benchmark: LLM calls and tokens per distillation of a G=5 group, the share of its
wall time spent outside the LLM, and distillations per minute with the bundled model.

What it measures, in one embedded PostgreSQL with pgvector:

- ``--groups`` groups of G=5 traces each (all in domain ``support``), one per intent of
  ``tests/data/paraphrases.jsonl``, taken round robin over its four domains so that the intents
  are far apart: five close paraphrases of the intent as queries (the first and its four nearest
  by embedding, so that they form one group), each with a tool-using
  trajectory that looks the answer up (reward 1) or guesses (reward 0; rewards 1, 0, 1, 0, 0.5),
  stored through the ingest path and grouped by ``grouping_store.group_domain`` (untimed);
- **live**: ``distillation_store.distill_group(conn, llm, group)`` per ready group with the bundled
  SmolLM2-135M-Instruct (llama.cpp, 2 threads), as the distillation task runs it: G summaries
  (concurrent), the group advantage, the operations, every call written to the ledger. The LLM
  is wrapped to record when each call starts and ends; "inside the LLM" is the union of those
  intervals, "outside" the rest of the wall time (prompt rendering, parsing, validation, the
  ledger and the distillation's own reads and writes). Goal: outside under 5%;
- **replay**: ``replay.replay(conn, id)`` of the same distillation: the same code path
  from the recorded responses, with no LLM: what a distillation costs besides the model;
- **window**: ``run_window(..., force=True)`` once all groups are distilled: one version, with one
  consolidation call when more than one group proposed changes.

Run from the repository root::

    .venv/bin/python bench/distill.py              # 6 groups
    .venv/bin/python bench/distill.py --groups 12
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).parent))

from embedded_postgres import Postgres

from grpod.schema.events import Limits
from grpod.workers import distillation_store, grouping_store, replay, update_window
from grpod.workers.embeddings import LocalEmbedder
from grpod.workers.ingest import Incoming, store_isolating_failures
from grpod.workers.llm import LLM, Completion, LocalLLM

DATA = Path(__file__).parents[1] / "tests" / "data" / "paraphrases.jsonl"
REWARDS = (1.0, 0.0, 1.0, 0.0, 0.5)


@dataclass(frozen=True)
class Measured:
    calls: Counter[str]
    tokens_in: int
    tokens_out: int
    wall: float
    outside: float  # seconds of the wall time with no LLM call in flight
    replay: float


class TimedLLM:
    """An LLM that records the (start, end) of every call, to tell LLM time from the rest."""

    def __init__(self, llm: LLM) -> None:
        self.llm = llm
        self.model = llm.model
        self.intervals: list[tuple[float, float]] = []
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
        started = time.perf_counter()
        try:
            return self.llm.complete(messages, schema=schema, max_tokens=max_tokens, temperature=temperature, seed=seed)
        finally:
            with self._lock:
                self.intervals.append((started, time.perf_counter()))

    def busy(self, start: float, end: float) -> float:
        """Seconds within [start, end] during which at least one call was in flight."""
        spans = sorted((max(a, start), min(b, end)) for a, b in self.intervals if b > start and a < end)
        total, reach = 0.0, start
        for a, b in spans:
            if b > reach:
                total += b - max(a, reach)
                reach = b
        return total


def closest(queries: list[str], embedder: LocalEmbedder, size: int) -> list[str]:
    """The first query and its ``size - 1`` nearest paraphrases (so that they form one group)."""
    vectors = embedder.embed(queries)
    order = sorted(range(len(queries)), key=lambda i: -float(vectors[0] @ vectors[i]))
    return [queries[i] for i in order[:size]]


def trace_events(groups: int, embedder: LocalEmbedder) -> list[dict[str, Any]]:
    by_intent: dict[str, list[str]] = {}
    for line in DATA.read_text().splitlines():
        row = json.loads(line)
        by_intent.setdefault(row["intent"], []).append(row["query"])
    # Round robin over the dataset's domains: intents of different domains are far apart.
    by_domain: dict[str, list[str]] = {}
    for intent in sorted(by_intent):
        by_domain.setdefault(intent.split(".", 1)[0], []).append(intent)
    rounds = max(len(names) for names in by_domain.values())
    spread = [names[i] for i in range(rounds) for names in by_domain.values() if i < len(names)]
    intents = spread[:groups]
    if len(intents) < groups:
        raise SystemExit(f"--groups must be at most {len(by_intent)} (the intents in {DATA.name})")
    events: list[dict[str, Any]] = []
    for intent in intents:
        topic = intent.split(".", 1)[1].replace("_", " ")
        for index, (query, value) in enumerate(zip(closest(by_intent[intent], embedder, 5), REWARDS, strict=True)):
            trace_id = f"{intent}-{index}"
            if value > 0.5:
                steps: list[dict[str, Any]] = [
                    {"role": "user", "content": query},
                    {
                        "role": "assistant",
                        "content": f"I will look up how to {topic} in the help center.",
                        "tool_calls": [
                            {
                                "id": "c1",
                                "type": "function",
                                "function": {"name": "search_help", "arguments": json.dumps({"q": topic})},
                            }
                        ],
                    },
                    {
                        "role": "tool",
                        "tool_call_id": "c1",
                        "content": f"Help center: {topic}: open Settings, "
                        "choose the matching section and follow the three listed steps.",
                    },
                    {
                        "role": "assistant",
                        "content": f"To {topic}: open Settings, pick the section and follow its steps.",
                    },
                ]
            else:
                steps = [
                    {"role": "user", "content": query},
                    {"role": "assistant", "content": f"I think you can {topic} from your profile page."},
                ]
            events.append(
                {
                    "type": "trace",
                    "schema_version": 1,
                    "trace_id": trace_id,
                    "domain": "support",
                    "query": query,
                    "trajectory": steps,
                    "answer": steps[-1]["content"],
                    "created_at": "2026-11-24T10:00:00Z",
                }
            )
            events.append(
                {
                    "type": "reward",
                    "schema_version": 1,
                    "trace_id": trace_id,
                    "value": value,
                    "source": "grader",
                    "critique": None if value > 0.5 else "The answer guessed instead of checking the help center.",
                    "created_at": "2026-11-24T10:05:00Z",
                }
            )
    return events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", type=int, default=6, help="groups of G=5 to distill (default 6)")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="grpod-bench-distill-"))
    postgres = Postgres(root)
    try:
        with postgres.fresh_database() as url, psycopg.connect(url, autocommit=True) as conn:
            grouping_store.prepare(conn)
            embedder = LocalEmbedder()
            events = trace_events(args.groups, embedder)
            incoming = [Incoming(json.dumps(event).encode(), "bench") for event in events]
            outcome = store_isolating_failures(conn, incoming, Limits(), 4096)
            assert not outcome.rejected, outcome.rejected
            grouped = grouping_store.group_domain(conn, embedder, "support")
            ready = sorted(grouped.ready)
            print(f"{len(events) // 2} traces in {grouped.new_groups} groups, {len(ready)} ready", file=sys.stderr)

            loaded = time.perf_counter()
            llm = TimedLLM(LocalLLM())
            print(f"model loaded in {time.perf_counter() - loaded:.1f} s", file=sys.stderr)
            rows = []
            while todo := distillation_store.groups_to_distill(conn, "support", limit=1):
                ((group_id, _),) = todo
                start = time.perf_counter()
                run = distillation_store.distill_group(conn, llm, embedder, group_id)
                end = time.perf_counter()
                if run.status != "distilled" or run.id is None:
                    print(f"group {group_id}: {run.status}: {run.reason}", file=sys.stderr)
                    break
                replay_start = time.perf_counter()
                replayed = replay.replay(conn, run.id)
                replay_seconds = time.perf_counter() - replay_start
                assert replayed.same
                busy = llm.busy(start, end)
                row = Measured(
                    calls=Counter(call.purpose for call in run.calls),
                    tokens_in=sum(call.tokens_in for call in run.calls),
                    tokens_out=sum(call.tokens_out for call in run.calls),
                    wall=end - start,
                    outside=(end - start) - busy,
                    replay=replay_seconds,
                )
                rows.append(row)
                print(
                    f"group {group_id}: {sum(row.calls.values())} calls, {row.wall:.1f} s, "
                    f"outside the LLM {100 * row.outside / row.wall:.2f}%",
                    file=sys.stderr,
                )
            window_start = time.perf_counter()
            window = update_window.run_window(conn, llm, "support", force=True)
            window_seconds = time.perf_counter() - window_start
    finally:
        postgres.close()
        shutil.rmtree(root, ignore_errors=True)

    if not rows:
        raise SystemExit("no group was distilled")

    def median(key: str) -> float:
        return statistics.median(float(getattr(row, key)) for row in rows)

    def calls(purpose: str) -> str:
        counts = [row.calls[purpose] for row in rows]
        return f"{statistics.median(counts):g} (min {min(counts)}, max {max(counts)})"

    print(f"\nDistillation of a G=5 group with {LocalLLM.model}, {len(rows)} groups (medians)\n")
    print("| measure | value |")
    print("| --- | ---: |")
    print(f"| summary calls | {calls('summary')} |")
    print(f"| group advantage calls | {calls('advantage')} |")
    print(f"| operations calls | {calls('operations')} |")
    print(f"| tokens in / out per distillation | {median('tokens_in'):,.0f} / {median('tokens_out'):,.0f} |")
    print(f"| wall time per distillation | {median('wall'):.1f} s |")
    print(
        f"| of which outside the LLM | {1000 * median('outside'):.0f} ms "
        f"({100 * statistics.median(r.outside / r.wall for r in rows):.2f}%) |"
    )
    print(f"| replay of the same distillation (no LLM) | {1000 * median('replay'):.0f} ms |")
    print(f"| live / replay | {median('wall') / median('replay'):,.0f}x |")
    print(f"| distillations per minute | {60 / median('wall'):.1f} |")
    window_calls = Counter(call.purpose for call in window.calls)
    print(
        f"| update window of {len(window.distillation_ids)} distillations | version {window.version}, "
        f"{len(window.operations)} operations, {window_calls['consolidation']} consolidation call(s), "
        f"{sum(c.tokens_in for c in window.calls):,} / {sum(c.tokens_out for c in window.calls):,} tokens, "
        f"{window_seconds:.1f} s |"
    )


if __name__ == "__main__":
    main()
