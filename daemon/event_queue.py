"""Moving raw events from agents to the ingest consumer: over RabbitMQ, or an embedded spool.

Publishing (the SDK's side) waits for the broker to confirm every event, in
batches, and retries a bounded number of times. Consuming (the ingest side)
hands out batches that stay unacknowledged until the caller has committed
them, so a consumer killed mid-batch loses nothing: the broker delivers the
batch again and storage is idempotent.

The embedded "broker" for events is a spool folder: one file of JSON lines per
published batch, written atomically (temporary file, fsync, rename). A consumer claims files by
renaming them into its own folder and deletes them only after its commit; the
claims of a consumer that died are returned on the next start, counting one
delivery. Unlike kombu's filesystem transport this loses nothing when a
consumer is killed.

This module is imported by the SDK: kombu and the standard library only.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from kombu.connection import Connection
from kombu.entity import Queue
from kombu.messaging import Consumer

from grpod.daemon.topology import dead_events_queue, events_exchange, events_queue, is_rabbitmq
from grpod.daemon.urls import redact


class PublishError(Exception):
    """Events could not be handed to the broker within the retry budget (the caller keeps them)."""


@dataclass
class Delivery:
    """One event handed to the ingest consumer; ``dead`` when delivered too often already."""

    body: bytes
    token: Any
    dead: bool = False
    death: str = ""


class EventPublisher(Protocol):
    def publish(self, bodies: Sequence[bytes]) -> None: ...
    def close(self) -> None: ...


class EventSource(Protocol):
    def fetch(self, max_count: int, wait_seconds: float) -> list[Delivery]: ...
    def ack(self, deliveries: Sequence[Delivery]) -> None: ...
    def release(self, deliveries: Sequence[Delivery]) -> None: ...
    def depth(self) -> int: ...
    def close(self) -> None: ...


# RabbitMQ ---------------------------------------------------------------------------------------

_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (OSError, socket.timeout, ConnectionError)


def _amqp_errors() -> tuple[type[BaseException], ...]:
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


class AmqpPublisher:
    """Publishes with publisher confirms, a batch at a time, retrying on connection loss."""

    def __init__(self, url: str, prefix: str, delivery_limit: int, timeout: float, retries: int) -> None:
        self.url = url
        self.prefix = prefix
        self.delivery_limit = delivery_limit
        self.timeout = timeout
        self.retries = retries
        self._connection: Connection | None = None
        self._channel: Any = None
        self._next_tag = 1  # publisher-confirm sequence numbers start at 1 on each channel

    def _open(self) -> Any:
        if self._channel is None:
            connection = Connection(self.url, connect_timeout=self.timeout)
            connection.ensure_connection(max_retries=1, timeout=self.timeout)
            channel = connection.channel()
            declare_event_queues(channel, self.prefix, self.url, self.delivery_limit)
            channel = connection.channel()  # a fresh channel after a possible declare failure
            channel.confirm_select()
            self._connection, self._channel = connection, channel
        return self._channel

    def publish(self, bodies: Sequence[bytes]) -> None:
        errors = _amqp_errors()
        last_error: BaseException | None = None
        for attempt in range(self.retries + 1):
            try:
                self._publish_confirmed(bodies)
                return
            except errors as error:
                last_error = error
                self.close()
                if attempt < self.retries:
                    time.sleep(min(0.2 * 2**attempt, 2.0))
        raise PublishError(
            f"could not publish {len(bodies)} event(s) to {redact(self.url)} after "
            f"{self.retries + 1} attempt(s): {last_error}"
        )

    def _publish_confirmed(self, bodies: Sequence[bytes]) -> None:
        from amqp import Message

        channel = self._open()
        assert self._connection is not None
        confirmed = _Confirmations()
        channel.events["basic_ack"].add(confirmed.ack)
        channel.events["basic_nack"].add(confirmed.nack)
        try:
            first = self._next_tag
            exchange = events_exchange(self.prefix).name
            for body in bodies:
                message = Message(body, content_type="application/json", delivery_mode=2)
                channel.basic_publish(message, exchange=exchange, routing_key="event", mandatory=False)
            last = first + len(bodies) - 1
            self._next_tag = last + 1
            deadline = time.monotonic() + self.timeout
            while not confirmed.covers(first, last):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"the broker did not confirm within {self.timeout}s")
                with contextlib.suppress(socket.timeout, TimeoutError):
                    self._connection.drain_events(timeout=min(remaining, 1.0))
            if confirmed.nacked:
                raise ConnectionError("the broker refused (nacked) some events")
        finally:
            channel.events["basic_ack"].discard(confirmed.ack)
            channel.events["basic_nack"].discard(confirmed.nack)

    def close(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                self._connection.close()
        self._connection, self._channel = None, None
        self._next_tag = 1


@dataclass
class _Confirmations:
    acked_upto: int = 0
    acked: set[int] = field(default_factory=set)
    nacked: bool = False

    def ack(self, delivery_tag: int, multiple: bool) -> None:
        if multiple:
            self.acked_upto = max(self.acked_upto, delivery_tag)
        else:
            self.acked.add(delivery_tag)

    def nack(self, delivery_tag: int, multiple: bool) -> None:
        self.nacked = True
        self.ack(delivery_tag, multiple)

    def covers(self, first: int, last: int) -> bool:
        return all(tag <= self.acked_upto or tag in self.acked for tag in range(first, last + 1))


class AmqpSource:
    """Batches from ``<prefix>.events`` (and dead events from ``<prefix>.events.dead``)."""

    def __init__(self, url: str, prefix: str, delivery_limit: int, prefetch: int) -> None:
        self.url = url
        self.connection = Connection(url, heartbeat=0)
        self.connection.ensure_connection(max_retries=3)
        _read_ahead(self.connection)
        channel = self.connection.channel()
        self.queue = declare_event_queues(channel, prefix, url, delivery_limit)
        self.channel = self.connection.channel()
        self.channel.basic_qos(prefetch_size=0, prefetch_count=prefetch, a_global=False)
        self._buffer: list[Delivery] = []
        queues = [self.queue]
        self.consumer = Consumer(self.channel, queues=queues, on_message=self._on_message, no_ack=False)
        self.consumer.consume()
        self.dead_consumer = Consumer(
            self.channel, queues=[dead_events_queue(prefix)], on_message=self._on_dead_message, no_ack=False
        )
        self.dead_consumer.consume()

    def _on_message(self, message: Any) -> None:
        self._buffer.append(Delivery(body=bytes(message.body), token=message))

    def _on_dead_message(self, message: Any) -> None:
        deaths = message.headers.get("x-death") or [{}]
        death = deaths[0]
        reason = f"delivered {death.get('count', '?')} time(s) beyond the limit ({death.get('reason', 'unknown')})"
        self._buffer.append(Delivery(body=bytes(message.body), token=message, dead=True, death=reason))

    def fetch(self, max_count: int, wait_seconds: float) -> list[Delivery]:
        deadline = time.monotonic() + wait_seconds
        while len(self._buffer) < max_count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                self.connection.drain_events(timeout=remaining)
            except TimeoutError:
                break
        batch, self._buffer = self._buffer[:max_count], self._buffer[max_count:]
        return batch

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        if deliveries:
            # One frame acknowledges the whole batch: every earlier tag on this channel is ours.
            last = max(deliveries, key=lambda d: d.token.delivery_tag)
            last.token.ack(multiple=True)

    def release(self, deliveries: Sequence[Delivery]) -> None:
        for delivery in deliveries:
            delivery.token.requeue()

    def depth(self) -> int:
        channel = self.connection.channel()
        try:
            _, count, _ = self.queue(channel).queue_declare(passive=True)
        finally:
            channel.close()
        return int(count)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.connection.close()


def _read_ahead(connection: Connection, size: int = 16 * 1024) -> None:
    """Let py-amqp read ahead from the socket instead of exactly one frame part per recv().

    py-amqp asks the socket for exactly the bytes it needs next (7 for a frame header, the payload,
    then 1), three recv() calls per frame and nine per message; its transport already keeps what a
    recv() returns beyond that in its read buffer, so asking for more is safe and cuts the system
    calls to about one per several messages. Falls back silently on another transport.
    """
    transport: Any = getattr(connection.connection, "_transport", None) or getattr(
        connection.connection, "transport", None
    )
    sock = getattr(transport, "sock", None)
    if sock is None or not hasattr(transport, "_quick_recv"):
        return
    recv = sock.recv
    transport._quick_recv = lambda wanted: recv(max(wanted, size))


# The embedded spool -----------------------------------------------------------------------------


SPOOL_SUFFIX = ".jsonl"


def _spool_name(attempts: int) -> str:
    return f"{time.time_ns():020d}-{uuid.uuid4().hex}.{attempts}{SPOOL_SUFFIX}"


def _attempts(name: str) -> int:
    parts = name.split(".")
    return int(parts[-2]) if len(parts) >= 3 and parts[-2].isdigit() else 0


def _with_attempts(name: str, attempts: int) -> str:
    return f"{name.rsplit('.', 2)[0]}.{attempts}{SPOOL_SUFFIX}"


def _spool_files(folder: Path) -> list[str]:
    return sorted(entry.name for entry in os.scandir(folder) if entry.name.endswith(SPOOL_SUFFIX))


class SpoolPublisher:
    """Writes each published batch as one file of JSON lines; durable once ``publish`` returns.

    One fsync per batch (like one round of broker confirms). Compact JSON has no raw newline, so
    one line is one event.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def publish(self, bodies: Sequence[bytes]) -> None:
        if not bodies:
            return
        if any(b"\n" in body for body in bodies):
            raise PublishError("an event body contains a raw newline; the spool stores one event per line")
        try:
            temporary = self.folder / f".tmp-{uuid.uuid4().hex}"
            with temporary.open("wb") as handle:
                handle.write(b"\n".join(bodies))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.folder / _spool_name(0))
            directory = os.open(self.folder, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        except OSError as error:
            raise PublishError(f"could not write event(s) to the spool {self.folder}: {error}") from None

    def close(self) -> None:
        return None


class SpoolSource:
    """Claims spool files by renaming them into a folder of its own; a file's events go together."""

    def __init__(self, folder: Path, delivery_limit: int) -> None:
        self.folder = folder
        self.delivery_limit = delivery_limit
        self.claims_root = folder.parent / f"{folder.name}-claimed"
        folder.mkdir(parents=True, exist_ok=True)
        self.claims_root.mkdir(parents=True, exist_ok=True)
        self.return_dead_claims()
        self.claims = self.claims_root / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.claims.mkdir()

    def return_dead_claims(self) -> int:
        """Give back the files that consumers which died had claimed, counting one more delivery."""
        returned = 0
        for claim in self.claims_root.iterdir():
            owner = claim.name.split("-", 1)[0]
            pid = int(owner) if owner.isdigit() else 0
            if pid and _alive(pid):
                continue
            for path in claim.iterdir():
                os.replace(path, self.folder / _with_attempts(path.name, _attempts(path.name) + 1))
                returned += 1
            with contextlib.suppress(OSError):
                claim.rmdir()
        return returned

    def fetch(self, max_count: int, wait_seconds: float) -> list[Delivery]:
        """Whole files, oldest first, until at least ``max_count`` events or ``wait_seconds`` passed."""
        deadline = time.monotonic() + wait_seconds
        batch: list[Delivery] = []
        while True:
            for name in _spool_files(self.folder):
                if len(batch) >= max_count:
                    break
                claimed = self.claims / name
                try:
                    os.replace(self.folder / name, claimed)
                except FileNotFoundError:  # another consumer took it
                    continue
                attempts = _attempts(name)
                dead = attempts > self.delivery_limit  # as RabbitMQ's x-delivery-limit counts
                death = f"delivered {attempts} time(s) without being stored" if dead else ""
                batch.extend(
                    Delivery(body=line, token=claimed, dead=dead, death=death)
                    for line in claimed.read_bytes().split(b"\n")
                    if line
                )
            if len(batch) >= max_count or time.monotonic() >= deadline:
                return batch
            time.sleep(min(0.02, max(deadline - time.monotonic(), 0)))

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        for path in {Path(delivery.token) for delivery in deliveries}:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def release(self, deliveries: Sequence[Delivery]) -> None:
        for path in {Path(delivery.token) for delivery in deliveries}:
            os.replace(path, self.folder / _with_attempts(path.name, _attempts(path.name) + 1))

    def depth(self) -> int:
        return spool_depth(self.folder)

    def close(self) -> None:
        # Whatever is still claimed goes back (a clean stop is not a failed delivery).
        for path in self.claims.iterdir():
            os.replace(path, self.folder / path.name)
        with contextlib.suppress(OSError):
            self.claims.rmdir()


def spool_depth(folder: Path) -> int:
    """Events waiting in a spool folder (the lines of its waiting files)."""
    total = 0
    for name in _spool_files(folder):
        with contextlib.suppress(FileNotFoundError):
            total += sum(1 for line in (folder / name).read_bytes().split(b"\n") if line)
    return total


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
