"""Three worker hosts against one RabbitMQ and one PostgreSQL, and one host killed mid-run.

Each host is a network namespace with its own hostname and a veth link to a bridge (``tests/netns.py``);
the servers are in the root namespace at the bridge's address: a PostgreSQL of the test's own, the
machine's RabbitMQ (through a relay, since it listens on loopback only) and a scripted LLM endpoint
that answers every call after 1 s. Each host runs what compose's hosts run: a prefork worker for
ingest, grouping and maintenance, and a threads worker for distillation and the library; host 1
also runs beat. Agents publish the paraphrase queries' traces and rewards with the SDK while the
hosts work; when host 2 has LLM calls in flight, it is killed (every process SIGKILLed, then its
link unplugged). The other two finish everything, exactly once.
"""

from __future__ import annotations

import json
import random
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from kombu.connection import Connection

from grpod.daemon.celery_app import STAGES
from grpod.schema.topology import queue_name
from grpod.sdk import Client, ClientSettings
from grpod.workers import distillation_store, update_window

from .. import netns
from ..e2e.helpers import GRPOD, grpod_env, run_grpod
from ..factories import agent_trace, reward
from ..scripted_llm import GOOD_SUMMARY, ScriptedEndpoint
from .invariants import assert_whole
from .tcp_postgres import TcpPostgres
from .workers import wait_for

pytestmark = pytest.mark.rabbitmq

PARAPHRASES = Path(__file__).parents[1] / "data" / "paraphrases.jsonl"
WORKER = ["worker", "--queues", "ingest,group,maintenance", "--concurrency", "1"]
DISTILLER = ["worker", "--queues", "distill,library", "--pool", "threads", "--concurrency", "4"]
EVENTS_PER_SECOND = 40


def _advantage(messages: Any) -> str:
    # A rule of its own per call, so that every distillation changes its library.
    return json.dumps({"experiences": [f"Check the documentation first (rule {time.monotonic_ns()})."]})


SCRIPT: dict[str, Any] = {
    "summary": GOOD_SUMMARY,
    "advantage": _advantage,
    "operations": '{"operations": []}',
    "consolidation": '{"operations": []}',
    "merge": json.dumps({"text": "Check the documentation first.", "reason": "the same rule"}),
}


def _traffic() -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """Every paraphrase as a trace, good and bad in turn, with its reward, in two halves; each half
    shuffled, so that a reward may come before its trace, as in production."""
    rows = [json.loads(line) for line in PARAPHRASES.read_text().splitlines() if line.strip()]
    pairs = [
        [agent_trace(f"h{n}", row["query"], good=n % 2 == 0, domain=row["domain"]), reward(f"h{n}", float(n % 2 == 0))]
        for n, row in enumerate(rows)
    ]
    shuffle = random.Random(16)
    shuffle.shuffle(pairs)
    halves = [
        [event for pair in pairs[: len(pairs) // 2] for event in pair],
        [e for p in pairs[len(pairs) // 2 :] for e in p],
    ]
    for half in halves:
        shuffle.shuffle(half)
    return halves[0], halves[1], [f"h{n}" for n in range(len(rows))]


def _publish(client: Client, events: list[dict[str, Any]]) -> None:
    """As agents do: in small batches, at about EVENTS_PER_SECOND."""
    for n in range(0, len(events), 10):
        client.record_batch(events[n : n + 10])
        time.sleep(10 / EVENTS_PER_SECOND)


def _one(url: str, query: str) -> Any:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(query).fetchone()
    return row[0] if row else None


def _queues(prefix: str) -> list[str]:
    return [f"{prefix}.events", *(queue_name(prefix, stage) for stage in STAGES)]


def _depths(broker_url: str, names: list[str]) -> dict[str, tuple[int, int]]:
    """(messages ready, consumers) of each queue, from a passive declare."""
    with Connection(broker_url) as connection:
        channel = connection.channel()
        return {name: tuple(channel.queue_declare(name, passive=True)[1:]) for name in names}


def _pending(url: str, broker_url: str, prefix: str, traces: int, dead: str) -> list[str]:
    """What is left: events not stored, the ``dead`` host's database sessions, groups to distill,
    windows due, distillations neither applied nor superseded, messages in the queues. Empty when
    the run is finished."""
    left = []
    for table in ("traces", "rewards"):
        stored = _one(url, f"SELECT count(*) FROM {table}")
        if stored < traces:
            left.append(f"{stored} of {traces} {table} stored")
    with psycopg.connect(url, autocommit=True) as conn:
        if groups := distillation_store.groups_to_distill(conn, min_age_seconds=0):
            left.append(f"{len(groups)} groups to distill")
        sessions = conn.execute(
            "SELECT state, wait_event, left(query, 60) FROM pg_stat_activity WHERE client_addr = %s::inet", (dead,)
        ).fetchall()
        if sessions:
            left.append(f"{len(sessions)} database sessions of the killed host {dead}: {sessions}")
        if windows := update_window.due_windows(conn):
            left.append(f"update windows due: {windows}")
        left += [
            f"distillation {id} of group {group_id} {status} (attempts {attempts}): {error}"
            for id, group_id, status, attempts, error in conn.execute(
                "SELECT id, group_id, status, attempts, left(error, 200) FROM distillations "
                "WHERE status NOT IN ('applied', 'superseded') ORDER BY id"
            )
        ]
    depths = _depths(broker_url, _queues(prefix))
    left += [f"{ready} messages in {name}" for name, (ready, _) in depths.items() if ready]
    return left


@pytest.fixture
def hosts() -> Iterator[netns.Network]:
    problem = netns.available()
    assert problem is None, f"the multi-host test cannot run here: {problem}"
    with netns.network(3) as network:
        yield network


def test_three_hosts_share_the_work_and_one_killed_mid_run_loses_nothing(
    tmp_path: Path, hosts: netns.Network, rabbitmq_url: str, queue_prefix: str
) -> None:
    first, second, trace_ids = _traffic()
    domains = sorted({event["domain"] for event in first + second if "domain" in event})
    postgres = TcpPostgres(listen=(hosts.gateway,), trust=hosts.subnet)
    processes: list[tuple[netns.Host, subprocess.Popen[bytes]]] = []
    try:
        with (
            netns.Forward((hosts.gateway, 5672), ("127.0.0.1", 5672)) as broker,
            ScriptedEndpoint(SCRIPT, latency=1.0, host=hosts.gateway) as endpoint,
        ):
            url = postgres.create_database("grpod")
            # Beat's maintenance sweep every 10 s: it takes over what the killed host left running.
            settings = {
                "queue_prefix": queue_prefix,
                "llm_base_url": endpoint.url,
                "llm_model": "scripted",
                "maintenance_seconds": "10",
            }
            here = grpod_env(tmp_path / "here", database_url=url, broker_url=rabbitmq_url, **settings)
            assert run_grpod(["migrate"], here).returncode == 0
            for domain in domains:  # each version published as soon as it is distilled
                done = run_grpod(["domain", "set", domain, "--create", "--update-window-seconds", "0"], here)
                assert done.returncode == 0, done.stderr
            host_env = {
                host.name: grpod_env(
                    tmp_path / host.name,
                    database_url=postgres.url("grpod", host=hosts.gateway),
                    broker_url=f"amqp://guest:guest@{hosts.gateway}:5672//",
                    **settings,
                )
                for host in hosts.hosts
            }
            logs = {host.name: tmp_path / f"{host.name}.log" for host in hosts.hosts}
            for host in hosts.hosts:
                for argv in [WORKER, DISTILLER] + ([["beat"]] if host.name == "host1" else []):
                    started = host.start([*GRPOD, *argv], host_env[host.name], logs[host.name])
                    processes.append((host, started))

            # Every queue consumed by all three hosts before the agents start.
            wait_for(
                "three consumers on every queue",
                lambda: all(consumers == 3 for _, consumers in _depths(rabbitmq_url, _queues(queue_prefix)).values()),
                180,
                0.5,
            )
            # The first half of the traffic, the kill when host 2 has LLM calls in flight, then the rest.
            with Client(ClientSettings(broker_url=rabbitmq_url, queue_prefix=queue_prefix)) as client:
                _publish(client, first)
                victim = hosts.hosts[1]
                wait_for(
                    f"LLM calls in flight from {victim.name}", lambda: endpoint.in_flight_from[victim.address], 180
                )
                assert hosts.kill(victim) >= 2, f"{victim.name} ran no processes"
                killed_at = _one(url, "SELECT count(*) FROM distillations")
                _publish(client, second)
            deadline = time.monotonic() + 300
            while left := _pending(url, rabbitmq_url, queue_prefix, len(trace_ids), victim.address):
                assert time.monotonic() < deadline, f"not finished after 300 s: {left}"
                time.sleep(1)

            survivors = [process for host, process in processes if host != victim]
            assert all(p.poll() is None for p in survivors), {h: netns.log_tail(log) for h, log in logs.items()}
            # The traffic ran through every host's link: each sent to the broker and called the LLM.
            for host in hosts.hosts:
                assert broker.sent[host.address] > 0, f"{host.name} sent nothing to the broker"
                assert endpoint.clients[host.address] > 0, f"{host.name} made no LLM call"
            assert _one(url, "SELECT count(*) FROM distillations") > killed_at, "nothing was distilled after the kill"

        assert_whole(url, traces=trace_ids, rewards=len(trace_ids))
        with psycopg.connect(url) as conn:
            # Each trace learned from by one applied distillation at most: what the killed host had
            # running was distilled again (and that one superseded) or resumed, never applied twice.
            twice = conn.execute(
                "SELECT s->>'trace_id', count(*) FROM distillations d, jsonb_array_elements(d.samples) s "
                "WHERE d.status = 'applied' GROUP BY 1 HAVING count(*) > 1"
            ).fetchall()
            assert twice == [], f"traces in more than one applied distillation: {twice}"
            used = conn.execute(
                "SELECT count(*) FROM traces t WHERE t.used_by_distillation IS NOT NULL AND NOT EXISTS ("
                "SELECT 1 FROM distillations d, jsonb_array_elements(d.samples) s "
                "WHERE d.id = t.used_by_distillation AND d.status = 'applied' AND s->>'trace_id' = t.trace_id)"
            ).fetchone()
            assert used == (0,), f"{used} traces marked used by a distillation that did not apply them"
            versions = conn.execute("SELECT count(*) FROM library_versions").fetchone()
            assert versions is not None and versions[0] >= len(domains)
        dead = _depths(rabbitmq_url, [f"{queue_prefix}.dead", f"{queue_prefix}.events.dead"])
        assert all(ready == 0 for ready, _ in dead.values()), f"dead-lettered: {dead}"
    finally:
        for _, process in processes:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=30)
        postgres.close()
