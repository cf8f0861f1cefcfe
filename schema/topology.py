"""Names and shapes of everything grpod declares on the broker (kombu only, no Celery).

- ``<prefix>`` (topic exchange): the stage queues ``<prefix>.<stage>``, routed by stage name.
- ``<prefix>.events`` (direct exchange and queue): trace and reward events from agents.
- ``<prefix>.dead`` (topic exchange): where RabbitMQ puts a message delivered too often.
  Stage tasks land in the queue ``<prefix>.dead``; events in ``<prefix>.events.dead``, which
  the ingest consumer drains into the rejected store.

These are the contract with agents that publish over plain AMQP: kombu only, no Celery.
"""

from __future__ import annotations

import socket
from typing import Any

from kombu.entity import Exchange, Queue

EVENTS_ROUTING_KEY = "event"
DEAD_EVENTS_ROUTING_KEY = "events.dead"


def is_rabbitmq(broker_url: str) -> bool:
    return broker_url.split("://", 1)[0] in ("amqp", "amqps", "pyamqp")


def queue_name(prefix: str, stage: str) -> str:
    return f"{prefix}.{stage}"


def dead_letter_exchange(prefix: str) -> Exchange:
    return Exchange(f"{prefix}.dead", type="topic", durable=True)


def quorum_arguments(prefix: str, delivery_limit: int, dead_letter_routing_key: str | None = None) -> dict[str, Any]:
    """A durable quorum queue that dead-letters a message after ``delivery_limit`` deliveries."""
    arguments: dict[str, Any] = {
        "x-queue-type": "quorum",
        "x-delivery-limit": delivery_limit,
        "x-dead-letter-exchange": dead_letter_exchange(prefix).name,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }
    if dead_letter_routing_key is not None:
        arguments["x-dead-letter-routing-key"] = dead_letter_routing_key
    return arguments


def dead_letter_queue(prefix: str) -> Queue:
    """Dead stage tasks (routing keys are one word: the stage), for an operator to inspect."""
    return Queue(
        f"{prefix}.dead",
        exchange=dead_letter_exchange(prefix),
        routing_key="*",
        durable=True,
        queue_arguments={"x-queue-type": "quorum"},
    )


def events_exchange(prefix: str) -> Exchange:
    return Exchange(f"{prefix}.events", type="direct", durable=True)


def events_queue(prefix: str, broker_url: str, delivery_limit: int) -> Queue:
    arguments = quorum_arguments(prefix, delivery_limit, DEAD_EVENTS_ROUTING_KEY) if is_rabbitmq(broker_url) else {}
    return Queue(
        f"{prefix}.events",
        exchange=events_exchange(prefix),
        routing_key=EVENTS_ROUTING_KEY,
        durable=True,
        queue_arguments=arguments,
    )


def dead_events_queue(prefix: str) -> Queue:
    return Queue(
        f"{prefix}.events.dead",
        exchange=dead_letter_exchange(prefix),
        routing_key=DEAD_EVENTS_ROUTING_KEY,
        durable=True,
        queue_arguments={"x-queue-type": "quorum"},
    )


# What agents and the ingest consumer declare and survive -------------------------------------

_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (OSError, socket.timeout, ConnectionError)


def amqp_errors() -> tuple[type[BaseException], ...]:
    from amqp.exceptions import ConnectionError as AmqpConnectionError
    from amqp.exceptions import RecoverableConnectionError
    from kombu.exceptions import OperationalError

    return (*_CONNECTION_ERRORS, AmqpConnectionError, RecoverableConnectionError, OperationalError)


def declare_event_queues(channel: Any, prefix: str, broker_url: str, delivery_limit: int) -> Queue:
    """Declare the events queue (and, on RabbitMQ, its dead-letter queue); returns the events queue.

    A queue that already exists with other arguments (another delivery limit) is used as it is.
    """
    from amqp.exceptions import PreconditionFailed

    queue = events_queue(prefix, broker_url, delivery_limit)
    bound = queue(channel)
    try:
        bound.declare()
    except PreconditionFailed:
        channel = channel.connection.channel() if hasattr(channel, "connection") else channel
        bound = queue(channel)
        bound.queue_declare(passive=True)
    if is_rabbitmq(broker_url):
        dead = dead_events_queue(prefix)(channel)
        dead.declare()
    return queue
