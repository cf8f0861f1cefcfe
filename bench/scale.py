"""Scale benchmark (issue 16): grouping latency, table and index sizes, ingest rate and the operator
queries at ``--traces`` traces over ``--domains`` domains, each against the same figure on a database
``--small-share`` of that size (default 1%), measured in the same run.

The set-up: one embedded PostgreSQL with pgvector and two fresh migrated databases, *small* and
*full*, generated deterministically from ``--seed`` and loaded with binary COPY:

- domains of Zipf-like sizes (rank r gets a share proportional to 1/r; at the defaults the largest
  has about 13% of the traces, the median a few hundred, the tail one or two dozen), each embedded
  with all-MiniLM-L6-v2's name and dimension (384);
- traces in arrival order over ``--days`` days (domains interleaved, as they arrive), each with a
  random UUID as trace_id, a query of 50-300 chars, an OpenAI-style trajectory of 1-3 KiB and an
  answer of 100-500 chars (``bench/ingest.py``'s generator), and a unit 384-d embedding: the centre
  of one of its domain's topics (about ``--group-mean`` traces per topic, topic popularity Zipf-like
  too) plus noise, about 0.2 in cosine distance from the centre;
- one group per topic with traces: its centroid the mean of its members' vectors, ``size`` their
  count, ``ready_at`` when its fifth rewarded member got its reward (groups of >= 5 rewarded
  members); no distillations, so no trace is ``used_by_distillation``;
- rewards: 72% of traces have one, 8% two (two sources), 20% none; 70% of the values are 0 or 1,
  the others in [-1, 1]; a reward comes minutes to hours after its trace; an unrewarded trace
  older than the default trace TTL (7 days) is expired, as the maintenance sweep would have done;
  every unrewarded trace is in ``traces_awaiting_reward`` (the expired ones marked), and each
  domain's counts are in ``domain_counts``, as ingest and the sweep keep them.

Foreign keys are not checked during the load (``session_replication_role = replica``; the data are
consistent by construction); the secondary indexes of traces, rewards and groups are dropped before
the load and created again afterwards with the migrations' own definitions, then the centroid HNSW
index is created as the service creates it (``grouping_store.ensure_centroid_index``), then VACUUM
ANALYZE. Indexes built in one go are more compact than ones grown row by row, so the sizes are a
lower bound for a database that grew to this size. The server's ``max_wal_size`` is raised for the
load (fewer checkpoints); nothing else of the server's configuration is changed.

What it measures, on both databases, interleaved so that the shared machine's noise hits both:

- **grouping**: ``--new-traces`` new traces in the largest domain and in the median one, stored
  through the ingest path (untimed), then ``grouping_store.group_domain(conn, embedder, domain,
  trace_ids=...)`` as the grouping task calls it, ``--per-call`` traces per call; ms per call
  (p50/p99) and per trace. The embedder is a lookup table that returns each new query's clustered
  vector (90% near one of the domain's topics, 10% a new topic): no model runs, so the time is the
  database work (the nearest-group lookups, new groups, the placement, the readiness checks);
- **nearest-group lookup** alone: the service's ``nearest_group`` query (HNSW, iterative scan), as
  ``bench/grouping.py`` times it, with vectors near the domain's topics, p50/p99;
- **sizes**: each table's heap, TOAST, every index by name, and the total (``pg_relation_size``,
  ``pg_table_size``, ``pg_indexes_size``, ``pg_total_relation_size``) for traces, rewards,
  groups, traces_awaiting_reward and domain_counts, per million traces;
- **ingest**: ``store_isolating_failures`` (what ``IngestConsumer.store`` calls for each batch),
  batches of 500 events (60% traces in the domains by size, 40% rewards of those traces, from
  ``bench/ingest.py``'s generator), events/s, ``--ingest-repeat`` rounds (the stored events are
  deleted and the tables vacuumed after each, untimed); medians;
- **operator and maintenance queries**, through the code that runs them: the dashboard overview
  (all domains, one domain), a ``/metrics`` scrape, ``grpod status``'s counts, the maintenance
  sweep (every domain's lost work, expiry and retention steps), trace expiry and a group merge pass
  for the largest domain (rolled back), the grouping and distillation sweeps' work lists, the
  groups listing; median ms of ``--query-repeat`` runs after one warm-up, and the ratio full/small.
  The two slowest at full size are run again with EXPLAIN (ANALYZE, BUFFERS), printed at the end.

Results go to ``--out`` (default ``bench/results/scale.json``). Run from the repository root::

    nice -n 10 .venv/bin/python bench/scale.py                          # 1,000 domains, 1,000,000 traces
    .venv/bin/python bench/scale.py --domains 50 --traces 20000        # a quick run
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, LiteralString

import numpy as np
import numpy.typing as npt
import orjson
import psycopg
from embedded_postgres import Postgres
from ingest import REWARD_SOURCES, TextSource, _trajectory, build_workload
from psycopg import sql
from psycopg.types.json import set_json_dumps
from rich.console import Console
from rich.table import Table

from grpod.daemon import status
from grpod.daemon.api import dashboard_store
from grpod.daemon.logs import configure_logging
from grpod.daemon.metrics import DatabaseCollector
from grpod.daemon.settings import Settings
from grpod.schema.sql import load_queries
from grpod.workers import distillation_store, grouping_store, maintenance_sweep
from grpod.workers.embeddings import LOCAL_DIMENSION, LOCAL_MODEL, Vectors
from grpod.workers.ingest import Incoming, store_isolating_failures
from grpod.workers.upkeep_settings import UpkeepSettings

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DIM = LOCAL_DIMENSION
NOISE = 0.04  # per coordinate: a 384-d vector about 0.2 in cosine distance from its topic's centre
CHUNK = 20_000  # traces generated and copied at a time
TTL_SECONDS = UpkeepSettings().trace_ttl_seconds
READY_AFTER = 5  # G: rewarded members that make a group ready (the default group_size)
INGEST_BATCH = 500
NEW_TOPIC_SHARE = 0.1
LOOKUP_CHUNK = 50
TABLES = ("traces", "rewards", "groups", "traces_awaiting_reward", "domain_counts")
Array = npt.NDArray[Any]

console = Console() if sys.stdout.isatty() else Console(width=150)
err_console = Console(stderr=True)


def say(message: str) -> None:
    err_console.print(message, highlight=False)


# The generated world -----------------------------------------------------------------------------


@dataclass
class World:
    """The shape of one database: domains, their sizes and topics, and every trace's domain and topic."""

    names: list[str]
    sizes: Array  # traces per domain, largest first
    topic_start: Array  # first topic of each domain
    topic_count: Array
    popularity: list[Array]  # per domain: the probability of each of its topics
    centres: Vectors  # one unit vector per topic
    domain_of: Array  # per trace, in arrival order
    topic_of: Array

    @property
    def traces(self) -> int:
        return int(self.sizes.sum())

    def rank(self, index: int) -> str:
        return self.names[index]


def zipf_sizes(domains: int, traces: int, exponent: float = 1.0) -> Array:
    """``traces`` split over ``domains`` by rank (share proportional to 1/rank**exponent), each >= 1."""
    weights = 1.0 / np.arange(1, domains + 1, dtype=np.float64) ** exponent
    spare = traces - domains
    raw = weights / weights.sum() * spare
    sizes = np.floor(raw).astype(np.int64)
    short = spare - int(sizes.sum())
    sizes[np.argsort(-(raw - sizes), kind="stable")[:short]] += 1
    result: Array = sizes + 1
    return result


def build_world(domains: int, traces: int, group_mean: int, seed: int) -> World:
    rng = np.random.default_rng(seed)
    sizes = zipf_sizes(domains, traces)
    names = [f"tenant-{index:04d}" for index in range(domains)]
    counts = np.maximum(1, np.round(sizes / group_mean)).astype(np.int64)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    popularity = []
    for count in counts:
        weights = 1.0 / np.arange(1, int(count) + 1, dtype=np.float64) ** 0.8
        popularity.append(weights / weights.sum())
    centres = rng.standard_normal((int(counts.sum()), DIM), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    domain_of = rng.permutation(np.repeat(np.arange(domains, dtype=np.int32), sizes))
    topic_of = np.empty(traces, dtype=np.int64)
    for domain in range(domains):
        where = np.flatnonzero(domain_of == domain)
        local = rng.choice(int(counts[domain]), size=len(where), p=popularity[domain])
        topic_of[where] = starts[domain] + local
    return World(names, sizes, starts, counts, popularity, centres, domain_of, topic_of)


def noisy(rng: np.random.Generator, centres: Vectors) -> Vectors:
    vectors = centres + NOISE * rng.standard_normal(centres.shape, dtype=np.float32)
    result: Vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    return result


def hex_ids(rng: np.random.Generator, count: int) -> list[str]:
    raw = rng.integers(0, 256, size=(count, 16), dtype=np.uint8)
    return [str(uuid.UUID(bytes=row.tobytes())) for row in raw]


# Loading ---------------------------------------------------------------------------------------


@dataclass
class LoadReport:
    traces: int
    rewards: int
    groups: int
    ready_groups: int
    largest_domain: str
    largest_domain_traces: int
    median_domain: str
    median_domain_traces: int
    largest_group: int
    seconds: dict[str, float] = field(default_factory=dict)


SECONDARY_INDEXES = """
SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid)
FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
WHERE c.relname = ANY(%s) AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid)
ORDER BY 1
"""


def identity_dumps(value: Any) -> Any:
    """The trajectories and metadata are JSON text already: the jsonb dumper sends them as they are."""
    return value


def load(conn: psycopg.Connection[Any], world: World, seed: int, days: float) -> LoadReport:
    """Fill a fresh migrated database with ``world``: domains, traces, rewards, groups; indexes after."""
    rng = np.random.default_rng(seed + 1)
    text = TextSource(random.Random(seed + 2))
    now = datetime.now(UTC)
    n = world.traces
    seconds: dict[str, float] = {}
    grouping_store.prepare(conn)
    conn.execute("SET session_replication_role = replica")  # no foreign-key triggers during the load
    conn.execute("SET maintenance_work_mem = '1GB'")
    indexes = [(str(a), str(b)) for a, b in conn.execute(SECONDARY_INDEXES, (list(TABLES),)).fetchall()]
    for name, _ in indexes:
        conn.execute(f"DROP INDEX {name}")

    # Per trace, in arrival order: age, rewards, expiry.
    age = np.sort(rng.uniform(60.0, days * 86_400, size=n))[::-1]  # seconds before now, oldest first
    reward_count = rng.choice(3, size=n, p=[0.2, 0.72, 0.08])
    delay = np.minimum(rng.exponential(3_600.0, size=n) + 5.0, age - 1.0)  # reward after trace
    expired = (reward_count == 0) & (age > TTL_SECONDS)
    library_version = rng.integers(1, 41, size=n)

    started = time.perf_counter()
    names = world.names
    sums = np.zeros((len(world.centres), DIM), dtype=np.float64)
    with conn.cursor() as cursor:
        set_json_dumps(identity_dumps, context=cursor)
        with conn.transaction():
            with cursor.copy(
                "COPY domains (name, settings, created_at, embedding_model, embedding_dimension) FROM STDIN"
            ) as copy:
                for name in names:
                    copy.write_row((name, "{}", now - timedelta(days=days + 1), LOCAL_MODEL, DIM))
            columns = (
                "trace_id, domain, query, trajectory, answer, library_version, metadata, created_at, received_at,"
                " content_hash, embedding, group_id, grouped_at, expired_at"
            )
            types = ["text", "text", "text", "jsonb", "text", "int4", "jsonb", "timestamptz", "timestamptz"]
            types += ["bytea", "vector", "int8", "timestamptz", "timestamptz"]
            trace_ids: list[str] = []
            with cursor.copy(f"COPY traces ({columns}) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(types)
                for start in range(0, n, CHUNK):
                    stop = min(start + CHUNK, n)
                    topics = world.topic_of[start:stop]
                    vectors = noisy(rng, world.centres[topics])
                    order = np.argsort(topics, kind="stable")
                    unique, first = np.unique(topics[order], return_index=True)
                    sums[unique] += np.add.reduceat(vectors[order].astype(np.float64), first, axis=0)
                    ids = hex_ids(rng, stop - start)
                    trace_ids.extend(ids)
                    hashes = rng.integers(0, 256, size=(stop - start, 32), dtype=np.uint8)
                    for offset in range(stop - start):
                        index = start + offset
                        query = text.text(50, 300)
                        answer = text.text(100, 500)
                        received = now - timedelta(seconds=float(age[index]))
                        trajectory = orjson.dumps(_trajectory(text.rng, text, query, answer)).decode()
                        metadata = orjson.dumps({"agent": "scale", "latency_ms": 200 + index % 8800}).decode()
                        copy.write_row(
                            (
                                ids[offset],
                                names[world.domain_of[index]],
                                query,
                                trajectory,
                                answer,
                                int(library_version[index]),
                                metadata,
                                received - timedelta(milliseconds=250),
                                received,
                                hashes[offset].tobytes(),
                                vectors[offset],
                                int(topics[offset]) + 1,
                                received + timedelta(seconds=1),
                                received + timedelta(seconds=TTL_SECONDS + 300) if expired[index] else None,
                            )
                        )
                    say(f"  traces: {stop:,} of {n:,} copied ({time.perf_counter() - started:.0f} s)")
        seconds["copy traces"] = time.perf_counter() - started

        # Rewards, and when each group got its fifth rewarded member.
        started = time.perf_counter()
        first_reward = np.full(n, np.inf)
        rewards = 0
        with conn.transaction():
            columns = "trace_id, source, value, critique, created_at, received_at, content_hash"
            with cursor.copy(f"COPY rewards ({columns}) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(["text", "text", "float8", "text", "timestamptz", "timestamptz", "bytea"])
                for index in np.flatnonzero(reward_count > 0).tolist():
                    sources = rng.choice(len(REWARD_SOURCES), size=int(reward_count[index]), replace=False)
                    first_reward[index] = float(age[index] - delay[index])
                    for number, source in enumerate(sources):
                        at = now - timedelta(seconds=max(1.0, float(age[index] - delay[index] * (number + 1))))
                        value = float(rng.integers(0, 2)) if rng.random() < 0.7 else round(float(rng.uniform(-1, 1)), 3)
                        critique = text.text(40, 160) if rng.random() < 0.2 else None
                        copy.write_row(
                            (
                                trace_ids[index],
                                REWARD_SOURCES[int(source)],
                                value,
                                critique,
                                at - timedelta(milliseconds=100),
                                at,
                                rng.bytes(32),
                            )
                        )
                        rewards += 1
            # What ingest and the sweep keep: the traces awaiting a reward (the expired ones marked),
            # and each domain's counts (migration 0020).
            with cursor.copy("COPY traces_awaiting_reward (trace_id, domain, expired_at) FROM STDIN") as copy:
                for index in np.flatnonzero(reward_count == 0).tolist():
                    expired_at = now - timedelta(seconds=float(age[index]) - TTL_SECONDS - 300)
                    copy.write_row(
                        (trace_ids[index], names[world.domain_of[index]], expired_at if expired[index] else None)
                    )
            per_domain = {
                "traces": np.bincount(world.domain_of, minlength=len(names)),
                "rewards": np.bincount(world.domain_of, weights=reward_count, minlength=len(names)),
                "unrewarded": np.bincount(world.domain_of, weights=reward_count == 0, minlength=len(names)),
            }
            with cursor.copy("COPY domain_counts (domain, traces, rewards, unrewarded) FROM STDIN") as copy:
                for number, name in enumerate(names):
                    copy.write_row((name, *(int(per_domain[column][number]) for column in per_domain)))
        seconds["copy rewards"] = time.perf_counter() - started

        # Groups: one per topic with members.
        started = time.perf_counter()
        members = np.bincount(world.topic_of, minlength=len(world.centres))
        rewarded = np.flatnonzero(np.isfinite(first_reward))
        order = np.lexsort((-first_reward[rewarded], world.topic_of[rewarded]))  # per topic, oldest reward first
        topic_sorted = world.topic_of[rewarded][order]
        ages_sorted = first_reward[rewarded][order]
        unique, first, count = np.unique(topic_sorted, return_index=True, return_counts=True)
        ready_age = {
            int(t): float(ages_sorted[f + READY_AFTER - 1])
            for t, f, c in zip(unique, first, count, strict=True)
            if c >= READY_AFTER
        }
        created_age = np.full(len(world.centres), -np.inf)
        updated_age = np.full(len(world.centres), np.inf)
        np.maximum.at(created_age, world.topic_of, age)
        np.minimum.at(updated_age, world.topic_of, age)
        domain_of_topic = np.repeat(np.arange(len(names)), world.topic_count)
        with conn.transaction():
            columns = "id, domain, dimension, centroid, size, created_at, updated_at, ready_at"
            with cursor.copy(f"COPY groups ({columns}) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(["int8", "text", "int4", "vector", "int4", "timestamptz", "timestamptz", "timestamptz"])
                for topic in np.flatnonzero(members > 0):
                    ready = ready_age.get(int(topic))
                    copy.write_row(
                        (
                            int(topic) + 1,
                            names[domain_of_topic[topic]],
                            DIM,
                            (sums[topic] / members[topic]).astype(np.float32),
                            int(members[topic]),
                            now - timedelta(seconds=float(created_age[topic]) - 1),
                            now - timedelta(seconds=float(updated_age[topic]) - 1),
                            now - timedelta(seconds=ready - 2) if ready is not None else None,
                        )
                    )
            conn.execute("SELECT setval(pg_get_serial_sequence('groups', 'id'), %s)", (len(world.centres) + 1,))
        seconds["copy groups"] = time.perf_counter() - started

    started = time.perf_counter()
    for _, definition in indexes:
        conn.execute(definition)  # the migrations' own definitions, as they were
    seconds["secondary indexes"] = time.perf_counter() - started
    started = time.perf_counter()
    grouping_store.ensure_centroid_index(conn, DIM)
    seconds["HNSW centroid index"] = time.perf_counter() - started
    conn.execute("RESET session_replication_role")
    started = time.perf_counter()
    conn.execute("VACUUM (ANALYZE) domains, traces, rewards, groups, traces_awaiting_reward, domain_counts")
    seconds["VACUUM ANALYZE"] = time.perf_counter() - started
    conn.execute("RESET maintenance_work_mem")
    largest, median = 0, len(names) // 2
    return LoadReport(
        traces=n,
        rewards=rewards,
        groups=int((members > 0).sum()),
        ready_groups=len(ready_age),
        largest_domain=names[largest],
        largest_domain_traces=int(world.sizes[largest]),
        median_domain=names[median],
        median_domain_traces=int(world.sizes[median]),
        largest_group=int(members.max()),
        seconds=seconds,
    )


# Grouping --------------------------------------------------------------------------------------


class TableEmbedder:
    """The Embedder interface over a lookup table: each query's clustered vector, no model."""

    model = LOCAL_MODEL
    dimension = DIM

    def __init__(self) -> None:
        self.vectors: dict[str, Vectors] = {}

    def embed(self, texts: Sequence[str]) -> Vectors:
        if not texts:
            return np.zeros((0, DIM), dtype=np.float32)
        return np.stack([self.vectors[text] for text in texts])


def trace_event(trace_id: str, domain: str, query: str) -> dict[str, Any]:
    answer = "Open the settings page, then follow the steps shown there."
    return {
        "type": "trace",
        "schema_version": 1,
        "trace_id": trace_id,
        "domain": domain,
        "query": query,
        "trajectory": [{"role": "user", "content": query}, {"role": "assistant", "content": answer}],
        "answer": answer,
        "library_version": 1,
        "created_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "metadata": {"agent": "scale"},
    }


def probes(rng: np.random.Generator, world: World, domain: int, count: int) -> Vectors:
    """Vectors near the domain's topics (by popularity), as real placements are."""
    local = rng.choice(int(world.topic_count[domain]), size=count, p=world.popularity[domain])
    return noisy(rng, world.centres[world.topic_start[domain] + local])


def new_traces(
    conn: psycopg.Connection[Any], world: World, domain: int, count: int, embedder: TableEmbedder, seed: int, tag: str
) -> list[str]:
    """``count`` new traces of the domain stored through the ingest path (untimed); their vectors in ``embedder``."""
    rng = np.random.default_rng(seed)
    text = TextSource(random.Random(seed))
    vectors = probes(rng, world, domain, count)
    fresh = rng.random(count) < NEW_TOPIC_SHARE
    if fresh.any():
        centres = rng.standard_normal((int(fresh.sum()), DIM), dtype=np.float32)
        vectors[fresh] = noisy(rng, centres / np.linalg.norm(centres, axis=1, keepdims=True))
    ids, events = [], []
    for index in range(count):
        trace_id = f"new-{tag}-{world.names[domain]}-{index:05d}"
        query = f"{text.text(50, 280)} (#{tag}{index})"
        embedder.vectors[query] = vectors[index]
        ids.append(trace_id)
        events.append(Incoming(orjson.dumps(trace_event(trace_id, world.names[domain], query)), "scale"))
    outcome = store_isolating_failures(conn, events, Settings().limits(), 4096)
    if outcome.accepted != count:
        raise RuntimeError(f"storing the new traces accepted {outcome.accepted} of {count}: {dict(outcome.rejected)}")
    return ids


@dataclass
class GroupingTimes:
    call_ms: list[float] = field(default_factory=list)
    placed: int = 0
    new_groups: int = 0
    ready: int = 0
    lookup_ms: list[float] = field(default_factory=list)
    lookup_plan: str = ""


def lookup_plan(conn: psycopg.Connection[Any], statement: Any, domain: str, vector: Vectors) -> str:
    queries = grouping_store._queries()
    with conn.transaction(force_rollback=True):
        conn.execute(queries["iterative_scan"])
        lines = [str(r[0]) for r in conn.execute(sql.SQL("EXPLAIN ") + statement, {"domain": domain, "vector": vector})]
    scans = [line.strip().lstrip("-> ").split("  (")[0] for line in lines if "Scan" in line]
    return scans[-1] if scans else "?"


def time_lookups(conn: psycopg.Connection[Any], statement: Any, domain: str, vectors: Vectors) -> list[float]:
    """Lookups as ``place()`` runs them: in a transaction with the iterative scan set."""
    timings = []
    with conn.transaction():
        conn.execute(grouping_store._queries()["iterative_scan"])
        for vector in vectors:
            started = time.perf_counter()
            conn.execute(statement, {"domain": domain, "vector": vector}).fetchone()
            timings.append((time.perf_counter() - started) * 1000)
    return timings


def measure_grouping(
    connections: dict[str, psycopg.Connection[Any]], worlds: dict[str, World], args: argparse.Namespace
) -> dict[tuple[str, str], GroupingTimes]:
    """group_domain calls and nearest-group lookups, small and full interleaved call by call."""
    results: dict[tuple[str, str], GroupingTimes] = {}
    embedder = TableEmbedder()
    pending: dict[tuple[str, str], list[str]] = {}
    ranks = {"largest": 0, "median": args.domains // 2}
    for size, conn in connections.items():
        for which, rank in ranks.items():
            seed = args.seed + 100 + rank
            pending[(size, which)] = new_traces(conn, worlds[size], rank, args.new_traces, embedder, seed, size[0])
            results[(size, which)] = GroupingTimes()
    for connection in connections.values():
        grouping_store.prepare(connection)
    calls = math.ceil(args.new_traces / args.per_call)
    for call in range(calls):
        for (size, which), ids in pending.items():
            chunk = ids[call * args.per_call : (call + 1) * args.per_call]
            started = time.perf_counter()
            run = grouping_store.group_domain(
                connections[size], embedder, worlds[size].rank(ranks[which]), trace_ids=chunk
            )
            result = results[(size, which)]
            result.call_ms.append((time.perf_counter() - started) * 1000)
            result.placed += run.placed
            result.new_groups += run.new_groups
            result.ready += len(run.ready)
    statement = grouping_store._dimensioned(grouping_store._queries()["nearest_group"], DIM)
    rng = np.random.default_rng(args.seed + 7)
    vectors = {key: probes(rng, worlds[key[0]], ranks[key[1]], args.lookups + 20) for key in results}
    for (size, which), result in results.items():
        domain = worlds[size].rank(ranks[which])
        result.lookup_plan = lookup_plan(connections[size], statement, domain, vectors[(size, which)][0])
        time_lookups(connections[size], statement, domain, vectors[(size, which)][:20])  # warm-up
    for start in range(20, args.lookups + 20, LOOKUP_CHUNK):
        for (size, which), result in results.items():
            domain = worlds[size].rank(ranks[which])
            some = vectors[(size, which)][start : start + LOOKUP_CHUNK]
            result.lookup_ms += time_lookups(connections[size], statement, domain, some)
    return results


# Sizes -----------------------------------------------------------------------------------------


def sizes(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """Per table: heap, TOAST, each index, all indexes, total (bytes)."""
    rows: list[dict[str, Any]] = []
    for table in TABLES:
        row = conn.execute(
            "SELECT pg_relation_size(c.oid), coalesce(pg_total_relation_size(nullif(c.reltoastrelid, 0)), 0),"
            " pg_table_size(c.oid), pg_indexes_size(c.oid), pg_total_relation_size(c.oid)"
            " FROM pg_class c WHERE c.oid = %s::regclass",
            (table,),
        ).fetchone()
        assert row is not None
        heap, toast, table_size, indexes, total = (int(value) for value in row)
        rows.append({"table": table, "relation": "heap (main fork)", "bytes": heap})
        rows.append({"table": table, "relation": "TOAST (with its index)", "bytes": toast})
        rows.append({"table": table, "relation": "pg_table_size (heap + TOAST + maps)", "bytes": table_size})
        for name, size in conn.execute(
            "SELECT indexrelid::regclass::text, pg_relation_size(indexrelid) FROM pg_index"
            " WHERE indrelid = %s::regclass ORDER BY 2 DESC",
            (table,),
        ):
            rows.append({"table": table, "relation": f"index {name}", "bytes": int(size)})
        rows.append({"table": table, "relation": "pg_indexes_size (all indexes)", "bytes": indexes})
        rows.append({"table": table, "relation": "pg_total_relation_size", "bytes": total})
    row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    assert row is not None
    rows.append({"table": "database", "relation": "pg_database_size", "bytes": int(row[0])})
    return rows


# Ingest ----------------------------------------------------------------------------------------


def ingest_batches(world: World, count: int, seed: int) -> tuple[list[list[Incoming]], list[str], list[str]]:
    """``count`` events of bench/ingest.py's workload, their traces in the world's domains (by size)."""
    workload = build_workload(count, seed)
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(world.names), size=workload.traces, p=world.sizes / world.sizes.sum())
    traces = iter(picks)
    for event in workload.events:
        if event["type"] == "trace":
            event["domain"] = world.names[int(next(traces))]
    payloads = [Incoming(orjson.dumps(event), "queue") for event in workload.events]
    batches = [payloads[start : start + INGEST_BATCH] for start in range(0, len(payloads), INGEST_BATCH)]
    return batches, workload.trace_ids, workload.reward_keys[0]


def time_ingest(conn: psycopg.Connection[Any], batches: Sequence[Sequence[Incoming]], settings: Settings) -> float:
    """Seconds in store_isolating_failures over the batches, as IngestConsumer.store calls it."""
    seconds = 0.0
    limits = settings.limits()
    for batch in batches:
        started = time.perf_counter()
        outcome = store_isolating_failures(conn, batch, limits, settings.rejected_payload_bytes)
        seconds += time.perf_counter() - started
        if outcome.accepted != len(batch):
            raise RuntimeError(f"ingest accepted {outcome.accepted} of {len(batch)}: {dict(outcome.rejected)}")
    return seconds


def undo_ingest(conn: psycopg.Connection[Any], trace_ids: list[str]) -> None:
    conn.execute("DELETE FROM rewards WHERE trace_id = ANY(%s)", (trace_ids,))
    conn.execute("DELETE FROM traces_awaiting_reward WHERE trace_id = ANY(%s)", (trace_ids,))
    conn.execute("DELETE FROM traces WHERE trace_id = ANY(%s)", (trace_ids,))
    conn.execute("DELETE FROM domain_count_deltas")  # what the round's batches added
    conn.execute("VACUUM (ANALYZE) traces, rewards, traces_awaiting_reward, domain_count_deltas")


# Operator and maintenance queries --------------------------------------------------------------


Explain = tuple[str, str, dict[str, Any]]  # query file, query name, parameters


@dataclass(frozen=True)
class QuerySpec:
    name: str
    runs: str
    run: Callable[[psycopg.Connection[Any], str], object]
    explain: Callable[[str], Explain]


def rolled_back(
    action: Callable[[psycopg.Connection[Any], str], object],
) -> Callable[[psycopg.Connection[Any], str], object]:
    def run(conn: psycopg.Connection[Any], domain: str) -> object:
        with conn.transaction(force_rollback=True):
            return action(conn, domain)

    return run


def metrics_scrape(conn: psycopg.Connection[Any], _: str) -> object:
    collector = DatabaseCollector(lambda: contextlib.nullcontext(conn), dict)
    return list(collector.collect())


def maintenance_all(conn: psycopg.Connection[Any], _: str) -> object:
    return maintenance_sweep.sweep(conn, maintenance_sweep.DeploymentUpkeep(), deployment_steps=(), merge_groups=False)


EXPIRY = {"ttl_seconds": TTL_SECONDS, "limit": maintenance_sweep.BATCH}
QUERY_SPECS = (
    QuerySpec(
        "dashboard overview, every domain",
        "each dashboard page load",
        lambda conn, _: dashboard_store.overview(conn, None),
        lambda _: ("dashboard.sql", "overview", {"domains": None, "window": dashboard_store.RATE_WINDOW_SECONDS}),
    ),
    QuerySpec(
        "dashboard overview, largest domain",
        "a domain's dashboard page",
        lambda conn, domain: dashboard_store.overview(conn, [domain]),
        lambda d: ("dashboard.sql", "overview", {"domains": [d], "window": dashboard_store.RATE_WINDOW_SECONDS}),
    ),
    QuerySpec(
        "/metrics scrape (DatabaseCollector)",
        "every Prometheus scrape",
        metrics_scrape,
        lambda _: ("metrics.sql", "events_accepted", {}),
    ),
    QuerySpec(
        "grpod status: domain_counts",
        "grpod status, grpod domains",
        lambda conn, _: status.domain_counts(conn),
        lambda _: ("stats.sql", "domain_counts", {}),
    ),
    QuerySpec(
        "grpod status: pending_rewards",
        "grpod status",
        lambda conn, _: status._scalar(conn, "pending_rewards"),
        lambda _: ("stats.sql", "pending_rewards", {}),
    ),
    QuerySpec(
        "maintenance sweep, every domain (lost work, expiry, retention)",
        "every GRPOD_MAINTENANCE_SECONDS (600 s)",
        maintenance_all,
        lambda d: ("maintenance.sql", "expire_traces", {"domain": d} | EXPIRY),
    ),
    QuerySpec(
        "trace expiry, largest domain (rolled back)",
        "in each maintenance sweep",
        rolled_back(lambda conn, domain: maintenance_sweep.expire_traces(conn, domain, UpkeepSettings())),
        lambda d: ("maintenance.sql", "expire_traces", {"domain": d} | EXPIRY),
    ),
    QuerySpec(
        "group merge pass, largest domain (rolled back)",
        "in each maintenance sweep",
        rolled_back(lambda conn, domain: grouping_store.merge_groups(conn, domain)),
        lambda d: ("grouping.sql", "merge_candidates", {"domain": d, "dimension": DIM}),
    ),
    QuerySpec(
        "grouping sweep: domains_with_ungrouped",
        "every 60 s (beat)",
        lambda conn, _: grouping_store.domains_with_ungrouped(conn),
        lambda _: ("grouping.sql", "domains_with_ungrouped_traces", {}),
    ),
    QuerySpec(
        "grouping sweep: unready_rewarded_groups",
        "every 60 s (beat)",
        lambda conn, _: grouping_store.unready_rewarded_groups(conn),
        lambda _: ("grouping.sql", "unready_groups_with_rewards", {"limit": 1000, "domain": None}),
    ),
    QuerySpec(
        "distillation sweep: groups_to_distill",
        "every 60 s (beat)",
        lambda conn, _: distillation_store.groups_to_distill(conn, min_age_seconds=600),
        lambda _: ("distillation.sql", "groups_to_distill", {"domain": None, "limit": 100, "min_age_seconds": 600}),
    ),
    QuerySpec(
        "grpod groups, largest domain (list_groups)",
        "grpod groups DOMAIN, the dashboard",
        lambda conn, domain: grouping_store.list_groups(conn, domain),
        lambda d: ("grouping.sql", "list_groups", {"domain": d, "limit": 100}),
    ),
)


def measure_queries(
    connections: dict[str, psycopg.Connection[Any]], domain: str, repeat: int
) -> dict[str, dict[str, list[float]]]:
    """Per query and size: ms of ``repeat`` runs after one warm-up, small and full alternating."""
    timings: dict[str, dict[str, list[float]]] = {spec.name: {size: [] for size in connections} for spec in QUERY_SPECS}
    for spec in QUERY_SPECS:
        say(f"  {spec.name} ...")
        for round_number in range(repeat + 1):
            for size, conn in connections.items():
                started = time.perf_counter()
                spec.run(conn, domain)
                if round_number:
                    timings[spec.name][size].append((time.perf_counter() - started) * 1000)
    return timings


def explain(conn: psycopg.Connection[Any], spec: QuerySpec, domain: str) -> list[str]:
    filename, name, values = spec.explain(domain)
    query: LiteralString = load_queries("grpod.schema", f"queries/{filename}")[name]
    with conn.transaction(force_rollback=True):  # EXPLAIN ANALYZE runs an UPDATE for real
        rows = conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + query, values).fetchall()
    return [f"-- {filename}:{name} with {values}"] + [str(row[0]) for row in rows]


# Report ----------------------------------------------------------------------------------------


def pct(values: Sequence[float], share: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), share)) if values else float("nan")


def ratio(full: float, small: float) -> str:
    return f"{full / small:.1f}x" if small > 0 else ""


def mib(value: float) -> str:
    return f"{value / 2**20:,.1f}"


def render_setup(reports: dict[str, LoadReport]) -> Table:
    table = Table(title="Set-up: the generated databases (loaded with binary COPY, indexes built after)")
    table.add_column("", justify="left")
    for size in reports:
        table.add_column(size, justify="right")
    rows: list[tuple[str, Callable[[LoadReport], str]]] = [
        ("traces", lambda r: f"{r.traces:,}"),
        ("rewards", lambda r: f"{r.rewards:,}"),
        ("groups (ready)", lambda r: f"{r.groups:,} ({r.ready_groups:,})"),
        ("largest domain: traces", lambda r: f"{r.largest_domain} {r.largest_domain_traces:,}"),
        ("median domain: traces", lambda r: f"{r.median_domain} {r.median_domain_traces:,}"),
        ("largest group: traces", lambda r: f"{r.largest_group:,}"),
    ]
    for label, value in rows:
        table.add_row(label, *(value(report) for report in reports.values()))
    for phase in next(iter(reports.values())).seconds:
        table.add_row(f"load: {phase} (s)", *(f"{report.seconds[phase]:.1f}" for report in reports.values()))
    table.add_row("load: total (s)", *(f"{sum(report.seconds.values()):.1f}" for report in reports.values()))
    return table


def render_grouping(
    results: dict[tuple[str, str], GroupingTimes], reports: dict[str, LoadReport], per_call: int
) -> Table:
    table = Table(title=f"Grouping at size: group_domain ({per_call} new traces per call) and the nearest-group lookup")
    for column in ("measurement", "domain", "small p50", "small p99", "full p50", "full p99", "full/small p50"):
        table.add_column(column, justify="left" if column in ("measurement", "domain") else "right")
    for which in ("largest", "median"):
        small, full = results[("small", which)], results[("full", which)]
        traces = [int(getattr(reports[size], f"{which}_domain_traces")) for size in ("small", "full")]
        label = f"{getattr(reports['full'], which + '_domain')}: {traces[0]:,} / {traces[1]:,} traces"
        call = [pct(small.call_ms, 50), pct(small.call_ms, 99), pct(full.call_ms, 50), pct(full.call_ms, 99)]
        table.add_row(
            f"group_domain, ms per call ({len(full.call_ms)} calls)",
            label,
            *(f"{v:.1f}" for v in call),
            ratio(call[2], call[0]),
        )
        table.add_row("  the same, ms per trace", "", *(f"{v / per_call:.2f}" for v in call), "")
        look = [pct(small.lookup_ms, 50), pct(small.lookup_ms, 99), pct(full.lookup_ms, 50), pct(full.lookup_ms, 99)]
        table.add_row(
            f"nearest_group alone, ms ({len(full.lookup_ms)} lookups)",
            label,
            *(f"{v:.2f}" for v in look),
            ratio(look[2], look[0]),
        )
    return table


def render_sizes(small: list[dict[str, Any]], full: list[dict[str, Any]], small_traces: int, full_traces: int) -> Table:
    table = Table(title="Sizes: MiB at full size and MiB per million traces (small database beside it)")
    for column in ("table", "relation", "full MiB", "full MiB / 1M traces", "small MiB / 1M traces"):
        table.add_column(column, justify="left" if column in ("table", "relation") else "right")
    small_by = {(row["table"], row["relation"]): row["bytes"] for row in small}
    for row in full:
        key = (row["table"], row["relation"])
        table.add_row(
            row["table"],
            row["relation"],
            mib(row["bytes"]),
            mib(row["bytes"] * 1e6 / full_traces),
            mib(small_by.get(key, float("nan")) * 1e6 / small_traces),
        )
    return table


def render_ingest(rates: dict[str, list[float]], events: int) -> Table:
    table = Table(title=f"Ingest at size: store_isolating_failures, batches of {INGEST_BATCH} (median of rounds)")
    for column in ("database", "events per round", "events/s (median)", "rounds", "full/small"):
        table.add_column(column, justify="left" if column == "database" else "right")
    small = statistics.median(rates["small"])
    for size, values in rates.items():
        median = statistics.median(values)
        table.add_row(
            size,
            f"{events:,}",
            f"{median:,.0f}",
            ", ".join(f"{v:,.0f}" for v in values),
            f"{median / small:.2f}" if size == "full" else "",
        )
    return table


def render_queries(timings: dict[str, dict[str, list[float]]], repeat: int) -> Table:
    table = Table(title=f"Operator and maintenance queries: median ms of {repeat} runs, slowest at full size first")
    for column in ("query (through grpod's code)", "runs", "small ms", "full ms", "full/small"):
        table.add_column(column, justify="left" if column.startswith(("query", "runs")) else "right")
    runs = {spec.name: spec.runs for spec in QUERY_SPECS}
    for name, by_size in sorted(timings.items(), key=lambda item: -statistics.median(item[1]["full"])):
        small, full = statistics.median(by_size["small"]), statistics.median(by_size["full"])
        table.add_row(name, runs[name], f"{small:,.1f}", f"{full:,.1f}", ratio(full, small))
    return table


# Main ------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="grpod at scale: grouping latency, sizes, ingest rate and operator queries on a generated "
        "database of --traces traces, each against a database of --small-share of that size, in one run.",
    )
    parser.add_argument("--domains", type=int, default=1000, help="domains (Zipf-like sizes)")
    parser.add_argument("--traces", type=int, default=1_000_000, help="traces in the full database")
    parser.add_argument("--small-share", type=float, default=0.01, help="the small database's share of --traces")
    parser.add_argument("--days", type=float, default=30.0, help="the traces arrived over this many days")
    parser.add_argument("--group-mean", type=int, default=40, help="traces per topic (group), on average")
    parser.add_argument("--new-traces", type=int, default=400, help="new traces grouped per measured domain")
    parser.add_argument("--per-call", type=int, default=10, help="traces per group_domain call")
    parser.add_argument("--lookups", type=int, default=500, help="timed nearest-group lookups per domain")
    parser.add_argument("--ingest-batches", type=int, default=10, help="batches of 500 events per ingest round")
    parser.add_argument("--ingest-repeat", type=int, default=3, help="ingest rounds; medians are shown")
    parser.add_argument("--query-repeat", type=int, default=5, help="timed runs of each query (after one warm-up)")
    parser.add_argument("--seed", type=int, default=20261124)
    parser.add_argument("--out", type=Path, default=RESULTS / "scale.json")
    args = parser.parse_args(argv)
    for name in ("domains", "traces", "new_traces", "per_call", "lookups", "ingest_batches", "ingest_repeat"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.domains < 2 or not 0 < args.small_share < 1:
        parser.error("--domains must be at least 2 and --small-share between 0 and 1")
    if round(args.traces * args.small_share) < args.domains:
        parser.error("the small database needs at least one trace per domain: raise --traces or --small-share")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    run_started = time.monotonic()
    configure_logging("WARNING", "console")
    counts = {"small": round(args.traces * args.small_share), "full": args.traces}
    workdir = Path(tempfile.mkdtemp(prefix="grpod-bench-scale-"))
    postgres = Postgres(workdir)
    result: dict[str, Any] = {"arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    try:
        with psycopg.connect(postgres.admin_url, autocommit=True) as admin:
            admin.execute("ALTER SYSTEM SET max_wal_size = '16GB'")
            admin.execute("SELECT pg_reload_conf()")
        time.sleep(1.0)  # the reload is asynchronous: new sessions see it once the postmaster has read it
        with contextlib.ExitStack() as stack:
            urls = {size: stack.enter_context(postgres.fresh_database()) for size in counts}
            connections = {
                size: stack.enter_context(psycopg.connect(url, autocommit=True)) for size, url in urls.items()
            }
            result["server"] = {
                name: str(connections["full"].execute(f"SHOW {name}").fetchone()[0])  # type: ignore[index]
                for name in ("server_version", "shared_buffers", "work_mem", "max_wal_size")
            }
            worlds: dict[str, World] = {}
            reports: dict[str, LoadReport] = {}
            for size, traces in counts.items():
                say(f"{size}: generating {args.domains:,} domains and {traces:,} traces (seed {args.seed}) ...")
                worlds[size] = build_world(args.domains, traces, args.group_mean, args.seed)
                reports[size] = load(connections[size], worlds[size], args.seed, args.days)
                say(f"{size}: loaded in {sum(reports[size].seconds.values()):.0f} s: {reports[size].seconds}")
            result["load"] = {size: asdict(report) for size, report in reports.items()}
            console.print(render_setup(reports))

            result["sizes"] = {size: sizes(conn) for size, conn in connections.items()}
            console.print(
                render_sizes(result["sizes"]["small"], result["sizes"]["full"], counts["small"], counts["full"])
            )

            say("grouping: new traces through group_domain, then nearest-group lookups ...")
            grouping = measure_grouping(connections, worlds, args)
            result["grouping"] = {f"{size}/{which}": asdict(times) for (size, which), times in grouping.items()}
            console.print(render_grouping(grouping, reports, args.per_call))
            for (size, which), times in grouping.items():
                say(
                    f"  {size}/{which}: placed {times.placed}, {times.new_groups} new groups, {times.ready} ready; "
                    f"lookup plan {times.lookup_plan!r}"
                )

            say("ingest: batches of 500 through store_isolating_failures ...")
            settings = Settings(home=workdir / "home")
            rates: dict[str, list[float]] = {size: [] for size in connections}
            for round_number in range(args.ingest_repeat):
                batches, trace_ids, _ = ingest_batches(
                    worlds["full"], args.ingest_batches * INGEST_BATCH, args.seed + 1000 + round_number
                )
                order = list(connections) if round_number % 2 == 0 else list(connections)[::-1]
                for size in order:
                    seconds = time_ingest(connections[size], batches, settings)
                    rates[size].append(args.ingest_batches * INGEST_BATCH / seconds)
                    undo_ingest(connections[size], trace_ids)
                say(f"  round {round_number + 1}: " + ", ".join(f"{s} {rates[s][-1]:,.0f}/s" for s in rates))
            result["ingest"] = {"events_per_round": args.ingest_batches * INGEST_BATCH, "events_per_second": rates}
            console.print(render_ingest(rates, args.ingest_batches * INGEST_BATCH))

            say("operator and maintenance queries ...")
            largest = worlds["full"].rank(0)
            timings = measure_queries(connections, largest, args.query_repeat)
            result["queries"] = {
                name: {"ms": by_size, "median_ms": {s: statistics.median(v) for s, v in by_size.items()}}
                for name, by_size in timings.items()
            }
            console.print(render_queries(timings, args.query_repeat))
            worst = sorted(QUERY_SPECS, key=lambda spec: -statistics.median(timings[spec.name]["full"]))[:2]
            plans = {spec.name: explain(connections["full"], spec, largest) for spec in worst}
            result["explain"] = plans
            for name, lines in plans.items():
                console.print(f"[bold]EXPLAIN (ANALYZE, BUFFERS) at full size: {name}[/bold]")
                console.print("\n".join(lines), highlight=False, markup=False)
    finally:
        postgres.close()
        shutil.rmtree(workdir, ignore_errors=True)
    result["total_seconds"] = time.monotonic() - run_started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    console.print(
        f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}; "
        f"total run time {result['total_seconds']:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
