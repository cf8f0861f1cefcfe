"""`grpod demo`: the whole loop on the embedded default, in one process, in a few minutes.

1. Agents of two domains stream their traces through the SDK into the embedded broker; rewards
   come late and some before their trace.
2. The ingest consumer stores them; grouping embeds the queries and forms groups of similar ones.
3. Ready groups are distilled with the configured LLM (the bundled SmolLM2 by default) and each
   domain publishes a library version (publish policy ``auto``).
4. The agents fetch their library through the SDK's cache and run with it; their traces name the
   version, their rewards come in, and grouping and distillation make version 2 of ``support``.
5. Version 2 does worse on live traffic than version 1: the judge rolls production back, and the
   audit log says why, with the statistics.

Everything runs in a fresh ``GRPOD_HOME/demo`` (embedded PostgreSQL with pgvector, file broker),
through the same code paths as the service: the SDK, the ingest consumer, the grouping and
distillation stores, the library store and its judge.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from grpod.daemon.demo_data import DOMAINS, demo_stream
from grpod.daemon.settings import Settings

DEMO_FOLDER = "demo"
TIME_GOAL_SECONDS = 600
# The demo's traffic is small: the judge looks after 20 rewarded traces instead of 30.
DEMO_DOMAIN_SETTINGS = {"rollback_min_traces": 20, "promotion_min_traces": 20}
REGRESSED_DOMAIN = "support"
SECOND_WAVE_TOPICS = 2


@dataclass
class DemoReport:
    events_sent: int = 0
    traces: int = 0
    rewards: int = 0
    rejected: int = 0
    groups: int = 0
    distillations: int = 0
    failed_distillations: int = 0
    llm_calls: Counter[str] = field(default_factory=Counter)
    tokens_in: int = 0
    tokens_out: int = 0
    versions: dict[str, list[int]] = field(default_factory=dict)
    rollback: dict[str, Any] | None = None
    libraries: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0
    model: str = ""
    bundled_model: bool = True


def topic_of(trace_id: str) -> str:
    """The demo's trace ids are ``<domain>-<topic>-<n>``."""
    return trace_id.rsplit("-", 1)[0]


def wave(
    events: Sequence[dict[str, Any]],
    suffix: str,
    *,
    topics: set[str],
    library_version: int,
    reward: Callable[[float], float] = lambda value: value,
) -> list[dict[str, Any]]:
    """More traffic on some topics: new trace ids, the library version the agents ran with, and
    rewards (mapped by ``reward``) after their traces."""
    traces, rewards = [], []
    for event in events:
        if topic_of(event["trace_id"]) not in topics:
            continue
        renamed = event | {"trace_id": f"{event['trace_id']}-{suffix}"}
        if event["type"] == "trace":
            traces.append(renamed | {"library_version": library_version})
        else:
            rewards.append(renamed | {"value": reward(float(event["value"]))})
    return traces + rewards


def run_demo(settings: Settings, console: Console) -> DemoReport:
    """Run the demo in ``settings.home / demo`` (made afresh) and return what happened."""
    from grpod.daemon.embedded import embedded_database
    from grpod.daemon.migrations import migrate
    from grpod.daemon.ports import embedder_from_settings, llm_from_settings

    started = time.monotonic()
    home = settings.home / DEMO_FOLDER
    shutil.rmtree(home, ignore_errors=True)
    demo = settings.model_copy(update={"home": home, "database_url": None, "broker_url": None})
    report = DemoReport(bundled_model=settings.llm_base_url is None)
    console.print(f"[bold]grpod demo[/bold] in {home}: embedded PostgreSQL with pgvector, file broker")
    database = embedded_database(demo)
    try:
        migrate(database.url)
        embedder = embedder_from_settings(demo)
        llm = llm_from_settings(demo)
        report.model = llm.model
        stream = demo_stream()
        # Two topics of ``support`` come up only once agents run with version 1: what they teach
        # is new to its library, so version 2 is learned whatever the model writes about the rest.
        topics = sorted({topic_of(e["trace_id"]) for e in stream if e.get("domain") == REGRESSED_DOMAIN})
        later = set(topics[-SECOND_WAVE_TOPICS:])
        first = [event for event in stream if topic_of(event["trace_id"]) not in later]
        with _progress(console) as progress, psycopg.connect(database.url, autocommit=True) as conn:
            _stream(demo, database.url, first, "[1/5] agents stream traces and late rewards", progress, report)
            for domain in DOMAINS:
                _set_demo_settings(conn, domain)
            for domain in DOMAINS:
                _learn(conn, llm, embedder, domain, f"[2/5] {domain}: group and distill", progress, report)

            from grpod.sdk.library_cache import LibraryCache

            with LibraryCache(database.url) as libraries:
                libraries.wait_listening()
                v1 = libraries.get(REGRESSED_DOMAIN).version
                second = wave(stream, "v1", topics=later, library_version=v1)
                _stream(demo, database.url, second, f"[3/5] agents run with version {v1}", progress, report)
                _learn(conn, llm, embedder, REGRESSED_DOMAIN, "[4/5] learn from their rewards", progress, report)
                v2 = _wait_for_version(libraries, REGRESSED_DOMAIN, v1)
                if v2 == v1:  # nothing was learned: there is no version 2 to judge (the report says so)
                    _collect(conn, report)
                    return _finish(report, started)
                # Version 2 turns out worse on live traffic (simulated: most of its answers fail).
                third = [
                    *wave(stream, "v2a", topics=later, library_version=v2, reward=lambda _: 0.0),
                    *wave(stream, "v2b", topics=later, library_version=v2, reward=lambda v: 0.5 if v > 0.9 else 0.0),
                ]
                _stream(demo, database.url, third, f"[5/5] agents run with version {v2}", progress, report)
                report.rollback = _judge(conn, REGRESSED_DOMAIN)
            _collect(conn, report)
    finally:
        database.release()
    return _finish(report, started)


def _finish(report: DemoReport, started: float) -> DemoReport:
    report.seconds = time.monotonic() - started
    return report


@contextmanager
def _progress(console: Console) -> Iterator[Progress]:
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        yield progress


def _set_demo_settings(conn: psycopg.Connection[Any], domain: str) -> None:
    from grpod.workers.grouping_store import domain_state, set_settings

    set_settings(conn, domain, domain_state(conn, domain).settings, DEMO_DOMAIN_SETTINGS)


def _stream(
    settings: Settings,
    database_url: str,
    events: Sequence[dict[str, Any]],
    title: str,
    progress: Progress,
    report: DemoReport,
) -> None:
    """Publish through the SDK, one event at a time as agents would, then let the consumer store them."""
    from grpod.daemon.ingest import consumer_from_settings
    from grpod.sdk import Client

    task = progress.add_task(title, total=len(events))
    with Client(settings) as client:
        for event in events:
            client.record_batch([event])
            progress.advance(task)
    report.events_sent += len(events)
    stored = progress.add_task("      ingest consumer stores them", total=len(events))
    consumer = consumer_from_settings(settings, database_url)
    stop = threading.Event()
    thread = threading.Thread(target=consumer.run, args=(stop,), kwargs={"idle_exit": 1.0})
    thread.start()
    while thread.is_alive():
        totals = consumer.totals
        progress.update(stored, completed=totals.accepted + totals.duplicates + sum(totals.rejected.values()))
        thread.join(timeout=0.2)
    totals = consumer.totals
    progress.update(stored, completed=len(events))
    report.rejected += sum(totals.rejected.values())


def _learn(
    conn: psycopg.Connection[Any],
    llm: Any,
    embedder: Any,
    domain: str,
    title: str,
    progress: Progress,
    report: DemoReport,
) -> None:
    """Group the domain's new traces, distill its ready groups, publish: what the workers do."""
    from grpod.daemon import distill_domain

    task = progress.add_task(f"{title}", total=None)

    def say(what: str) -> None:
        progress.update(task, description=f"{title}: {what}")

    run = distill_domain.distill_domain(conn, lambda: llm, lambda: embedder, domain, progress=say)
    progress.update(task, total=1, completed=1, description=f"{title}: {len(run.distillations)} groups distilled")
    report.groups += run.grouped.new_groups
    for distillation in run.distillations:
        report.distillations += distillation.status == "distilled"
        report.failed_distillations += distillation.status == "failed"
        _count_calls(report, distillation.calls)
    if run.window is not None:
        _count_calls(report, run.window.calls)


def _count_calls(report: DemoReport, calls: Sequence[Any]) -> None:
    for call in calls:
        if not call.replayed:
            report.llm_calls[call.purpose] += 1
            report.tokens_in += call.tokens_in
            report.tokens_out += call.tokens_out


def _wait_for_version(libraries: Any, domain: str, older: int) -> int:
    """The version agents now fetch (refreshed by NOTIFY when the label moved)."""
    deadline = time.monotonic() + 5
    version: int = libraries.get(domain).version
    while version == older and time.monotonic() < deadline:
        time.sleep(0.05)
        version = libraries.get(domain).version
    return version


def _judge(conn: psycopg.Connection[Any], domain: str) -> dict[str, Any] | None:
    from grpod.workers import library_store

    for judgement in library_store.judge_domain(conn, domain):
        if judgement.acted and judgement.verdict.decision == "rollback":
            verdict = judgement.verdict
            return {
                "domain": domain,
                "from": judgement.version,
                "to": library_store.labels(conn, domain).get("production"),
                "reason": verdict.reason,
                "tested": verdict.tested,
                "reference": verdict.reference,
            }
    return None


def _collect(conn: psycopg.Connection[Any], report: DemoReport) -> None:
    from grpod.daemon import library_admin

    row = conn.execute("SELECT (SELECT count(*) FROM traces), (SELECT count(*) FROM rewards)").fetchone()
    assert row is not None
    report.traces, report.rewards = int(row[0]), int(row[1])
    for domain in DOMAINS:
        report.versions[domain] = [entry["version"] for entry in reversed(library_admin.history(conn, domain))]
        report.libraries[domain] = library_admin.show(conn, domain)


def report_json(report: DemoReport) -> dict[str, Any]:
    rollback = dict(report.rollback) if report.rollback is not None else None
    for key in ("tested", "reference"):
        if rollback is not None and key in rollback:
            rollback[key] = {"traces": rollback[key].traces, "mean": rollback[key].mean}
    return {
        "events": report.events_sent,
        "traces": report.traces,
        "rewards": report.rewards,
        "rejected": report.rejected,
        "groups": report.groups,
        "distillations": report.distillations,
        "failed_distillations": report.failed_distillations,
        "llm_calls": dict(report.llm_calls),
        "tokens_in": report.tokens_in,
        "tokens_out": report.tokens_out,
        "model": report.model,
        "versions": report.versions,
        "rollback": rollback,
        "libraries": report.libraries,
        "seconds": round(report.seconds, 1),
    }


def print_report(report: DemoReport, console: Console) -> None:
    table = Table("", "", title="grpod demo", show_header=False)
    table.add_row(
        "events in",
        f"{report.events_sent} ({report.traces} traces, {report.rewards} rewards, {report.rejected} rejected)",
    )
    table.add_row("groups", str(report.groups))
    failed = (
        f", {report.failed_distillations} failed (retried later by the sweep)" if report.failed_distillations else ""
    )
    table.add_row("distillations", f"{report.distillations}{failed}")
    calls = ", ".join(f"{count} {purpose}" for purpose, count in sorted(report.llm_calls.items()))
    table.add_row("LLM calls", f"{sum(report.llm_calls.values())} ({calls}) with {report.model}")
    table.add_row("tokens", f"{report.tokens_in:,} in, {report.tokens_out:,} out")
    for domain, versions in report.versions.items():
        production = report.libraries[domain]["version"]
        table.add_row(f"versions of {domain}", f"{', '.join(map(str, versions)) or 'none'}; production: {production}")
    if report.rollback is not None:
        rollback = report.rollback
        tested, reference = rollback["tested"], rollback["reference"]
        table.add_row(
            "automatic rollback",
            f"{rollback['domain']}: version {rollback['from']} -> {rollback['to']}: mean reward {tested.mean:.2f} on "
            f"{tested.traces} traces vs {reference.mean:.2f} on {reference.traces}: {rollback['reason']}",
        )
    else:
        table.add_row("automatic rollback", "none: version 2 was not shown worse (see `grpod library history`)")
    minutes, seconds = divmod(int(report.seconds), 60)
    goal = "within" if report.seconds < TIME_GOAL_SECONDS else "over"
    table.add_row("time", f"{minutes} min {seconds} s ({goal} the 10-minute goal)")
    console.print(table)
    for domain, library in report.libraries.items():
        console.print(f"\n[bold]{domain}[/bold] production library, version {library['version']}:")
        for experience in library["experiences"] or [{"id": "-", "text": "(no experiences)"}]:
            console.print(f"  [{experience['id']}] {experience['text']}", markup=False)
    if report.bundled_model:
        console.print(
            "\nThese experiences come from the bundled SmolLM2-135M, which proves the pipeline end to end but is "
            "too small to learn good rules. A real model does much better: set GRPOD_LLM_BASE_URL, GRPOD_LLM_MODEL "
            "and GRPOD_LLM_API_KEY to any OpenAI-compatible endpoint (DeepSeek, OpenAI, vLLM, Ollama) and run "
            "`grpod demo` again."
        )
