"""LLM-bound throughput: distillations per minute with 1, 2 and 4 worker processes, each a
`grpod worker --queues distill --pool threads` keeping GRPOD_LLM_CONCURRENCY calls in flight,
against the limit that the concurrency and the calls per distillation allow.

A scripted OpenAI-compatible endpoint on loopback answers every call after a fixed latency (1 s)
and reports the most calls it had in flight. Ready groups of G=5 rewarded traces are planted in an
embedded PostgreSQL; their distill tasks go through the real RabbitMQ on 127.0.0.1:5672. Each
distillation of a group with an empty library makes G summary calls (at once) and one group
advantage call, so the limit is ``processes * concurrency * 60 / (latency * (G + 1))``
distillations a minute. The rate counts every distillation, from the first one's start to the last
one's end, so the ramp-up and the tail count against it. The bench exits 1 when a row falls below
``--goal`` (80%) of its limit.

With ``--hosts``, the same measurement runs with one worker process on each of 1, 2 and 3 hosts:
network namespaces with their own hostnames on a bridge (``tests/netns.py``, as the three-host
test makes them; needs root). The servers are at the bridge's address: a PostgreSQL of the
bench's own on TCP, the RabbitMQ through a relay (it listens on loopback only) and the endpoint.

    .venv/bin/python bench/llm_concurrency.py
    .venv/bin/python bench/llm_concurrency.py --processes 1 2 --groups-per-process 60
    .venv/bin/python bench/llm_concurrency.py --hosts
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from celery import Celery
from embedded_postgres import Postgres

from grpod.daemon.celery_app import create_app, declare_queues
from grpod.daemon.migrations import migrate
from grpod.daemon.settings import Settings
from tests import netns
from tests.broker import delete_broker_objects
from tests.factories import reward, trace
from tests.faults.tcp_postgres import TcpPostgres
from tests.integration.stored import ingest
from tests.scripted_llm import GOOD_SUMMARY, ScriptedEndpoint

RESULTS = Path(__file__).parent / "results"
BROKER = "amqp://guest:guest@127.0.0.1:5672//"
GROUP_SIZE = 5
DOMAINS = 8
LOGS = Path(tempfile.gettempdir()) / "bench-llm-worker"


def _plant(url: str, groups: int) -> list[int]:
    """Ready groups of G rewarded traces each, over a few domains (placed as grouping would)."""
    rng = random.Random(7)
    ids = []
    with psycopg.connect(url, autocommit=True) as conn:
        for g in range(groups):
            domain = f"bench{g % DOMAINS}"
            events = []
            for k in range(GROUP_SIZE):
                trace_id = f"g{g}-t{k}"
                events += [trace(trace_id, domain=domain, query=f"How do I do task {g}?"), reward(trace_id, k / 4)]
            ingest(conn, *events)
            centroid = "[" + ",".join(f"{rng.random():.4f}" for _ in range(384)) + "]"
            row = conn.execute(
                "INSERT INTO groups (domain, dimension, centroid, size, ready_at) VALUES (%s, 384, %s, %s, now()) "
                "RETURNING id",
                (domain, centroid, GROUP_SIZE),
            ).fetchone()
            assert row is not None
            conn.execute("UPDATE traces SET group_id = %s WHERE trace_id LIKE %s", (row[0], f"g{g}-t%"))
            ids.append(int(row[0]))
    return ids


def _advantage(messages: Any) -> str:
    return json.dumps({"experiences": [f"When asked, check the docs first ({uuid.uuid4().hex[:8]})."]})


def _await_consumers(celery: Celery, consumers: int) -> None:
    """Wait until the distill queue has this many consumers (each worker's start takes seconds)."""
    distill = next(queue for queue in celery.conf.task_queues if queue.name.endswith(".distill"))
    deadline = time.monotonic() + 120
    with celery.connection_for_write() as connection:
        while time.monotonic() < deadline:
            declared = distill(connection.default_channel).queue_declare(passive=True)
            if declared.consumer_count >= consumers:
                return
            time.sleep(0.5)
    raise SystemExit(f"only {declared.consumer_count} of {consumers} workers consume; see {LOGS}-*.log")


@dataclass(frozen=True)
class Placement:
    """Where the worker processes run, and how they reach the servers."""

    where: str
    start: Callable[[int, list[str], dict[str, str], Path], subprocess.Popen[bytes]]
    broker_url: str  # the RabbitMQ, as the workers reach it
    address: str  # where the endpoint listens, reachable from the workers
    database_url: Callable[[str], str]  # the bench's database URL, as the workers reach it


def _start_here(n: int, argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)


HERE = Placement("this machine", _start_here, BROKER, "127.0.0.1", lambda url: url)


def measure(
    fresh_database: Callable[[], contextlib.AbstractContextManager[str]],
    placement: Placement,
    processes: int,
    concurrency: int,
    groups: int,
    latency: float,
) -> dict[str, Any]:
    script = {"summary": GOOD_SUMMARY, "advantage": _advantage, "operations": '{"operations": []}'}
    prefix = f"benchllm.{uuid.uuid4().hex[:8]}"
    with (
        fresh_database() as url,
        ScriptedEndpoint(script, latency=latency, host=placement.address) as endpoint,  # type: ignore[arg-type]
    ):
        group_ids = _plant(url, groups)
        env = {k: v for k, v in os.environ.items() if not k.startswith("GRPOD_")} | {
            "GRPOD_DATABASE_URL": placement.database_url(url),
            "GRPOD_BROKER_URL": placement.broker_url,
            "GRPOD_QUEUE_PREFIX": prefix,
            "GRPOD_LLM_BASE_URL": endpoint.url,
            "GRPOD_LLM_MODEL": "scripted",
            "GRPOD_LLM_CONCURRENCY": str(concurrency),
            "GRPOD_LOG_LEVEL": "WARNING",
            "GRPOD_LOG_FORMAT": "json",
        }
        settings = Settings(broker_url=BROKER, queue_prefix=prefix, database_url=url)
        celery = create_app(settings)
        declare_queues(celery, settings)
        argv = [sys.executable, "-m", "grpod.daemon", "worker", "--queues", "distill", "--pool", "threads"]
        workers = [
            placement.start(
                n,
                argv,
                env | {"GRPOD_HOME": tempfile.mkdtemp(prefix="grpod-bench-")},  # a home each
                Path(f"{LOGS}-{n}.log"),
            )
            for n in range(processes)
        ]
        try:
            # Every worker consuming before the first task is sent: else the first one up takes a
            # prefetch's worth and the others start behind.
            _await_consumers(celery, processes)
            for group_id in group_ids:
                celery.send_task("grpod.distill.group", kwargs={"group_id": group_id})
            deadline = time.monotonic() + 900
            with psycopg.connect(url, autocommit=True) as conn:
                while True:
                    row = conn.execute("SELECT count(*) FROM distillations WHERE status = 'distilled'").fetchone()
                    if (row is not None and row[0] >= groups) or time.monotonic() > deadline:
                        break
                    time.sleep(1)
                # Every distillation, from the first one's start to the last one's end: the ramp-up
                # and the tail count against the rate.
                span = conn.execute(
                    "SELECT count(*), extract(epoch FROM max(finished_at) - min(started_at)) FROM distillations "
                    "WHERE status = 'distilled'"
                ).fetchone()
                calls = conn.execute("SELECT count(*) FROM llm_calls").fetchone()
        finally:
            for worker in workers:
                worker.terminate()
            for worker in workers:
                worker.wait(timeout=60)
            delete_broker_objects(BROKER, prefix)
    assert span is not None
    distilled, seconds = int(span[0]), float(span[1] or 0)
    rate = distilled / seconds * 60 if seconds else 0.0
    calls_per_distillation = (calls[0] if calls else 0) / max(1, distilled)
    limit = processes * concurrency * 60 / (latency * calls_per_distillation) if calls_per_distillation else 0.0
    return {
        "where": placement.where,
        "processes": processes,
        "concurrency": concurrency,
        "groups": groups,
        "distilled": distilled,
        "calls_per_distillation": calls_per_distillation,
        "per_minute": rate,
        "limit_per_minute": limit,
        "share_of_limit": rate / limit if limit else 0.0,
        "max_in_flight": endpoint.max_in_flight,
        "in_flight_limit": processes * concurrency,
    }


@contextlib.contextmanager
def _tcp_database(postgres: TcpPostgres) -> Iterator[str]:
    name = f"bench_{uuid.uuid4().hex[:12]}"
    url = postgres.create_database(name)
    migrate(url)
    yield url


def _on_hosts(args: argparse.Namespace) -> list[dict[str, Any]]:
    problem = netns.available()
    if problem:
        raise SystemExit(f"--hosts cannot run here: {problem}")
    rows = []
    with netns.network(max(args.processes)) as network:
        postgres = TcpPostgres(listen=(network.gateway,), trust=network.subnet)
        try:
            with netns.Forward((network.gateway, 5672), ("127.0.0.1", 5672)):
                placement = Placement(
                    "hosts",
                    lambda n, argv, env, log: network.hosts[n].start(argv, env, log),
                    f"amqp://guest:guest@{network.gateway}:5672//",
                    network.gateway,
                    lambda url: url.replace("@127.0.0.1:", f"@{network.gateway}:"),
                )
                for hosts in args.processes:
                    groups = hosts * args.groups_per_process
                    database = partial(_tcp_database, postgres)
                    rows.append(measure(database, placement, hosts, args.concurrency, groups, args.latency))
        finally:
            postgres.close()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, nargs="+", default=None, help="default: 1 2 4 (--hosts: 1 2 3)")
    parser.add_argument("--hosts", action="store_true", help="one worker process on each of that many hosts")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--groups-per-process", type=int, default=120)
    parser.add_argument("--latency", type=float, default=1.0)
    parser.add_argument("--goal", type=float, default=0.8, help="the least share of the limit each row must reach")
    args = parser.parse_args()
    args.processes = args.processes or ([1, 2, 3] if args.hosts else [1, 2, 4])
    if args.hosts:
        rows = _on_hosts(args)
    else:
        rows = []
        with tempfile.TemporaryDirectory() as folder:
            postgres = Postgres(Path(folder))
            try:
                for processes in args.processes:
                    groups = processes * args.groups_per_process
                    rows.append(
                        measure(postgres.fresh_database, HERE, processes, args.concurrency, groups, args.latency)
                    )
            finally:
                postgres.close()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / ("llm_concurrency_hosts.json" if args.hosts else "llm_concurrency.json")).write_text(
        json.dumps(rows, indent=2) + "\n"
    )
    table = Table(
        "hosts (a worker process each)" if args.hosts else "worker processes",
        "GRPOD_LLM_CONCURRENCY",
        "calls per distillation",
        "distillations/min",
        "limit/min",
        "share of the limit",
        "most calls in flight (limit)",
        title=f"LLM-bound throughput, {args.latency:g} s per call",
    )
    for row in rows:
        table.add_row(
            str(row["processes"]),
            str(row["concurrency"]),
            f"{row['calls_per_distillation']:.2f}",
            f"{row['per_minute']:.0f}",
            f"{row['limit_per_minute']:.0f}",
            f"{row['share_of_limit']:.0%}",
            f"{row['max_in_flight']} ({row['in_flight_limit']})",
        )
    Console(width=160).print(table)
    short = [row for row in rows if row["share_of_limit"] < args.goal]
    for row in short:
        print(f"below the goal: {row['processes']} at {row['share_of_limit']:.0%} of the limit (goal {args.goal:.0%})")
    return 1 if short else 0


if __name__ == "__main__":
    raise SystemExit(main())
