"""Grouping benchmark: embed-and-group throughput against the encoder alone, and the nearest-group
lookup's latency with the HNSW index against an exact scan, measured in the same run.

What it measures:

- **encoder alone**: ``LocalEmbedder().embed(queries)`` (all-MiniLM-L6-v2 on the CPU, batches of
  64) on ``--queries`` queries, after one warm-up call;
- **embed and group**: the same queries stored as traces of domain ``bench`` (through
  ``store_isolating_failures``, untimed) in a fresh migrated database, then
  ``grouping_store.group_domain(conn, embedder, "bench", limit=256)`` called until it returns
  ``embedded == 0``, as the grouping task and ``grpod domain reembed`` do; the clock covers every
  call (embedding, nearest-group lookups, placement, readiness checks). The share of that time
  spent inside the encoder is shown beside it. Goal: at least 80% of the encoder's rate.
  Both are repeated ``--repeat`` times, interleaved, and the medians are shown;
- **nearest-group lookup**: a fresh database with ``--groups`` groups (random unit 384-d float32
  centroids) in domain ``big``, as many in domain ``other`` (so the domain filter matters) and
  ``--traces`` traces of ``big`` assigned to random groups, loaded with COPY; the HNSW index is
  created as the service creates it (``ensure_centroid_index``), then ANALYZE. The service's own
  ``nearest_group`` query (``hnsw.iterative_scan = relaxed_order``, vectors as numpy arrays) is
  timed ``--lookups`` times with random unit query vectors, and so is an exact scan (the same
  query with ``enable_indexscan = off``, on its own connection so no cached plan is shared).
  p50/p99 in milliseconds; recall = share of lookups where HNSW and the exact scan return the
  same group. Rows marked (extra) repeat the comparison with queries near an existing centroid
  (a centroid plus noise, about 0.2 in cosine distance), as real placements are: random 384-d
  vectors are nearly equidistant from every centroid, the hardest case for an HNSW index.

The queries are the 385 of ``tests/data/paraphrases.jsonl``, varied deterministically (greetings,
closing phrases, numbers swapped) into ``--queries`` queries, so that they form groups of similar
queries. Everything runs in one embedded PostgreSQL with pgvector.

Run from the repository root::

    .venv/bin/python bench/grouping.py                      # 2,000 queries; 100,000 traces, 5,000 groups
    .venv/bin/python bench/grouping.py --queries 500 --repeat 1 --traces 20000 --groups 1000
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg
from embedded_postgres import Postgres
from psycopg import sql
from rich.console import Console
from rich.table import Table

from grpod.daemon.logs import configure_logging
from grpod.schema.events import Limits
from grpod.workers import grouping_store
from grpod.workers.embeddings import LOCAL_DIMENSION, LocalEmbedder, Vectors
from grpod.workers.ingest import Incoming, store_isolating_failures

DATA = Path(__file__).parents[1] / "tests" / "data" / "paraphrases.jsonl"
DOMAIN = "bench"
BIG, OTHER = "big", "other"
GROUP_LIMIT = 256  # traces per group_domain call (what `grpod domain reembed` uses)
STORE_BATCH = 500
GOAL = 0.80  # embed-and-group must reach this share of the encoder's rate
WARMUP_LOOKUPS = 50
NEAR_NOISE = 0.04  # per coordinate: a 384-d query about 0.2 in cosine distance from its centroid
LOOKUP_CHUNK = 100  # HNSW and exact lookups alternate in chunks of this many (same noise for both)

PREFIXES = (
    "",
    "hi, ",
    "hello team, ",
    "quick question: ",
    "urgent: ",
    "sorry to bother you again, but ",
    "hey - ",
    "one more thing: ",
    "good morning! ",
    "asking for a colleague: ",
)
SUFFIXES = (
    "",
    " thanks",
    " please help",
    " (asking again)",
    " any ideas?",
    " - this is blocking us",
    " cheers.",
    " asap please",
    " thank you in advance!",
    " (ticket {number})",
)
NUMBER = re.compile(r"\d+")

# Wide enough for the table when the output goes to a file or a pipe (rich would assume 80 columns).
console = Console() if sys.stdout.isatty() else Console(width=140)
err_console = Console(stderr=True)


# Workload ---------------------------------------------------------------------------------------


def base_queries() -> list[str]:
    return [str(json.loads(line)["query"]) for line in DATA.read_text(encoding="utf-8").splitlines() if line.strip()]


def varied_queries(bases: Sequence[str], count: int, seed: int) -> list[str]:
    """``count`` queries: the bases in order, then variations of them (deterministic for ``seed``).

    Round 0 is the bases as they are; later rounds add a greeting and/or a closing phrase and swap
    the numbers in the text, so each base yields a handful of near-paraphrases (groups to form).
    """
    rng = random.Random(seed)
    queries: list[str] = []
    seen: set[str] = set()
    for index in range(count):
        base = bases[index % len(bases)]
        query = base
        for _ in range(20):  # another variation while this one was drawn before (all distinct, if possible)
            if index >= len(bases) or query in seen:
                prefix = rng.choice(PREFIXES)
                suffix = rng.choice(SUFFIXES).format(number=f"#{rng.randint(1000, 99999)}")
                text = NUMBER.sub(lambda _: str(rng.randint(2, 500)), base)
                if prefix and rng.random() < 0.5:
                    text = text[:1].lower() + text[1:]
                query = f"{prefix}{text}{suffix}"
            if query not in seen:
                break
        seen.add(query)
        queries.append(query)
    return queries


def trace_event(trace_id: str, query: str) -> dict[str, Any]:
    """A valid wire trace (the shape of tests/factories.py) around ``query``."""
    answer = "Here is what to do: open the settings page and follow the steps shown there."
    return {
        "type": "trace",
        "schema_version": 1,
        "trace_id": trace_id,
        "domain": DOMAIN,
        "query": query,
        "trajectory": [
            {"role": "user", "content": query},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "search_docs", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "Settings > Help > Steps"},
            {"role": "assistant", "content": answer},
        ],
        "answer": answer,
        "library_version": 1,
        "created_at": "2026-11-24T10:00:00Z",
        "metadata": {"agent": "bench"},
    }


# Infrastructure ---------------------------------------------------------------------------------


class TimedEmbedder:
    """Wraps an embedder and adds up the seconds spent in its ``embed`` calls."""

    def __init__(self, inner: LocalEmbedder) -> None:
        self.inner = inner
        self.model = inner.model
        self.dimension = inner.dimension
        self.seconds = 0.0

    def embed(self, texts: Sequence[str]) -> Vectors:
        started = time.perf_counter()
        try:
            return self.inner.embed(texts)
        finally:
            self.seconds += time.perf_counter() - started


# Part 1: embed and group against the encoder alone ----------------------------------------------


@dataclass
class ThroughputRound:
    encoder_seconds: float
    group_seconds: float
    embed_seconds: float  # inside group_domain
    calls: int
    groups: int
    errors: list[str] = field(default_factory=list)


def time_encoder(embedder: LocalEmbedder, queries: Sequence[str]) -> float:
    started = time.perf_counter()
    vectors = embedder.embed(queries)
    seconds = time.perf_counter() - started
    assert vectors.shape == (len(queries), embedder.dimension)
    return seconds


def time_grouping(postgres: Postgres, embedder: LocalEmbedder, queries: Sequence[str]) -> ThroughputRound:
    errors: list[str] = []
    timed = TimedEmbedder(embedder)
    with postgres.fresh_database() as url, psycopg.connect(url, autocommit=True) as conn:
        events = [Incoming(json.dumps(trace_event(f"q-{i:07d}", q)).encode(), "bench") for i, q in enumerate(queries)]
        for start in range(0, len(events), STORE_BATCH):
            outcome = store_isolating_failures(conn, events[start : start + STORE_BATCH], Limits(), 4096)
            if outcome.rejected:
                errors.append(f"storing the traces rejected {dict(outcome.rejected)}")
        embedded = placed = calls = 0
        started = time.perf_counter()
        while True:
            run = grouping_store.group_domain(conn, timed, DOMAIN, limit=GROUP_LIMIT)
            calls += 1
            if run.embedded == 0:
                break
            embedded += run.embedded
            placed += run.placed
        seconds = time.perf_counter() - started
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE group_id IS NULL), count(DISTINCT group_id) FROM traces WHERE domain = %s",
            (DOMAIN,),
        ).fetchone()
        assert row is not None
        waiting, groups = int(row[0]), int(row[1])
    if (embedded, placed, waiting) != (len(queries), len(queries), 0):
        errors.append(f"embedded {embedded}, placed {placed}, {waiting} left ungrouped; expected all {len(queries)}")
    return ThroughputRound(float("nan"), seconds, timed.seconds, calls, groups, errors)


# Part 2: nearest-group lookup -------------------------------------------------------------------


@dataclass
class Comparison:
    """One set of query vectors looked up both ways."""

    hnsw_ms: list[float]
    exact_ms: list[float]
    hnsw_ids: list[int]
    exact_ids: list[int]

    @property
    def recall(self) -> float:
        return sum(a == b for a, b in zip(self.hnsw_ids, self.exact_ids, strict=True)) / len(self.hnsw_ids)


@dataclass
class LookupResult:
    random: Comparison  # random unit query vectors (what the brief asks; the hard case for HNSW)
    near: Comparison  # each query a centroid of the domain plus noise (what real placements look like)
    near_distance: float  # median cosine distance of those queries to their nearest centroid
    load_seconds: float
    index_seconds: float
    hnsw_plan: str
    exact_plan: str
    hnsw_index_scans: int
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def unit_vectors(rng: np.random.Generator, count: int, dimension: int) -> npt.NDArray[np.float32]:
    matrix = rng.standard_normal((count, dimension), dtype=np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix


def vector_text(row: npt.NDArray[np.float32]) -> str:
    return "[" + ",".join(f"{value:.7g}" for value in row.tolist()) + "]"


def load_big_domain(conn: psycopg.Connection[Any], traces: int, groups: int, seed: int) -> npt.NDArray[np.float32]:
    """``groups`` groups in BIG and in OTHER, ``traces`` traces of BIG each in a random BIG group.

    Returns the centroids of BIG's groups (group id ``i + 1`` has row ``i``)."""
    rng = np.random.default_rng(seed)
    conn.execute(
        "INSERT INTO domains (name, embedding_model, embedding_dimension) VALUES (%s, %s, %s), (%s, %s, %s)",
        (BIG, LocalEmbedder.model, LOCAL_DIMENSION, OTHER, LocalEmbedder.model, LOCAL_DIMENSION),
    )
    assignment = rng.integers(0, groups, size=traces)  # index of the BIG group of each trace
    sizes = np.bincount(assignment, minlength=groups)
    centroids = unit_vectors(rng, 2 * groups, LOCAL_DIMENSION)
    queries = varied_queries(base_queries(), min(traces, 20_000), seed)
    with conn.transaction(), conn.cursor() as cursor:
        with cursor.copy("COPY groups (id, domain, dimension, centroid, size) FROM STDIN") as copy:
            for index in range(2 * groups):
                big = index < groups
                size = max(1, int(sizes[index])) if big else int(rng.integers(1, 40))
                copy.write_row((index + 1, BIG if big else OTHER, LOCAL_DIMENSION, vector_text(centroids[index]), size))
        cursor.execute("SELECT setval(pg_get_serial_sequence('groups', 'id'), %s)", (2 * groups,))
        columns = "trace_id, domain, query, trajectory, answer, created_at, content_hash, group_id, grouped_at"
        with cursor.copy(f"COPY traces ({columns}) FROM STDIN") as copy:
            for index in range(traces):
                query = queries[index % len(queries)]
                trajectory = json.dumps([{"role": "user", "content": query}, {"role": "assistant", "content": "ok"}])
                copy.write_row(
                    (
                        f"big-{index:07d}",
                        BIG,
                        query,
                        trajectory,
                        "ok",
                        "2026-11-24T10:00:00Z",
                        uuid.uuid4().bytes,
                        int(assignment[index]) + 1,
                        "2026-11-24T10:00:01Z",
                    )
                )
    return centroids[:groups]


def top_scan(conn: psycopg.Connection[Any], statement: Any, vector: npt.NDArray[np.float32], exact: bool) -> str:
    """The scan node of the lookup's plan, e.g. 'Index Scan using groups_centroid_hnsw_384 on groups'."""
    queries = grouping_store._queries()
    with conn.transaction():
        conn.execute(queries["iterative_scan"])
        if exact:
            conn.execute("SET LOCAL enable_indexscan = off")
        explained = sql.SQL("EXPLAIN ") + statement
        lines = [str(row[0]) for row in conn.execute(explained, {"domain": BIG, "vector": vector}).fetchall()]
    scans = [line.strip().lstrip("-> ").split("  (")[0] for line in lines if "Scan" in line]
    return scans[-1] if scans else "?"


def run_lookups(
    conn: psycopg.Connection[Any], statement: Any, vectors: npt.NDArray[np.float32], exact: bool
) -> tuple[list[float], list[int]]:
    """Lookups as ``place()`` runs them: in a transaction with the iterative scan set; ms and group ids."""
    queries = grouping_store._queries()
    timings: list[float] = []
    ids: list[int] = []
    with conn.transaction():
        conn.execute(queries["iterative_scan"])
        if exact:
            conn.execute("SET LOCAL enable_indexscan = off")
        for vector in vectors:
            started = time.perf_counter()
            row = conn.execute(statement, {"domain": BIG, "vector": vector}).fetchone()
            timings.append((time.perf_counter() - started) * 1000)
            ids.append(int(row[0]) if row is not None else -1)
    return timings, ids


def index_scans(conn: psycopg.Connection[Any], name: str) -> int:
    row = conn.execute("SELECT idx_scan FROM pg_stat_user_indexes WHERE indexrelname = %s", (name,)).fetchone()
    return int(row[0]) if row is not None and row[0] is not None else 0


def compare(
    hnsw_conn: psycopg.Connection[Any], exact_conn: psycopg.Connection[Any], statement: Any, probes: Any
) -> Comparison:
    """Each probe looked up with HNSW and exactly, alternating in chunks (same machine noise for both)."""
    result = Comparison([], [], [], [])
    for start in range(0, len(probes), LOOKUP_CHUNK):
        chunk = probes[start : start + LOOKUP_CHUNK]
        timings, ids = run_lookups(hnsw_conn, statement, chunk, exact=False)
        result.hnsw_ms += timings
        result.hnsw_ids += ids
        timings, ids = run_lookups(exact_conn, statement, chunk, exact=True)
        result.exact_ms += timings
        result.exact_ids += ids
    return result


def flush_statistics(*connections: psycopg.Connection[Any]) -> None:
    for connection in connections:
        connection.execute("SELECT pg_stat_force_next_flush()")
    time.sleep(0.2)


def measure_lookups(postgres: Postgres, traces: int, groups: int, lookups: int, seed: int) -> LookupResult:
    errors: list[str] = []
    notes: list[str] = []
    index_name = f"groups_centroid_hnsw_{LOCAL_DIMENSION}"
    statement = grouping_store._dimensioned(grouping_store._queries()["nearest_group"], LOCAL_DIMENSION)
    with postgres.fresh_database() as url, psycopg.connect(url, autocommit=True) as conn:
        started = time.perf_counter()
        centroids = load_big_domain(conn, traces, groups, seed)
        load_seconds = time.perf_counter() - started
        started = time.perf_counter()
        grouping_store.ensure_centroid_index(conn, LOCAL_DIMENSION)
        index_seconds = time.perf_counter() - started
        conn.execute("ANALYZE groups")
        conn.execute("ANALYZE traces")
        counts = conn.execute(
            "SELECT (SELECT count(*) FROM groups WHERE domain = %s), (SELECT count(*) FROM groups),"
            " (SELECT count(*) FROM traces WHERE domain = %s AND group_id IS NOT NULL)",
            (BIG, BIG),
        ).fetchone()
        if counts is None or tuple(int(c) for c in counts) != (groups, 2 * groups, traces):
            errors.append(f"loaded {counts}; expected ({groups}, {2 * groups}, {traces})")
        rng = np.random.default_rng(seed + 1)
        warmup = unit_vectors(rng, WARMUP_LOOKUPS, LOCAL_DIMENSION)
        probes = unit_vectors(rng, lookups, LOCAL_DIMENSION)
        noisy = centroids[rng.integers(0, groups, size=lookups)] + NEAR_NOISE * rng.standard_normal(
            (lookups, LOCAL_DIMENSION), dtype=np.float32
        )
        near = (noisy / np.linalg.norm(noisy, axis=1, keepdims=True)).astype(np.float32)
        near_distance = float(np.median(1 - (near @ centroids.T).max(axis=1)))
        # Two connections, so the exact scan never reuses a plan psycopg prepared for the HNSW one.
        with psycopg.connect(url, autocommit=True) as hnsw_conn, psycopg.connect(url, autocommit=True) as exact_conn:
            grouping_store.prepare(hnsw_conn)
            grouping_store.prepare(exact_conn)
            hnsw_plan = top_scan(hnsw_conn, statement, probes[0], exact=False)
            exact_plan = top_scan(exact_conn, statement, probes[0], exact=True)
            run_lookups(hnsw_conn, statement, warmup, exact=False)
            run_lookups(exact_conn, statement, warmup, exact=True)
            flush_statistics(hnsw_conn, exact_conn)
            scans_before = index_scans(conn, index_name)
            random_result = compare(hnsw_conn, exact_conn, statement, probes)
            near_result = compare(hnsw_conn, exact_conn, statement, near)
            flush_statistics(hnsw_conn, exact_conn)
            # The plans the (prepared) statements really used: every HNSW lookup and no exact one
            # scanned the index.
            scans = index_scans(conn, index_name) - scans_before
    uses_index = "Index Scan" in hnsw_plan and index_name in hnsw_plan
    if uses_index and scans != 2 * lookups:
        errors.append(f"the HNSW index was scanned {scans} times during {2 * lookups} HNSW lookups")
    big_ids = set(range(1, groups + 1))
    for name, result in (("random", random_result), ("near-centroid", near_result)):
        found = set(result.hnsw_ids) | set(result.exact_ids)
        if -1 in found:
            errors.append(f"some {name} lookups found no group")
        if not found <= big_ids | {-1}:
            errors.append(f"a {name} lookup returned a group of another domain")
    if not uses_index:
        notes.append(
            f"the planner does not use {index_name} for the service's lookup at this size ({hnsw_plan}): "
            "both rows are exact scans"
        )
    if index_name in exact_plan:
        errors.append(f"the exact lookup uses the HNSW index: {exact_plan}")
    return LookupResult(
        random_result,
        near_result,
        near_distance,
        load_seconds,
        index_seconds,
        hnsw_plan,
        exact_plan,
        scans,
        errors,
        notes,
    )


# Report -----------------------------------------------------------------------------------------


def percentile(values: Sequence[float], share: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), share))


def render(args: argparse.Namespace, rounds: Sequence[ThroughputRound], lookups: LookupResult | None) -> Table:
    title = "grpod grouping: embed and group against the encoder; nearest-group lookup"
    table = Table(title=title + (f" (throughput: median of {len(rounds)} rounds)" if rounds else ""))
    for column in ("measurement", "workload", "traces/s", "p50 ms", "p99 ms", "ratio", "goal"):
        table.add_column(column, justify="left" if column in ("measurement", "workload", "goal") else "right")
    if rounds:
        encoder_rate = statistics.median(args.queries / r.encoder_seconds for r in rounds)
        group_rate = statistics.median(args.queries / r.group_seconds for r in rounds)
        ratio = group_rate / encoder_rate
        paired = statistics.median(r.encoder_seconds / r.group_seconds for r in rounds)
        embed_share = statistics.median(r.embed_seconds / r.group_seconds for r in rounds)
        # The time group_domain spends outside the encoder (database round trips, Python) barely
        # varies with the machine's load, unlike the encoder: per trace, and what it leaves of the
        # encoder's median rate.
        outside_ms = statistics.median((r.group_seconds - r.embed_seconds) / args.queries * 1000 for r in rounds)
        encoder_ms = 1000 / encoder_rate
        estimate = encoder_ms / (encoder_ms + outside_ms)
        met = "[green]met[/green]" if ratio >= GOAL else "[red]NOT met[/red]"
        table.add_row(
            "encoder alone: LocalEmbedder().embed",
            f"{args.queries:,} queries, batches of 64",
            f"{encoder_rate:,.0f}",
            "",
            "",
            "",
            "",
        )
        table.add_row(
            f"embed and group: group_domain(limit={GROUP_LIMIT}) until done",
            f"{args.queries:,} traces -> {rounds[0].groups:,} groups, {rounds[0].calls} calls",
            f"{group_rate:,.0f}",
            "",
            "",
            f"{ratio:.0%} of encoder",
            f">= {GOAL:.0%}: {met} (paired per round: {paired:.0%})",
        )
        table.add_row(
            "  of which outside the encoder (database, Python)",
            f"per trace; the encoder is {embed_share:.0%} of group_domain's time",
            "",
            f"{outside_ms:.2f}",
            "",
            f"est. {estimate:.0%} of encoder",
            f"encoder ({encoder_ms:.2f} ms/trace) + this",
        )
    if lookups is not None:
        workload = f"{args.groups:,} groups + {args.groups:,} other, {args.traces:,} traces"
        kinds = (
            (lookups.random, f"{len(lookups.random.hnsw_ms):,} random unit queries"),
            (lookups.near, f"{len(lookups.near.hnsw_ms):,} queries near a centroid (~{lookups.near_distance:.2f})"),
        )
        for number, (result, queries) in enumerate(kinds):
            hnsw_p50, exact_p50 = percentile(result.hnsw_ms, 50), percentile(result.exact_ms, 50)
            extra = "" if number == 0 else " (extra)"
            table.add_row(
                f"nearest group: HNSW, iterative scan{extra}",
                workload,
                "",
                f"{hnsw_p50:.2f}",
                f"{percentile(result.hnsw_ms, 99):.2f}",
                f"recall {result.recall:.1%}",
                queries,
            )
            table.add_row(
                f"nearest group: exact scan (enable_indexscan=off){extra}",
                workload,
                "",
                f"{exact_p50:.2f}",
                f"{percentile(result.exact_ms, 99):.2f}",
                f"HNSW p50 {exact_p50 / hnsw_p50:.1f}x faster",
                queries,
            )
    return table


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Grouping performance: group_domain's throughput against the encoder alone, and the "
        "nearest-group lookup's latency and recall with the HNSW index against an exact scan.",
    )
    parser.add_argument("--queries", type=int, default=2_000, help="queries to embed, and to embed and group")
    parser.add_argument("--repeat", type=int, default=5, help="rounds of encoder/grouping; medians are shown")
    parser.add_argument("--traces", type=int, default=100_000, help="traces in the big domain")
    parser.add_argument("--groups", type=int, default=5_000, help="groups in the big domain (and in another)")
    parser.add_argument("--lookups", type=int, default=1_000, help="timed nearest-group lookups (each kind)")
    parser.add_argument("--skip", choices=("throughput", "lookup"), help="leave out one part")
    parser.add_argument("--seed", type=int, default=20261124)
    args = parser.parse_args(argv)
    for name in ("queries", "repeat", "traces", "groups", "lookups"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    run_started = time.monotonic()
    configure_logging("WARNING", "console")  # no "migration applied" line per fresh database
    workdir = Path(tempfile.mkdtemp(prefix="grpod-bench-grouping-"))
    rounds: list[ThroughputRound] = []
    lookups: LookupResult | None = None
    postgres = Postgres(workdir)
    try:
        if args.skip != "throughput":
            queries = varied_queries(base_queries(), args.queries, args.seed)
            err_console.print(f"loading the local model; {args.queries:,} queries ({len(set(queries)):,} distinct)")
            embedder = LocalEmbedder()
            embedder.embed(queries[:64])  # warm-up
            for round_number in range(1, args.repeat + 1):
                # Alternate which goes first, so a slow spell of the shared machine hits both alike.
                encoder_first = round_number % 2 == 1
                if encoder_first:
                    encoder_seconds = time_encoder(embedder, queries)
                measured = time_grouping(postgres, embedder, queries)
                if not encoder_first:
                    encoder_seconds = time_encoder(embedder, queries)
                measured.encoder_seconds = encoder_seconds
                rounds.append(measured)
                err_console.print(
                    f"[{round_number}/{args.repeat}] encoder alone {encoder_seconds:.2f} s; embed and group "
                    f"{measured.group_seconds:.2f} s (in the encoder {measured.embed_seconds:.2f} s, "
                    f"{measured.calls} calls), {measured.groups:,} groups; ratio "
                    f"{encoder_seconds / measured.group_seconds:.0%}"
                    + (f": {'; '.join(measured.errors)}" if measured.errors else "")
                )
        if args.skip != "lookup":
            err_console.print(
                f"nearest group: loading {args.groups:,} + {args.groups:,} groups and {args.traces:,} traces ..."
            )
            lookups = measure_lookups(postgres, args.traces, args.groups, args.lookups, args.seed)
            err_console.print(
                f"loaded in {lookups.load_seconds:.1f} s; HNSW index built in {lookups.index_seconds:.1f} s; "
                f"plans: HNSW {lookups.hnsw_plan!r}, exact {lookups.exact_plan!r}; "
                f"HNSW index scans counted during the {2 * args.lookups:,} HNSW lookups: {lookups.hnsw_index_scans:,}"
            )
    finally:
        postgres.close()
        shutil.rmtree(workdir, ignore_errors=True)
    console.print(render(args, rounds, lookups))
    console.print(
        "traces/s = queries / seconds (median of the rounds); ratio = embed-and-group's median rate over the "
        "encoder's (paired per round: the median of the rounds' own ratios); the machine's load moves the encoder's "
        "time a lot, the time outside it little, hence the estimate from the encoder's median plus that time. "
        "Lookups: the service's nearest_group query, timed from execute to fetchone; HNSW and "
        f"exact alternate in chunks of {LOOKUP_CHUNK}; recall = share of lookups where both return the same group. "
        "(extra): the same comparison with queries close to an existing centroid, as real placements are (random "
        "384-d vectors are nearly equidistant from every centroid, the hardest case for HNSW)."
    )
    for note in lookups.notes if lookups else []:
        console.print(f"[yellow]NOTE: {note}[/yellow]")
    failures = [error for r in rounds for error in r.errors] + (lookups.errors if lookups else [])
    for error in failures:
        console.print(f"[red]ERROR: {error}[/red]")
    console.print(f"total run time: {time.monotonic() - run_started:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
