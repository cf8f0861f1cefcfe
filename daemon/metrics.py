"""Prometheus metrics, read from PostgreSQL when scraped (``GET /metrics`` of ``grpod api``).

Every stage of every worker process, on every host, writes what it does to PostgreSQL: the
traces and rewards it stored, the events it rejected, each distillation and each LLM call with
its tokens and latency, each library version and label move. So one collector in the API
process exports the whole deployment, with no multiprocess files and no port per worker. A
counter here is a count of rows: retention and pruning (``grpod maintenance``) lower some of them,
which Prometheus reads as a counter reset.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import psycopg
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from grpod.schema.sql import load_queries

LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
Connect = Callable[[], AbstractContextManager[psycopg.Connection[Any]]]


class DatabaseCollector(Collector):
    """The deployment's metrics from its tables, plus the stage queues' depths."""

    def __init__(self, connect: Connect, queue_depths: Callable[[], dict[str, int | None]]) -> None:
        self._connect = connect
        self._queue_depths = queue_depths

    def collect(self) -> Iterator[Metric]:
        named = load_queries("grpod.schema", "queries/metrics.sql")
        with self._connect() as conn:
            accepted = CounterMetricFamily("grpod_events_accepted", "Events stored, per domain.", labels=["domain"])
            for domain, count in conn.execute(named["events_accepted"]):
                accepted.add_metric([domain], float(count))
            rejected = CounterMetricFamily("grpod_events_rejected", "Events rejected, per reason.", labels=["reason"])
            for reason, count in conn.execute(named["events_rejected"]):
                rejected.add_metric([reason], float(count))
            distillations = CounterMetricFamily(
                "grpod_distillations", "Distillations, per domain and status.", labels=["domain", "status"]
            )
            for domain, status, count in conn.execute(named["distillations"]):
                distillations.add_metric([domain, status], float(count))
            calls = CounterMetricFamily(
                "grpod_llm_calls", "LLM calls, per purpose and model.", labels=["purpose", "model"]
            )
            tokens = CounterMetricFamily(
                "grpod_llm_tokens", "LLM tokens, per purpose and direction (in, out).", labels=["purpose", "direction"]
            )
            errors = CounterMetricFamily(
                "grpod_llm_errors", "LLM answers that could not be used, per purpose.", labels=["purpose"]
            )
            by_purpose: dict[str, list[float]] = {}
            for purpose, model, count, tokens_in, tokens_out, failed in conn.execute(named["llm_calls"]):
                calls.add_metric([purpose, model], float(count))
                totals = by_purpose.setdefault(purpose, [0.0, 0.0, 0.0])
                totals[0] += float(tokens_in or 0)
                totals[1] += float(tokens_out or 0)
                totals[2] += float(failed or 0)
            for purpose, (tokens_in, tokens_out, failed) in sorted(by_purpose.items()):
                tokens.add_metric([purpose, "in"], tokens_in)
                tokens.add_metric([purpose, "out"], tokens_out)
                errors.add_metric([purpose], failed)
            row = conn.execute(named["llm_latency"], {"bounds": list(LATENCY_BUCKETS)}).fetchone()
            cumulative, total_seconds, count = row if row is not None else ([], 0.0, 0)
            latency = HistogramMetricFamily(
                "grpod_llm_latency_seconds",
                "The latency of LLM calls.",
                buckets=[
                    *((str(bound), float(n)) for bound, n in zip(LATENCY_BUCKETS, cumulative or [], strict=False)),
                    ("+Inf", float(count or 0)),
                ],
                sum_value=float(total_seconds or 0.0),
            )
            versions = CounterMetricFamily("grpod_library_versions", "Library versions, per domain.", labels=["domain"])
            for domain, count in conn.execute(named["library_versions"]):
                versions.add_metric([domain], float(count))
            rollbacks = CounterMetricFamily(
                "grpod_rollbacks", "Rollbacks of production, per domain.", labels=["domain"]
            )
            for domain, count in conn.execute(named["rollbacks"]):
                rollbacks.add_metric([domain], float(count))
            experiences = GaugeMetricFamily(
                "grpod_library_experiences",
                "Experiences of the version each label points at.",
                labels=["domain", "label"],
            )
            for domain, label, count in conn.execute(named["library_experiences"]):
                experiences.add_metric([domain, label], float(count))
        depth = GaugeMetricFamily("grpod_queue_depth", "Messages waiting in each stage's queue.", labels=["queue"])
        for queue, waiting in self._queue_depths().items():
            if waiting is not None:
                depth.add_metric([queue], float(waiting))
        yield from (accepted, rejected, distillations, calls, tokens, errors, latency, versions, rollbacks, experiences)
        yield depth
