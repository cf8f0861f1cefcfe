"""Library fetch latency from the SDK: hot (from the in-process cache) against cold (from PostgreSQL),
measured in the same run, for a library of ``--experiences`` experiences.

What it measures, in one embedded PostgreSQL with pgvector:

- a domain whose production version holds ``--experiences`` experiences of about 25 words each
  (published through ``library_store.publish`` and labelled as a distillation labels it);
- **cold**: ``LibraryCache.get("bench")`` right after ``invalidate()``: one indexed query over the
  cache's open connection, the JSON decoded, and the prompt block rendered within the default
  token budget; ``--cold`` times;
- **cold, new connection**: the same, on a fresh ``LibraryCache`` each time (an agent process that
  just started: connect, query, render); ``--connects`` times;
- **hot**: ``LibraryCache.get("bench")`` with the entry cached and the NOTIFY listener up;
  ``--hot`` times.

Each call is timed alone with ``time.perf_counter_ns``; p50 and p99 are shown. Goal: p99 under 1 ms
hot and under 10 ms cold.

Run from the repository root::

    .venv/bin/python bench/library_fetch.py
    .venv/bin/python bench/library_fetch.py --experiences 500 --hot 200000
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).parent))

from embedded_postgres import Postgres

from grpod.schema.events import Limits
from grpod.sdk import LibraryCache
from grpod.workers import library_store
from grpod.workers.ingest import Incoming, store_isolating_failures
from grpod.workers.operations import Operation

WORDS = [
    "agent",
    "tool",
    "search",
    "answer",
    "check",
    "verify",
    "account",
    "settings",
    "retry",
    "error",
    "budget",
    "user",
]


def timings(call: Callable[[], object], times: int) -> list[float]:
    """Milliseconds per call."""
    result = []
    for _ in range(times):
        started = time.perf_counter_ns()
        call()
        result.append((time.perf_counter_ns() - started) / 1e6)
    return result


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiences", type=int, default=200)
    parser.add_argument("--hot", type=int, default=100_000)
    parser.add_argument("--cold", type=int, default=2_000)
    parser.add_argument("--connects", type=int, default=200)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="grpod-bench-library-"))
    postgres = Postgres(root)
    try:
        with postgres.fresh_database() as url:
            with psycopg.connect(url, autocommit=True) as conn:
                seed = b'{"type": "trace", "schema_version": 1, "trace_id": "seed", "domain": "bench", "query": "q",'
                seed += b' "trajectory": [], "answer": "a", "created_at": "2026-11-24T10:00:00Z"}'
                assert not store_isolating_failures(conn, [Incoming(seed, "bench")], Limits(), 16).rejected
                texts = [
                    f"When the {WORDS[i % 12]} step {i} fails, " + " ".join(WORDS[(i + j) % 12] for j in range(20))
                    for i in range(args.experiences)
                ]
                with conn.transaction():
                    parent = library_store.load(conn, "bench", 0)
                    version = library_store.publish(
                        conn,
                        parent,
                        [Operation("ADD", text) for text in texts],
                        [],
                        created_by="operator",
                        reason="benchmark",
                        provenance=lambda op: {"distillations": [1], "groups": [1], "traces": ["t1", "t2", "t3"]},
                    )
                    library_store.label_new_version(conn, "bench", version, actor="bench", reason="benchmark")
            with LibraryCache(url) as cache:
                assert cache.wait_listening()
                library = cache.get("bench")
                assert len(library.experiences) == args.experiences
                print(
                    f"{args.experiences} experiences, prompt block {len(library.prompt):,} characters", file=sys.stderr
                )

                def cold() -> object:
                    cache.invalidate()
                    return cache.get("bench")

                cold_ms = timings(cold, args.cold)
                cache.get("bench")
                hot_ms = timings(lambda: cache.get("bench"), args.hot)

            def fresh() -> object:
                with LibraryCache(url, listen=False) as new:
                    return new.get("bench")

            connect_ms = timings(fresh, args.connects)
    finally:
        postgres.close()
        shutil.rmtree(root, ignore_errors=True)

    print(f"\nLibrary fetch from the SDK, {args.experiences} experiences\n")
    print("| fetch | calls | p50 | p99 | goal |")
    print("| --- | ---: | ---: | ---: | --- |")
    rows = [
        ("hot (cached, listener up)", hot_ms, "p99 < 1 ms"),
        ("cold (cache emptied, open connection)", cold_ms, "p99 < 10 ms"),
        ("cold, new process (connect + query)", connect_ms, ""),
    ]
    for name, values, goal in rows:
        p50, p99 = statistics.median(values), percentile(values, 0.99)
        print(f"| {name} | {len(values):,} | {p50 * 1000:,.1f} us | {p99 * 1000:,.1f} us | {goal} |")
    print(f"\ncold / hot at p50: {statistics.median(cold_ms) / statistics.median(hot_ms):,.0f}x")


if __name__ == "__main__":
    main()
