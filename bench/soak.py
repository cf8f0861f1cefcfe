"""Soak benchmark: `grpod up` on RabbitMQ under a steady mixed stream for ``--minutes``, with
distillations running against a scripted OpenAI-compatible endpoint.

What runs, all on this machine:

- a scripted LLM endpoint in this process (``tests/scripted_llm.py``'s ``ScriptedEndpoint``,
  ``--llm-latency`` seconds per answer): summaries say what the attempt did; the group advantage
  states one rule about the topic of the group's queries (its majority intent in
  ``tests/data/paraphrases.jsonl``), worded differently each time; the operations step rewrites
  that topic's experience (UPDATE) or adds one when the library has none; the consolidation
  merges what one window proposed for the same topic. So every domain's library stays at about
  one experience per topic and changes with every version;
- `grpod up` as a subprocess in its own session: the embedded PostgreSQL under a fresh
  GRPOD_HOME, the RabbitMQ on 127.0.0.1:5672 under a fresh queue prefix, the local embedder,
  its worker (ingest consumer, grouping, distillation, library) and beat. Each domain gets
  ``--update-window-seconds`` and ``close_distance`` 0.6 (``grpod domain set``), so the
  scripted operations step, not the embedding triage, decides per topic;
- a publisher (the SDK, publisher confirms) at ``--rate`` events/s: traces of the paraphrase
  queries over ``--domains`` domains (good attempts look the answer up and mostly score high;
  bad ones guess), their rewards 5 to 60 s later (10% never; 3% before their trace; 5% get a
  second source), identical re-sends of a few traces and rewards (duplicates), a few traces
  re-sent with other content (conflicts), and ``--bad-share`` of bad events over plain AMQP
  with kombu (unparsable, missing fields, wrong types, unknown schema version, bad domain, NaN
  reward, a 40 KiB query, a 1.1 MiB event).

Every 5 s it samples: events stored per second (traces, rewards and rejected events in the
database), the depth of the events queue and of every stage queue (messages ready, from a
passive declare), the RSS of every process of
`grpod up`'s tree by role (supervisor, worker with its ingest consumer, pool processes, beat)
and of the embedded PostgreSQL (postmaster, auxiliary processes, backends), and the library
versions. At the end it waits for the events to drain, checks that every accepted event was
stored exactly once and every bad one is in the rejected store with its expected reason, reads
the lag from each trace to the library version that learned from it and, from `grpod up`'s log,
how often each task ran and the pool seconds it took, stops `grpod up` with SIGTERM (it must exit
0), reads what RabbitMQ dead-lettered and why, deletes the queues and exchanges of its prefix,
prints the figures, and writes ``soak.json`` and ``soak.png`` to ``--out``.

The memory bound: after ``--warmup-minutes``, no process of grpod (supervisor, worker, pool
processes, beat) grows by more than ``--max-growth-mib`` (the median RSS of the run's last
minute against that of the minute after warm-up), and the whole tree, PostgreSQL included,
stays under ``--max-total-mib`` of proportional set size (PSS: shared pages counted once).
It exits 1 when the bound or the exactly-once check fails, or `grpod up` does not stop cleanly.

Run from the repository root (needs the RabbitMQ on 127.0.0.1:5672)::

    .venv/bin/python bench/soak.py --minutes 10
    .venv/bin/python bench/soak.py --minutes 2 --rate 10 --out /tmp/soak
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import heapq
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import psycopg
from kombu.connection import Connection
from kombu.messaging import Producer
from rich.console import Console
from rich.table import Table

# Benchmarks import the project's code directly. The scripted LLM endpoint and the paraphrase
# set live in tests/, which is not an installed package: the repository root goes on the path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from grpod.daemon.celery_app import STAGES
from grpod.schema.topology import EVENTS_ROUTING_KEY, events_exchange
from grpod.sdk import Client, ClientSettings
from tests.faults.workers import wait_for
from tests.scripted_llm import ScriptedEndpoint

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672//"
PARAPHRASES = ROOT / "tests" / "data" / "paraphrases.jsonl"
GRPOD = [sys.executable, "-m", "grpod.daemon"]
SAMPLE_SECONDS = 5.0
TICK_SECONDS = 0.1
MIB = 1024 * 1024

console = Console() if sys.stdout.isatty() else Console(width=140)

# The stream: per trace, what else is published (shares of traces) ------------------------------

REWARD_SHARE = 0.90  # the rest are never rewarded
REWARD_FIRST_SHARE = 0.03  # of the rewarded: the reward is published 2 s before its trace
SECOND_SOURCE_SHARE = 0.05
DUPLICATE_TRACE_SHARE = 0.02
DUPLICATE_REWARD_SHARE = 0.01
CONFLICT_SHARE = 0.01
EVENTS_PER_TRACE = (
    1 + REWARD_SHARE + REWARD_SHARE * SECOND_SOURCE_SHARE + DUPLICATE_TRACE_SHARE + DUPLICATE_REWARD_SHARE
) + CONFLICT_SHARE
REWARD_DELAY = (5.0, 60.0)
GOOD_SHARE = 0.5

# Bad events over plain AMQP: (kind, expected reason, weight)
BAD_KINDS = (
    ("truncated_json", "unparsable", 25),
    ("trace_without_query", "schema_violation", 20),
    ("reward_value_text", "schema_violation", 10),
    ("schema_version_2", "unknown_schema_version", 10),
    ("bad_domain", "bad_domain", 10),
    ("nan_reward", "non_finite_reward", 10),
    ("query_40_kib", "query_too_large", 12),
    ("event_1_1_mib", "event_too_large", 3),
)

# The scripted LLM ---------------------------------------------------------------------------------

STRATEGIES = (
    "look the procedure up with the documentation tool before answering, and cite the step that applies",
    "confirm which account, item or value the user means before changing anything",
    "give the exact steps in order and say what the user will see after each one",
    "check the current state with a tool first, then answer for that state only",
    "warn about what cannot be undone before giving the steps",
    "ask one short clarifying question when the request is ambiguous, otherwise answer directly",
    "work through a small example first and check the result against it",
    "name the one tool result the answer depends on and quote it",
    "answer the question asked first, then add at most one related tip",
    "prefer the official procedure over a workaround, and say when none exists",
)
ENDINGS = ("", " and keep it short", " and state any limits")
TOPIC_PATTERN = re.compile(r"^When a query is about (.+?), ")
QUERY_LINE = re.compile(r"^Attempt \d+ \(reward [^)]*\), query: (.*)$", re.MULTILINE)
LIBRARY_LINE = re.compile(r"^\[(\d+)\] (.*)$", re.MULTILINE)
PROPOSAL_LINE = re.compile(r"^(\d+)\. (ADD|UPDATE|DELETE|NONE)(?: \[(\d+)\])?(?:: (.*))?$", re.MULTILINE)
REWARD_LINE = re.compile(r"^Reward: (\S+)", re.MULTILINE)


def topic_of_intent(intent: str) -> str:
    return intent.split(".", 1)[1].replace("_", " ")


def topic_of_text(text: str) -> str | None:
    match = TOPIC_PATTERN.match(text)
    return match.group(1) if match else None


class Teacher:
    """The scripted answers: a rule per topic of the group's queries, worded anew each time."""

    def __init__(self, intent_of_query: Mapping[str, str]) -> None:
        self.intent_of_query = intent_of_query
        self.taught: Counter[str] = Counter()
        self._lock = threading.Lock()

    def summary(self, messages: Sequence[Mapping[str, str]]) -> str:
        match = REWARD_LINE.search(messages[1]["content"])
        reward = float(match.group(1)) if match else 0.0
        if reward >= 0.5:
            return (
                f"The agent called the lookup tool, read the procedure and followed it step by step; reward {reward}."
            )
        return f"The agent answered from memory without a lookup and missed a required step; reward {reward}."

    def advantage(self, messages: Sequence[Mapping[str, str]]) -> str:
        intents = Counter(
            self.intent_of_query[query.strip()]
            for query in QUERY_LINE.findall(messages[1]["content"])
            if query.strip() in self.intent_of_query
        )
        if not intents:
            return '{"experiences": []}'
        topic = topic_of_intent(intents.most_common(1)[0][0])
        with self._lock:
            n = self.taught[topic]
            self.taught[topic] += 1
        strategy = STRATEGIES[n % len(STRATEGIES)] + ENDINGS[(n // len(STRATEGIES)) % len(ENDINGS)]
        return json.dumps({"experiences": [f"When a query is about {topic}, {strategy}."]})

    def operations(self, messages: Sequence[Mapping[str, str]]) -> str:
        text = messages[1]["content"]
        library_part, _, new_part = text.partition("New experiences:")
        library = {int(i): line for i, line in LIBRARY_LINE.findall(library_part)}
        operations: list[dict[str, Any]] = []
        for line in new_part.splitlines():
            if not line.startswith("- "):
                continue
            new = line[2:].strip()
            topic = topic_of_text(new)
            same = sorted(i for i, old in library.items() if topic is not None and topic_of_text(old) == topic)
            if not same:
                operations.append({"operation": "ADD", "id": None, "text": new, "reason": "a topic not covered yet"})
            elif library[same[0]].strip() == new:
                operations.append({"operation": "NONE", "id": same[0], "text": None, "reason": "already covered"})
            else:
                operations.append(
                    {"operation": "UPDATE", "id": same[0], "text": new, "reason": "the better attempts refine it"}
                )
        return json.dumps({"operations": operations})

    def consolidation(self, messages: Sequence[Mapping[str, str]]) -> str:
        """One operation per topic: an UPDATE of the topic's experience if a proposal names one, else
        one ADD; the last proposal's text wins. Proposals without a topic stay as they are."""
        proposed = messages[1]["content"].partition("Proposed operations:")[2]
        by_topic: dict[str, list[tuple[int, str, int | None, str | None]]] = {}
        results: list[dict[str, Any]] = []
        for number, kind, experience_id, text in PROPOSAL_LINE.findall(proposed):
            entry = (int(number), kind, int(experience_id) if experience_id else None, text or None)
            topic = topic_of_text(text) if text else None
            if topic is None:
                results.append(
                    {"operation": kind, "id": entry[2], "text": entry[3], "merged_from": [entry[0]], "reason": "kept"}
                )
            else:
                by_topic.setdefault(topic, []).append(entry)
        for entries in by_topic.values():
            updated = [entry[2] for entry in entries if entry[1] == "UPDATE" and entry[2] is not None]
            results.append(
                {
                    "operation": "UPDATE" if updated else "ADD",
                    "id": updated[0] if updated else None,
                    "text": entries[-1][3],
                    "merged_from": [entry[0] for entry in entries],
                    "reason": "one rule per topic",
                }
            )
        return json.dumps({"operations": results})


# The process tree ---------------------------------------------------------------------------------


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return None


def children_of(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            text = _read(f"/proc/{pid}/task/{task}/children")
            found += [int(child) for child in (text or "").split()]
    return found


def cmdline(pid: int) -> str:
    return (_read(f"/proc/{pid}/cmdline") or "").replace("\0", " ").strip()


def memory_kib(pid: int) -> tuple[int, int] | None:
    """(RSS, PSS) in KiB, or None when the process is gone."""
    status = _read(f"/proc/{pid}/status")
    if status is None:
        return None
    rss = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    rollup = _read(f"/proc/{pid}/smaps_rollup") or ""
    pss = next((int(line.split()[1]) for line in rollup.splitlines() if line.startswith("Pss:")), rss)
    return rss, pss


def postmaster_pid(pgdata: Path) -> int | None:
    text = _read(str(pgdata / "postmaster.pid"))
    return int(text.split()[0]) if text and text.split() else None


POSTGRES_AUX = re.compile(
    r"^postgres: (checkpointer|background writer|walwriter|autovacuum|logical replication|io worker)"
)


class ProcessNames:
    """Names processes by role once, on first sight, so a restarted process shows as a new name."""

    def __init__(self) -> None:
        self.names: dict[int, str] = {}
        self._used: Counter[str] = Counter()

    def _name(self, pid: int, role: str) -> str:
        if pid not in self.names:
            self._used[role] += 1
            count = self._used[role]
            self.names[pid] = f"{role}-{count}" if role == "pool" else role if count == 1 else f"{role}#{count}"
        return self.names[pid]

    def tree(self, supervisor: int, pgdata: Path) -> dict[str, list[int]]:
        """Role (or group) -> its processes. Postgres aux processes and backends are groups."""
        roles: dict[str, list[int]] = {self._name(supervisor, "supervisor"): [supervisor]}
        for child in children_of(supervisor):
            line = cmdline(child)
            role = "worker" if " worker" in line else "beat" if " beat" in line else "child"
            roles.setdefault(self._name(child, role), []).append(child)
            for grandchild in children_of(child):
                kind = "pool" if role == "worker" else f"{role} child"
                roles.setdefault(self._name(grandchild, kind), []).append(grandchild)
        postmaster = postmaster_pid(pgdata)
        if postmaster is not None and memory_kib(postmaster) is not None:
            roles["postgres"] = [postmaster]
            for backend in children_of(postmaster):
                group = "postgres aux" if POSTGRES_AUX.match(cmdline(backend)) else "postgres backends"
                roles.setdefault(group, []).append(backend)
        return roles


# The stream ---------------------------------------------------------------------------------------


@dataclass(order=True)
class Due:
    at: float
    seq: int
    kind: str = field(compare=False)  # trace, reward, duplicate, conflict, bad
    event: Any = field(compare=False)  # an SDK event (a dict), or (bytes, reason) for a bad one


@dataclass
class Ledger:
    """What was published, to check the database against."""

    traces: set[str] = field(default_factory=set)
    rewards: set[tuple[str, str]] = field(default_factory=set)
    duplicates: int = 0
    rejected: Counter[tuple[str, str]] = field(default_factory=Counter)  # (sha256 of the body, reason)
    published: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def total(self) -> int:
        with self.lock:
            return sum(self.published.values())


def trajectory(query: str, good: bool, domain: str) -> tuple[list[dict[str, Any]], str]:
    if good:
        answer = f"Here is the procedure for this {domain} question, step by step, as the reference states it."
        return [
            {"role": "user", "content": query},
            {
                "role": "assistant",
                "content": "Let me look that up first.",
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "lookup", "arguments": json.dumps({"q": query})},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": f"Reference for {domain}: the documented procedure."},
            {"role": "assistant", "content": answer},
        ], answer
    answer = "I think it is somewhere in the settings; try the obvious option."
    return [{"role": "user", "content": query}, {"role": "assistant", "content": answer}], answer


def bad_event(kind: str, n: int, run: str, domain: str) -> bytes:
    trace_id = f"{run}-bad-{n}"
    now = datetime.now(UTC).isoformat()
    trace: dict[str, Any] = {
        "type": "trace",
        "schema_version": 1,
        "trace_id": trace_id,
        "domain": domain,
        "query": "how do I do this",
        "trajectory": [],
        "answer": "like that",
        "created_at": now,
    }
    if kind == "truncated_json":
        return f'{{"type": "trace", "schema_version": 1, "trace_id": "{trace_id}", "domain": '.encode()
    if kind == "trace_without_query":
        del trace["query"]
        return orjson.dumps(trace)
    if kind == "reward_value_text":
        reward = {"type": "reward", "schema_version": 1, "trace_id": trace_id, "value": "high", "source": "grader"}
        return orjson.dumps(reward | {"created_at": now})
    if kind == "schema_version_2":
        return orjson.dumps(trace | {"schema_version": 2})
    if kind == "bad_domain":
        return orjson.dumps(trace | {"domain": f"Support Team {n}"})
    if kind == "nan_reward":
        return (
            f'{{"type": "reward", "schema_version": 1, "trace_id": "{trace_id}", "value": NaN, '
            f'"source": "grader", "created_at": "{now}"}}'
        ).encode()
    if kind == "query_40_kib":
        return orjson.dumps(trace | {"query": ("why " * 10240)[:40960]})
    if kind == "event_1_1_mib":
        return orjson.dumps(trace | {"answer": "x" * (1100 * 1024)})
    raise ValueError(kind)


class Stream:
    """Publishes the mixed stream on a schedule: ``tick()`` publishes whatever is due."""

    def __init__(
        self,
        client: Client,
        amqp: Producer,
        queries: Mapping[str, Sequence[str]],
        rate: float,
        bad_share: float,
        run: str,
        production: Mapping[str, int],
        seed: int,
    ) -> None:
        self.client = client
        self.amqp = amqp
        self.queries = queries
        self.domains = sorted(queries)
        self.trace_rate = rate * (1 - bad_share) / EVENTS_PER_TRACE
        self.bad_rate = rate * bad_share
        self.run = run
        self.production = production
        self.random = random.Random(seed)
        self.ledger = Ledger()
        self._due: list[Due] = []
        self._seq = 0
        self._traces = 0
        self._bad = 0
        self._bad_kinds = [kind for kind, _, _ in BAD_KINDS]
        self._bad_weights = [weight for _, _, weight in BAD_KINDS]
        self._reasons = {kind: reason for kind, reason, _ in BAD_KINDS}

    def _at(self, at: float, kind: str, event: Any) -> None:
        self._seq += 1
        heapq.heappush(self._due, Due(at, self._seq, kind, event))

    def seed_domains(self, now: float) -> None:
        """One trace per domain now, so that the domains exist before their settings are changed."""
        for domain in self.domains:
            self._new_trace(now, domain)

    def _new_trace(self, now: float, domain: str | None = None) -> None:
        rng = self.random
        self._traces += 1
        domain = domain or rng.choice(self.domains)
        query = rng.choice(self.queries[domain])
        good = rng.random() < GOOD_SHARE
        steps, answer = trajectory(query, good, domain)
        trace = self.client.trace_event(
            domain=domain,
            query=query,
            trajectory=steps,
            answer=answer,
            library_version=self.production.get(domain, 0),
            trace_id=f"{self.run}-{self._traces}",
            metadata={"agent": f"{domain}-bot", "soak": self.run},
        )
        trace_id = str(trace["trace_id"])
        trace_at = now
        if rng.random() < REWARD_SHARE:
            value = round(rng.uniform(0.6, 1.0) if (rng.random() < 0.85) == good else rng.uniform(0.0, 0.4), 2)
            if rng.random() < REWARD_FIRST_SHARE:
                reward_at, trace_at = now, now + 2.0
            else:
                reward_at = now + rng.uniform(*REWARD_DELAY)
            reward = self.client.reward_event(trace_id, value, source="grader")
            self._at(reward_at, "reward", reward)
            if rng.random() < DUPLICATE_REWARD_SHARE:
                self._at(reward_at + rng.uniform(1, 30), "duplicate", reward)
            if rng.random() < SECOND_SOURCE_SHARE:
                thumbs = 1.0 if good else 0.0
                self._at(now + rng.uniform(*REWARD_DELAY), "reward", self.client.reward_event(trace_id, thumbs))
        self._at(trace_at, "trace", trace)
        if rng.random() < DUPLICATE_TRACE_SHARE:
            self._at(trace_at + rng.uniform(1, 30), "duplicate", trace)
        if rng.random() < CONFLICT_SHARE:
            other = dict(trace) | {"answer": trace["answer"] + " (edited)"}
            self._at(trace_at + rng.uniform(10, 40), "conflict", self.client.trace_event(**_trace_fields(other)))

    def tick(self, elapsed: float, now: float, producing: bool) -> None:
        if producing:
            while self._traces < int(elapsed * self.trace_rate) + len(self.domains):
                self._new_trace(now)
            while self._bad < int(elapsed * self.bad_rate):
                self._bad += 1
                kind = self.random.choices(self._bad_kinds, self._bad_weights)[0]
                body = bad_event(kind, self._bad, self.run, self.random.choice(self.domains))
                self._at(now, "bad", (body, self._reasons[kind]))
        documents: list[Any] = []
        kinds: list[tuple[str, Any]] = []
        while self._due and self._due[0].at <= now:
            due = heapq.heappop(self._due)
            if due.kind == "bad":
                body, reason = due.event
                self.amqp.publish(body, content_type="application/json", content_encoding="binary", delivery_mode=2)
                kinds.append(("bad", (hashlib.sha256(body).hexdigest(), reason)))
            else:
                documents.append(due.event)
                kinds.append((due.kind, due.event))
        if documents:
            self.client.record_batch(documents)
        with self.ledger.lock:
            for kind, event in kinds:
                self.ledger.published[kind] += 1
                if kind == "trace":
                    self.ledger.traces.add(str(event["trace_id"]))
                elif kind == "reward":
                    self.ledger.rewards.add((str(event["trace_id"]), str(event["source"])))
                elif kind == "duplicate":
                    self.ledger.duplicates += 1
                elif kind == "conflict":
                    self.ledger.rejected[(hashlib.sha256(orjson.dumps(event)).hexdigest(), "conflict")] += 1
                else:
                    self.ledger.rejected[event] += 1

    def drop_pending(self) -> Counter[str]:
        """What was scheduled but not yet due when the stream ended: never published."""
        left = Counter(due.kind for due in self._due)
        self._due.clear()
        return left


def _trace_fields(document: Mapping[str, Any]) -> dict[str, Any]:
    names = ("domain", "query", "trajectory", "answer", "library_version", "trace_id", "created_at", "metadata")
    return {name: document[name] for name in names if name in document}


# Sampling -----------------------------------------------------------------------------------------

COUNTS_SQL = """
SELECT (SELECT count(*) FROM traces), (SELECT count(*) FROM rewards), (SELECT count(*) FROM rejected_events),
       (SELECT count(*) FROM library_versions), (SELECT count(*) FROM distillations),
       (SELECT count(*) FROM llm_calls)
"""
PRODUCTION_SQL = "SELECT domain, version FROM library_labels WHERE label = 'production'"


def queue_names(prefix: str) -> list[str]:
    return [f"{prefix}.events", *(f"{prefix}.{stage}" for stage in STAGES), f"{prefix}.dead", f"{prefix}.events.dead"]


def queue_depths(broker: Connection, names: Sequence[str]) -> dict[str, int | None]:
    """Messages ready in each queue (passive declares); None for a queue that does not exist."""
    depths: dict[str, int | None] = {}
    channel: Any = None
    for name in names:
        channel = channel or broker.channel()
        try:
            _, count, _ = channel.queue_declare(queue=name, passive=True)
            depths[name] = int(count)
        except Exception:  # not declared (yet): the broker closed the channel
            depths[name] = None
            with contextlib.suppress(Exception):
                channel.close()
            channel = None
    if channel is not None:
        channel.close()
    return depths


class Sampler(threading.Thread):
    def __init__(
        self,
        database_url: str,
        broker_url: str,
        prefix: str,
        supervisor: int,
        pgdata: Path,
        stream: Stream,
        production: dict[str, int],
        started: float,
    ) -> None:
        super().__init__(name="soak-sampler", daemon=True)
        self.database_url = database_url
        self.broker_url = broker_url
        self.queues = queue_names(prefix)
        self.supervisor = supervisor
        self.pgdata = pgdata
        self.stream = stream
        self.production = production
        self.started = started
        self.names = ProcessNames()
        self.samples: list[dict[str, Any]] = []
        self.stop = threading.Event()
        self.errors: list[str] = []

    def run(self) -> None:
        with (
            psycopg.connect(self.database_url, autocommit=True) as conn,
            Connection(self.broker_url) as broker,
        ):
            previous: tuple[float, int, int] | None = None
            while True:
                try:
                    sample = self.sample(conn, broker)
                except Exception as error:  # a sample missed is reported, not fatal
                    self.errors.append(f"{type(error).__name__}: {error}")
                else:
                    stored = sample["stored"]["traces"] + sample["stored"]["rewards"] + sample["stored"]["rejected"]
                    if previous is not None:
                        seconds = sample["t"] - previous[0]
                        sample["stored_per_s"] = (stored - previous[1]) / seconds
                        sample["published_per_s"] = (sample["published"] - previous[2]) / seconds
                    previous = (sample["t"], stored, sample["published"])
                    self.samples.append(sample)
                if self.stop.wait(SAMPLE_SECONDS - (time.monotonic() - self.started) % SAMPLE_SECONDS):
                    return

    def sample(self, conn: psycopg.Connection[Any], broker: Connection) -> dict[str, Any]:
        t = time.monotonic() - self.started
        row = conn.execute(COUNTS_SQL).fetchone()
        assert row is not None
        traces, rewards, rejected, versions, distillations, llm_calls = row
        for domain, version in conn.execute(PRODUCTION_SQL).fetchall():
            self.production[domain] = version
        rss: dict[str, float] = {}
        pss: dict[str, float] = {}
        processes: dict[str, int] = {}
        for role, pids in self.names.tree(self.supervisor, self.pgdata).items():
            measured = [m for m in (memory_kib(pid) for pid in pids) if m is not None]
            if measured:
                rss[role] = sum(m[0] for m in measured) / 1024
                pss[role] = sum(m[1] for m in measured) / 1024
                processes[role] = len(measured)
        return {
            "t": round(t, 2),
            "published": self.stream.ledger.total(),
            "stored": {"traces": traces, "rewards": rewards, "rejected": rejected},
            "versions": versions,
            "distillations": distillations,
            "llm_calls": llm_calls,
            "queues": queue_depths(broker, self.queues),
            "rss_mib": rss,
            "pss_mib": pss,
            "processes": processes,
        }


# Results ------------------------------------------------------------------------------------------

LAG_SQL = """
SELECT v.domain, v.version, v.created_at, t.received_at,
       (SELECT max(r.received_at) FROM rewards r WHERE r.trace_id = t.trace_id)
FROM library_versions v
CROSS JOIN LATERAL unnest(v.distillation_ids) AS used(distillation_id)
JOIN distillations d ON d.id = used.distillation_id
CROSS JOIN LATERAL jsonb_array_elements(d.samples) AS sample(value)
JOIN traces t ON t.trace_id = sample.value ->> 'trace_id'
ORDER BY v.created_at
"""


def percentile(values: Sequence[float], share: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def window_median(samples: Sequence[Mapping[str, Any]], role: str, start: float, end: float) -> float | None:
    values = [s["rss_mib"][role] for s in samples if start <= s["t"] <= end and role in s["rss_mib"]]
    return statistics.median(values) if values else None


class SoakAbortedError(Exception):
    """The soak cannot go on (grpod up died): nothing to measure."""


def one_row(database_url: str, query: str) -> Any:
    with psycopg.connect(database_url, autocommit=True) as conn:
        return conn.execute(query).fetchone()


def database_url_from_log(log: Path) -> str | None:
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{") and '"grpod is up"' in line:
            with contextlib.suppress(json.JSONDecodeError):
                return str(json.loads(line)["database"])
    return None


def dead_letters(broker_url: str, prefix: str) -> list[dict[str, Any]]:
    """What RabbitMQ dead-lettered into ``<prefix>.dead`` and ``<prefix>.events.dead``: the task (or
    event), the queue it died in, and why (x-death: ``delivery_limit``, ``expired``, ``rejected``)."""
    found: list[dict[str, Any]] = []
    with Connection(broker_url) as broker:
        for queue in (f"{prefix}.dead", f"{prefix}.events.dead"):
            channel = broker.channel()
            try:
                while (message := channel.basic_get(queue=queue, no_ack=True)) is not None:
                    headers = message.properties.get("application_headers") or {}
                    death = (headers.get("x-death") or [{}])[0]
                    found.append(
                        {
                            "queue": queue,
                            "task": headers.get("task"),
                            "died_in": death.get("queue"),
                            "reason": death.get("reason"),
                            "expiration_ms": message.properties.get("expiration") or death.get("original-expiration"),
                        }
                    )
            except Exception:  # the queue does not exist
                continue
            finally:
                with contextlib.suppress(Exception):
                    channel.close()
    return found


TASK_LINE = re.compile(r"^Task (\S+)\[[^\]]*\] (received|succeeded in ([0-9.]+)s)")
SENT_LINE = re.compile(r"^Scheduler: Sending due task \S+ \((\S+)\)")


def task_times(log: Path) -> dict[str, dict[str, float]]:
    """From `grpod up`'s log: per task, how often beat sent it, how often a worker received it and
    ran it, and the pool seconds it took."""
    tasks: dict[str, dict[str, float]] = {}
    for line in log.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        try:
            event = str(json.loads(line).get("event", ""))
        except json.JSONDecodeError:
            continue
        if sent := SENT_LINE.match(event):
            entry = tasks.setdefault(sent.group(1), {"sent_by_beat": 0, "received": 0, "succeeded": 0, "seconds": 0.0})
            entry["sent_by_beat"] += 1
        elif task := TASK_LINE.match(event):
            entry = tasks.setdefault(task.group(1), {"sent_by_beat": 0, "received": 0, "succeeded": 0, "seconds": 0.0})
            if task.group(3) is None:
                entry["received"] += 1
            else:
                entry["succeeded"] += 1
                entry["seconds"] += float(task.group(3))
    return tasks


def delete_broker_objects(broker_url: str, prefix: str) -> list[str]:
    """Deletes the queues and exchanges of ``prefix``; returns the queues that are still there."""
    with Connection(broker_url) as broker:
        channel = broker.channel()
        for name in queue_names(prefix):
            with contextlib.suppress(Exception):
                channel.queue_delete(name)
        for name in (prefix, f"{prefix}.events", f"{prefix}.dead", f"{prefix}.pidbox", f"reply.{prefix}.pidbox"):
            with contextlib.suppress(Exception):
                channel.exchange_delete(name)
        left = [name for name, depth in queue_depths(broker, queue_names(prefix)).items() if depth is not None]
    if shutil.which("rabbitmqctl"):
        listed = subprocess.run(
            ["rabbitmqctl", "-q", "list_queues", "name"], capture_output=True, text=True, timeout=60, check=False
        )
        left += [name for name in listed.stdout.split() if name.startswith(f"{prefix}.") and name not in left]
    return left


@contextlib.contextmanager
def grpod_up(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        up = subprocess.Popen([*GRPOD, "up"], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield up
    finally:
        if up.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(up.pid, signal.SIGKILL)
            up.wait(timeout=30)


def load_queries(domains: int) -> tuple[dict[str, list[str]], dict[str, str]]:
    rows = [json.loads(line) for line in PARAPHRASES.read_text().splitlines() if line.strip()]
    names = sorted({row["domain"] for row in rows})[:domains]
    queries: dict[str, list[str]] = {name: [] for name in names}
    intent_of_query: dict[str, str] = {}
    for row in rows:
        if row["domain"] in queries:
            queries[row["domain"]].append(row["query"])
            intent_of_query[row["query"].strip()] = row["intent"]
    return queries, intent_of_query


def plot(
    path: Path, samples: Sequence[Mapping[str, Any]], lags: Sequence[Mapping[str, Any]], title: str, end: float
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [s["t"] / 60 for s in samples]
    figure, axes = plt.subplots(4, 1, figsize=(9, 11), sharex=True)
    figure.suptitle(title, fontsize=10)

    rated = [s for s in samples if "stored_per_s" in s]
    axes[0].plot([s["t"] / 60 for s in rated], [s["published_per_s"] for s in rated], label="published", lw=1)
    axes[0].plot([s["t"] / 60 for s in rated], [s["stored_per_s"] for s in rated], label="stored", lw=1)
    axes[0].set_ylabel("events/s")
    axes[0].legend(loc="upper right", fontsize=8)

    queues = sorted({name for s in samples for name, depth in s["queues"].items() if depth})
    for name in queues:
        axes[1].plot(minutes, [s["queues"].get(name) or 0 for s in samples], label=name.split(".", 1)[1], lw=1)
    axes[1].set_ylabel("queue depth (messages)")
    if queues:
        axes[1].legend(loc="upper right", fontsize=8, ncol=3)

    roles = sorted({role for s in samples for role in s["rss_mib"]}, key=lambda r: (r.startswith("postgres"), r))
    for role in roles:
        axes[2].plot(minutes, [s["rss_mib"].get(role, float("nan")) for s in samples], label=role, lw=1)
    axes[2].plot(minutes, [sum(s["pss_mib"].values()) for s in samples], label="total (PSS)", lw=1.5, color="black")
    axes[2].set_ylabel("RSS (MiB)")
    axes[2].legend(loc="upper center", bbox_to_anchor=(0.5, 0.85), fontsize=7, ncol=5)

    if lags:
        x = [lag["at"] / 60 for lag in lags]
        axes[3].scatter(x, [lag["p50"] for lag in lags], s=6, label="median of the version's traces")
        axes[3].scatter(x, [lag["max"] for lag in lags], s=6, marker="x", label="oldest of its traces")
        axes[3].legend(loc="upper right", fontsize=8)
    axes[3].set_ylabel("trace stored -> version (s)")
    axes[3].set_xlabel("minutes since the stream started")
    for axis in axes:
        axis.grid(alpha=0.3)
        axis.axvline(end / 60, color="grey", ls="--", lw=0.8)  # the stream ends, the drain begins
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=72)
    plt.close(figure)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the stream")
    parser.add_argument("--rate", type=float, default=20.0, help="events published per second")
    parser.add_argument("--bad-share", type=float, default=0.03, help="share of bad events over plain AMQP")
    parser.add_argument("--domains", type=int, default=4, help="domains (at most 4, from the paraphrase set)")
    parser.add_argument("--llm-latency", type=float, default=0.2, help="seconds per scripted LLM answer")
    parser.add_argument("--update-window-seconds", type=float, default=20.0)
    parser.add_argument("--warmup-minutes", type=float, default=2.0)
    parser.add_argument("--max-growth-mib", type=float, default=64.0, help="bound on a grpod process's RSS growth")
    parser.add_argument("--max-total-mib", type=float, default=2048.0, help="bound on the tree's total PSS")
    parser.add_argument("--broker-url", default=os.environ.get("GRPOD_TEST_RABBITMQ_URL", DEFAULT_RABBITMQ_URL))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--keep-home", action="store_true", help="keep GRPOD_HOME (its log and database)")
    args = parser.parse_args()

    run = f"soak-{uuid.uuid4().hex[:8]}"
    home = Path(tempfile.mkdtemp(prefix=f"grpod-{run}-"))
    log = home / "up.log"
    queries, intent_of_query = load_queries(args.domains)
    teacher = Teacher(intent_of_query)
    script: dict[str, Any] = {
        "summary": teacher.summary,
        "advantage": teacher.advantage,
        "operations": teacher.operations,
        "consolidation": teacher.consolidation,
    }
    env = {name: value for name, value in os.environ.items() if not name.startswith("GRPOD_")}
    failures: list[str] = []
    figures: dict[str, Any] = {}
    console.print(f"[bold]soak[/] {run}: {args.minutes:g} min at {args.rate:g} events/s; GRPOD_HOME={home}")

    with ScriptedEndpoint(script, latency=args.llm_latency) as endpoint:
        env |= {
            "GRPOD_HOME": str(home),
            "GRPOD_BROKER_URL": args.broker_url,
            "GRPOD_QUEUE_PREFIX": run,
            "GRPOD_LLM_BASE_URL": endpoint.url,
            "GRPOD_LLM_MODEL": "scripted",
            "GRPOD_LOG_FORMAT": "json",
            "GRPOD_API_PORT": "0",  # the soak measures the pipeline; the HTTP API is not under load
        }
        launched = time.monotonic()
        try:
            with grpod_up(env, log) as up:
                database_url = wait_for("the 'grpod is up' line", lambda: database_url_from_log(log), 180)
                wait_for(
                    "the ingest consumer to consume",
                    lambda: one_row(
                        database_url,
                        "SELECT count(*) FROM heartbeats WHERE role = 'ingest' AND state = 'consuming' "
                        "AND seen_at > now() - interval '15 seconds'",
                    )[0],
                    180,
                )
                console.print(f"grpod up is consuming after {time.monotonic() - launched:.1f} s (pid {up.pid})")
                try:
                    figures = soak(args, run, env, home, database_url, up, queries, failures, endpoint)
                except SoakAbortedError as error:
                    console.print(f"[bold red]FAIL[/] {error}; GRPOD_HOME kept: {home}")
                    return 1
                up.send_signal(signal.SIGTERM)
                stopping = time.monotonic()
                try:
                    code = up.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    code = None
                figures["stop_seconds"] = round(time.monotonic() - stopping, 1)
                figures["exit_code"] = code
                if code != 0:
                    failures.append(f"grpod up exited with {code} after SIGTERM")
                if (home / "pgdata" / "postmaster.pid").exists():
                    failures.append("the embedded PostgreSQL is still running after grpod up stopped")
        finally:
            figures["dead_letters"] = dead_letters(args.broker_url, run)
            left = delete_broker_objects(args.broker_url, run)
            if left:
                failures.append(f"queues left on the broker: {left}")

    report(figures, failures, args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak.json").write_text(json.dumps(figures, default=str))
    title = (
        f"grpod soak: {args.minutes:g} min, {args.rate:g} events/s, {args.domains} domains, "
        f"scripted LLM ({args.llm_latency:g} s)"
    )
    plot(args.out / "soak.png", figures["samples"], figures["lag"]["versions"], title, figures["stream_seconds"])
    console.print(f"wrote {args.out / 'soak.json'} and {args.out / 'soak.png'}")
    if failures or args.keep_home:
        console.print(f"GRPOD_HOME kept for inspection: {home}")
    else:
        shutil.rmtree(home, ignore_errors=True)
    return 1 if failures else 0


def soak(
    args: argparse.Namespace,
    run: str,
    env: dict[str, str],
    home: Path,
    database_url: str,
    up: subprocess.Popen[bytes],
    queries: Mapping[str, Sequence[str]],
    failures: list[str],
    endpoint: ScriptedEndpoint,
) -> dict[str, Any]:
    production: dict[str, int] = {}
    settings = ClientSettings(broker_url=args.broker_url, queue_prefix=run)
    with (
        Client(settings) as client,
        Connection(args.broker_url, transport_options={"confirm_publish": True}) as amqp,
    ):
        producer = Producer(amqp.channel(), exchange=events_exchange(run), routing_key=EVENTS_ROUTING_KEY)
        stream = Stream(client, producer, queries, args.rate, args.bad_share, run, production, args.seed)

        # The domains first (one trace each), then their settings, then the clock starts.
        stream.seed_domains(time.monotonic())
        stream.tick(0.0, time.monotonic(), producing=False)
        wanted = len(queries)
        wait_for(
            "the domains",
            lambda: one_row(database_url, "SELECT count(*) FROM domains")[0] >= wanted,
            60,
            0.2,
        )
        setters = [
            subprocess.Popen(
                [
                    *GRPOD,
                    "domain",
                    "set",
                    domain,
                    "--update-window-seconds",
                    f"{args.update_window_seconds:g}",
                    "--close-distance",
                    "0.6",
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            for domain in sorted(queries)
        ]
        for setter in setters:
            _, error = setter.communicate(timeout=120)
            if setter.returncode != 0:
                raise RuntimeError(f"grpod domain set failed: {error.decode(errors='replace')}")

        started = time.monotonic()
        started_at = datetime.now(UTC)
        sampler = Sampler(database_url, args.broker_url, run, up.pid, home / "pgdata", stream, production, started)
        sampler.start()
        duration = args.minutes * 60
        console.print(f"streaming for {args.minutes:g} min ...")
        last_note = 0.0
        while (elapsed := time.monotonic() - started) < duration:
            if up.poll() is not None:
                sampler.stop.set()
                raise SoakAbortedError(
                    f"grpod up exited with {up.returncode} during the stream; its log: {home / 'up.log'}"
                )
            stream.tick(elapsed, time.monotonic(), producing=True)
            if elapsed - last_note >= 60:
                last_note = elapsed
                latest = sampler.samples[-1] if sampler.samples else {}
                console.print(
                    f"  {elapsed / 60:4.1f} min: published {stream.ledger.total():,}, "
                    f"versions {latest.get('versions', 0)}, "
                    f"total PSS {sum(latest.get('pss_mib', {}).values()):,.0f} MiB"
                )
            time.sleep(TICK_SECONDS)
        stream_seconds = time.monotonic() - started
        never = stream.drop_pending()
        ledger = stream.ledger

        # Drain: every published event stored (or rejected), the events queue empty.
        def drained() -> bool:
            row = one_row(
                database_url,
                "SELECT (SELECT count(*) FROM traces), (SELECT count(*) FROM rewards), "
                "(SELECT count(*) FROM rejected_events)",
            )
            wanted = (len(ledger.traces), len(ledger.rewards), sum(ledger.rejected.values()))
            events_depth = sampler.samples[-1]["queues"].get(f"{run}.events") if sampler.samples else None
            return tuple(row) == wanted and events_depth == 0

        drain_started = time.monotonic()
        try:
            wait_for("the events to drain", drained, 180)
        except AssertionError as error:  # wait_for's timeout
            failures.append(str(error))
        drain_seconds = time.monotonic() - drain_started
        time.sleep(SAMPLE_SECONDS)  # one more sample after the drain
        sampler.stop.set()
        sampler.join(timeout=30)

    with psycopg.connect(database_url, autocommit=True) as conn:
        figures = results(conn, args, sampler.samples, ledger, started_at, failures)
    figures |= {
        "run": run,
        "stream_seconds": round(stream_seconds, 1),
        "drain_seconds": round(drain_seconds, 1),
        "scheduled_never_published": dict(never),
        "sampler_errors": sampler.errors,
        "llm_requests": dict(Counter(endpoint.calls)),
        "llm_max_in_flight": endpoint.max_in_flight,
        "process_names": {str(pid): name for pid, name in sampler.names.names.items()},
        "tasks": task_times(home / "up.log"),
    }
    return figures


def results(
    conn: psycopg.Connection[Any],
    args: argparse.Namespace,
    samples: list[dict[str, Any]],
    ledger: Ledger,
    started_at: datetime,
    failures: list[str],
) -> dict[str, Any]:
    # Exactly once -------------------------------------------------------------------------------
    traces = {row[0] for row in conn.execute("SELECT trace_id FROM traces").fetchall()}
    rewards = {(row[0], row[1]) for row in conn.execute("SELECT trace_id, source FROM rewards").fetchall()}
    rejected = Counter(
        (hashlib.sha256(bytes(payload)).hexdigest(), reason)
        for payload, reason in conn.execute("SELECT payload, reason FROM rejected_events").fetchall()
    )
    lost_traces = ledger.traces - traces
    extra_traces = traces - ledger.traces
    lost_rewards = ledger.rewards - rewards
    extra_rewards = rewards - ledger.rewards
    missing_rejected = ledger.rejected - rejected
    unexpected_rejected = rejected - ledger.rejected
    for what, found in (
        ("traces lost", lost_traces),
        ("traces stored that were not published", extra_traces),
        ("rewards lost", lost_rewards),
        ("rewards stored that were not published", extra_rewards),
        ("bad events not in the rejected store with their reason", missing_rejected),
        ("rejected events that should not be there", unexpected_rejected),
    ):
        if found:
            failures.append(f"{len(found)} {what}: {sorted(found)[:5]}")
    reasons = Counter(reason for _, reason in ledger.rejected.elements())
    stored_reasons = dict(conn.execute("SELECT reason, count(*) FROM rejected_events GROUP BY reason").fetchall())

    # Lag from a trace to the version that learned from it ---------------------------------------
    rows = conn.execute(LAG_SQL).fetchall()
    by_version: dict[tuple[str, int], list[tuple[datetime, float, float | None]]] = {}
    for domain, version, created_at, received_at, rewarded_at in rows:
        from_reward = (created_at - rewarded_at).total_seconds() if rewarded_at else None
        by_version.setdefault((domain, version), []).append(
            (created_at, (created_at - received_at).total_seconds(), from_reward)
        )
    from_trace = [lag for entries in by_version.values() for _, lag, _ in entries]
    from_reward = [lag for entries in by_version.values() for _, _, lag in entries if lag is not None]
    versions_lag = [
        {
            "domain": domain,
            "version": version,
            "at": (entries[0][0] - started_at).total_seconds(),
            "traces": len(entries),
            "p50": statistics.median(lag for _, lag, _ in entries),
            "max": max(lag for _, lag, _ in entries),
        }
        for (domain, version), entries in sorted(by_version.items(), key=lambda item: item[1][0][0])
    ]

    # The pipeline -------------------------------------------------------------------------------
    distillations = dict(conn.execute("SELECT status, count(*) FROM distillations GROUP BY status").fetchall())
    versions = dict(conn.execute("SELECT domain, count(*) FROM library_versions GROUP BY domain").fetchall())
    library_sizes = dict(
        conn.execute(
            "SELECT v.domain, jsonb_array_length(v.experiences) FROM library_labels l "
            "JOIN library_versions v ON v.domain = l.domain AND v.version = l.version WHERE l.label = 'production'"
        ).fetchall()
    )
    largest = dict(
        conn.execute(
            "SELECT domain, max(jsonb_array_length(experiences)) FROM library_versions GROUP BY domain"
        ).fetchall()
    )
    refused = conn.execute("SELECT count(*) FROM library_events WHERE action = 'refuse'").fetchone()
    rollbacks = conn.execute("SELECT count(*) FROM library_events WHERE action = 'rollback'").fetchone()
    llm = conn.execute("SELECT purpose, count(*), sum(tokens_in), sum(tokens_out) FROM llm_calls GROUP BY purpose")
    llm_calls = {purpose: {"calls": n, "tokens_in": i, "tokens_out": o} for purpose, n, i, o in llm.fetchall()}
    groups = conn.execute("SELECT count(*), count(*) FILTER (WHERE ready_at IS NOT NULL) FROM groups").fetchone()
    ungrouped = conn.execute("SELECT count(*) FROM traces WHERE group_id IS NULL").fetchone()

    # Rates and memory ---------------------------------------------------------------------------
    duration = args.minutes * 60
    in_stream = [s for s in samples if "stored_per_s" in s and s["t"] <= duration + 1]
    warmup = args.warmup_minutes * 60
    end = max((s["t"] for s in samples if s["t"] <= duration + 1), default=0.0)
    roles = sorted({role for s in samples for role in s["rss_mib"]})
    memory: dict[str, dict[str, float | None]] = {}
    for role in roles:
        series = [s["rss_mib"][role] for s in samples if role in s["rss_mib"]]
        after_warmup = window_median(samples, role, warmup, warmup + 60)
        at_end = window_median(samples, role, end - 60, end)
        memory[role] = {
            "start": series[0],
            "after_warmup": after_warmup,
            "end": at_end,
            "max": max(series),
            "growth": at_end - after_warmup if at_end is not None and after_warmup is not None else None,
        }
    totals = [sum(s["pss_mib"].values()) for s in samples]
    grpod_roles = [r for r in roles if not r.startswith("postgres")]
    worst = max(
        ((memory[r]["growth"] or 0.0, r) for r in grpod_roles if memory[r]["growth"] is not None),
        default=(0.0, "none"),
    )
    bound_held = worst[0] < args.max_growth_mib and max(totals, default=0.0) < args.max_total_mib
    if not bound_held:
        failures.append(
            f"memory bound broken: largest growth {worst[0]:.1f} MiB ({worst[1]}), "
            f"largest total PSS {max(totals, default=0.0):.0f} MiB"
        )
    queue_max: dict[str, int] = {}
    for s in samples:
        for name, depth in s["queues"].items():
            queue_max[name] = max(queue_max.get(name, 0), depth or 0)

    return {
        "settings": {
            "minutes": args.minutes,
            "rate": args.rate,
            "bad_share": args.bad_share,
            "domains": args.domains,
            "llm_latency": args.llm_latency,
            "update_window_seconds": args.update_window_seconds,
            "warmup_minutes": args.warmup_minutes,
            "max_growth_mib": args.max_growth_mib,
            "max_total_mib": args.max_total_mib,
        },
        "published": dict(ledger.published),
        "expected": {
            "traces": len(ledger.traces),
            "rewards": len(ledger.rewards),
            "duplicates": ledger.duplicates,
            "rejected": dict(reasons),
        },
        "stored": {"traces": len(traces), "rewards": len(rewards), "rejected": stored_reasons},
        "exactly_once": not (
            lost_traces or extra_traces or lost_rewards or extra_rewards or missing_rejected or unexpected_rejected
        ),
        "stored_per_s": {
            "mean": statistics.fmean(s["stored_per_s"] for s in in_stream) if in_stream else None,
            "median": statistics.median(s["stored_per_s"] for s in in_stream) if in_stream else None,
            "published_mean": statistics.fmean(s["published_per_s"] for s in in_stream) if in_stream else None,
        },
        "queue_max": queue_max,
        "memory_mib": memory,
        "total_pss_mib": {"start": totals[0] if totals else None, "max": max(totals, default=None)},
        "memory_bound": {"held": bound_held, "largest_growth_mib": worst[0], "largest_growth_role": worst[1]},
        "lag": {
            "traces": len(from_trace),
            "from_trace_stored": {
                "p50": percentile(from_trace, 0.5),
                "p90": percentile(from_trace, 0.9),
                "max": max(from_trace, default=float("nan")),
            },
            "from_last_reward": {
                "p50": percentile(from_reward, 0.5),
                "p90": percentile(from_reward, 0.9),
                "max": max(from_reward, default=float("nan")),
            },
            "versions": versions_lag,
        },
        "versions": versions,
        "library_sizes": library_sizes,
        "largest_library": largest,
        "refused_versions": refused[0] if refused else 0,
        "rollbacks": rollbacks[0] if rollbacks else 0,
        "distillations": distillations,
        "llm_calls": llm_calls,
        "groups": {"total": groups[0], "ever_ready": groups[1]} if groups else {},
        "ungrouped_traces": ungrouped[0] if ungrouped else 0,
        "samples": samples,
    }


def report(figures: Mapping[str, Any], failures: Sequence[str], args: argparse.Namespace) -> None:
    published = figures.get("published", {})
    expected = figures.get("expected", {})
    stored = figures.get("stored", {})
    lag = figures.get("lag", {})

    table = Table(title=f"grpod soak ({figures.get('run')})", show_header=True)
    table.add_column("measure")
    table.add_column("result", justify="right")
    rows: list[tuple[str, str]] = [
        (
            "stream / drain after it",
            f"{figures.get('stream_seconds', 0):.0f} s / {figures.get('drain_seconds', 0):.0f} s",
        ),
        ("events published", f"{sum(published.values()):,}"),
        (
            "  traces / rewards / duplicates / conflicts / bad",
            " / ".join(f"{published.get(k, 0):,}" for k in ("trace", "reward", "duplicate", "conflict", "bad")),
        ),
        (
            "traces stored / expected",
            f"{stored.get('traces', 0):,} / {expected.get('traces', 0):,}",
        ),
        (
            "rewards stored / expected",
            f"{stored.get('rewards', 0):,} / {expected.get('rewards', 0):,}",
        ),
        (
            "rejected stored / expected",
            f"{sum(stored.get('rejected', {}).values()):,} / {sum(expected.get('rejected', {}).values()):,}",
        ),
        (
            "  by reason",
            ", ".join(f"{reason} {count}" for reason, count in sorted(stored.get("rejected", {}).items())),
        ),
        ("every event stored exactly once, every bad one rejected", "yes" if figures.get("exactly_once") else "NO"),
        (
            "events stored/s (mean / median of 5 s samples)",
            f"{figures['stored_per_s']['mean']:.1f} / {figures['stored_per_s']['median']:.1f}"
            if figures.get("stored_per_s", {}).get("mean") is not None
            else "-",
        ),
    ]
    for name, depth in figures.get("queue_max", {}).items():
        rows.append((f"max depth of {name.split('.', 1)[1]}", f"{depth:,}"))
    for role, values in figures.get("memory_mib", {}).items():
        shown = [values.get(key) for key in ("start", "after_warmup", "end", "max")]
        growth = values.get("growth")
        rows.append(
            (
                f"RSS {role} (start / warm / end / max, MiB)",
                " / ".join("-" if v is None else f"{v:,.0f}" for v in shown)
                + ("" if growth is None else f"  ({growth:+.1f})"),
            )
        )
    totals = figures.get("total_pss_mib", {})
    if totals.get("max") is not None:
        rows.append(("total PSS, whole tree (start / max, MiB)", f"{totals['start']:,.0f} / {totals['max']:,.0f}"))
    for name, key in (("trace stored", "from_trace_stored"), ("last reward", "from_last_reward")):
        values = lag.get(key, {})
        if values:
            rows.append(
                (
                    f"lag {name} -> version (p50 / p90 / max)",
                    f"{values['p50']:.1f} s / {values['p90']:.1f} s / {values['max']:.1f} s",
                )
            )
    versions = figures.get("versions", {})
    rows += [
        ("traces learned from", f"{lag.get('traces', 0):,}"),
        (
            "library versions published",
            f"{sum(versions.values()):,} ({', '.join(f'{d} {n}' for d, n in sorted(versions.items()))})",
        ),
        (
            "production library size at the end (largest ever)",
            ", ".join(
                f"{d} {n} ({figures.get('largest_library', {}).get(d)})"
                for d, n in sorted(figures.get("library_sizes", {}).items())
            ),
        ),
        ("distillations by status", ", ".join(f"{s} {n}" for s, n in sorted(figures.get("distillations", {}).items()))),
        ("LLM calls", ", ".join(f"{p} {v['calls']:,}" for p, v in sorted(figures.get("llm_calls", {}).items()))),
        ("refused versions / rollbacks", f"{figures.get('refused_versions', 0)} / {figures.get('rollbacks', 0)}"),
        ("grpod up stopped by SIGTERM", f"exit {figures.get('exit_code')} in {figures.get('stop_seconds', 0):.1f} s"),
    ]
    tasks = figures.get("tasks", {})
    busy = sum(entry["seconds"] for entry in tasks.values())
    wall = figures.get("stream_seconds", 0) + figures.get("drain_seconds", 0)
    pools = len([name for name in figures.get("memory_mib", {}) if name.startswith("pool-")]) or 1
    if tasks and wall:
        rows.append((f"pool busy ({pools} processes)", f"{busy:,.0f} s of {wall * pools:,.0f} s"))
    for name, entry in sorted(tasks.items(), key=lambda item: -item[1]["seconds"]):
        sent = f"sent by beat {entry['sent_by_beat']:.0f}, " if entry["sent_by_beat"] else ""
        rows.append(
            (
                f"  {name.removeprefix('grpod.')}",
                f"{sent}received {entry['received']:,.0f}, ran {entry['succeeded']:,.0f}, {entry['seconds']:,.0f} s",
            )
        )
    dead = Counter(f"{d['task'] or 'event'} ({d['reason']} in {d['died_in']})" for d in figures.get("dead_letters", []))
    rows.append(("dead-lettered", ", ".join(f"{n} {what}" for what, n in sorted(dead.items())) or "none"))
    for measure, result in rows:
        table.add_row(measure, result)
    console.print(table)
    bound = figures.get("memory_bound", {})
    verdict = "PASS" if bound.get("held") else "FAIL"
    console.print(
        f"memory bound: after {args.warmup_minutes:g} min of warm-up no grpod process grows by "
        f"{args.max_growth_mib:g} MiB or more (largest: {bound.get('largest_growth_mib', 0):+.1f} MiB, "
        f"{bound.get('largest_growth_role')}), and the whole tree stays under {args.max_total_mib:,.0f} MiB PSS "
        f"(largest: {totals.get('max') or 0:,.0f} MiB): [bold]{verdict}[/]"
    )
    if figures.get("sampler_errors"):
        console.print(f"samples missed: {len(figures['sampler_errors'])} ({figures['sampler_errors'][:3]})")
    for failure in failures:
        console.print(f"[red]FAIL[/] {failure}")
    console.print("[bold green]PASS[/]" if not failures else "[bold red]FAIL[/]")


if __name__ == "__main__":
    sys.exit(main())
