"""The tests' own objects on the shared RabbitMQ, removed after each test.

Quorum queues left behind by thousands of test runs would pile up in the machine's broker (each
is a Raft member with a log of its own), so every test deletes what it declared under its prefix.
"""

from __future__ import annotations

from kombu.connection import Connection

from grpod.daemon.celery_app import STAGES
from grpod.schema.topology import queue_name


def delete_broker_objects(rabbitmq_url: str, prefix: str) -> None:
    """Every queue and exchange grpod declares under ``prefix``; missing ones are no error."""
    queues = [queue_name(prefix, stage) for stage in STAGES]
    queues += [f"{prefix}.dead", f"{prefix}.events", f"{prefix}.events.dead"]
    with Connection(rabbitmq_url, connect_timeout=5) as connection:
        channel = connection.channel()
        for name in queues:
            channel.queue_delete(name)
        for exchange in (prefix, f"{prefix}.dead", f"{prefix}.events"):
            channel.exchange_delete(exchange)
