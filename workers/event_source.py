"""The ingest consumer's port to the event queue: batches from RabbitMQ, or from the embedded spool.

A source hands out batches that stay unacknowledged until the caller has committed them, so a
consumer killed mid-batch loses nothing: the broker delivers the batch again and storage is
idempotent. A spool consumer claims files by renaming them into its own folder and deletes them
only after its commit; the claims of a consumer that died are returned on the next start,
counting one delivery. Unlike kombu's filesystem transport this loses nothing when a consumer is
killed.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from kombu.connection import Connection
from kombu.messaging import Consumer

from grpod.schema.spool import attempts_of, spool_depth, spool_files, with_attempts
from grpod.schema.topology import dead_events_queue, declare_event_queues


@dataclass
class Delivery:
    """One event handed to the ingest consumer; ``dead`` when delivered too often already."""

    body: bytes
    token: Any
    dead: bool = False
    death: str = ""


class EventSource(Protocol):
    def fetch(self, max_count: int, wait_seconds: float) -> list[Delivery]: ...
    def ack(self, deliveries: Sequence[Delivery]) -> None: ...
    def release(self, deliveries: Sequence[Delivery]) -> None: ...
    def depth(self) -> int: ...
    def keepalive(self) -> None: ...
    def reconnect(self) -> None: ...
    def close(self) -> None: ...


HEARTBEAT_SECONDS = 30  # AMQP heartbeats: a half-open socket is found within about twice this


class AmqpSource:
    """Batches from ``<prefix>.events`` (and dead events from ``<prefix>.events.dead``)."""

    def __init__(self, url: str, prefix: str, delivery_limit: int, prefetch: int) -> None:
        self.url = url
        self.prefix = prefix
        self.delivery_limit = delivery_limit
        self.prefetch = prefetch
        self._open()

    def _open(self) -> None:
        self.connection = Connection(self.url, heartbeat=HEARTBEAT_SECONDS)
        self.connection.ensure_connection(max_retries=3)
        _read_ahead(self.connection)
        channel = self.connection.channel()
        self.queue = declare_event_queues(channel, self.prefix, self.url, self.delivery_limit)
        self.channel = self.connection.channel()
        self.channel.basic_qos(prefetch_size=0, prefetch_count=self.prefetch, a_global=False)
        self._buffer: list[Delivery] = []
        queues = [self.queue]
        self.consumer = Consumer(self.channel, queues=queues, on_message=self._on_message, no_ack=False)
        self.consumer.consume()
        self.dead_consumer = Consumer(
            self.channel, queues=[dead_events_queue(self.prefix)], on_message=self._on_dead_message, no_ack=False
        )
        self.dead_consumer.consume()

    def keepalive(self) -> None:
        """Send and check heartbeats while the caller holds a batch (a database outage)."""
        self.connection.heartbeat_check()

    def reconnect(self) -> None:
        """A new connection after the broker dropped this one: what was unacknowledged on the old one
        the broker delivers again."""
        self.close()
        self._open()

    def _on_message(self, message: Any) -> None:
        self._buffer.append(Delivery(body=bytes(message.body), token=message))

    def _on_dead_message(self, message: Any) -> None:
        deaths = message.headers.get("x-death") or [{}]
        death = deaths[0]
        reason = f"delivered {death.get('count', '?')} time(s) beyond the limit ({death.get('reason', 'unknown')})"
        self._buffer.append(Delivery(body=bytes(message.body), token=message, dead=True, death=reason))

    def fetch(self, max_count: int, wait_seconds: float) -> list[Delivery]:
        self.connection.heartbeat_check()
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
            if pid and process_alive(pid):
                continue
            for path in claim.iterdir():
                os.replace(path, self.folder / with_attempts(path.name, attempts_of(path.name) + 1))
                returned += 1
            with contextlib.suppress(OSError):
                claim.rmdir()
        return returned

    def fetch(self, max_count: int, wait_seconds: float) -> list[Delivery]:
        """Whole files, oldest first, until at least ``max_count`` events or ``wait_seconds`` passed."""
        deadline = time.monotonic() + wait_seconds
        batch: list[Delivery] = []
        while True:
            for name in spool_files(self.folder):
                if len(batch) >= max_count:
                    break
                claimed = self.claims / name
                try:
                    os.replace(self.folder / name, claimed)
                except FileNotFoundError:  # another consumer took it
                    continue
                attempts = attempts_of(name)
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
            os.replace(path, self.folder / with_attempts(path.name, attempts_of(path.name) + 1))

    def depth(self) -> int:
        return spool_depth(self.folder)

    def keepalive(self) -> None:
        return None

    def reconnect(self) -> None:
        return None

    def close(self) -> None:
        # Whatever is still claimed goes back (a clean stop is not a failed delivery).
        for path in self.claims.iterdir():
            os.replace(path, self.folder / path.name)
        with contextlib.suppress(OSError):
            self.claims.rmdir()


def process_alive(pid: int) -> bool:
    """Whether a process of this host with this pid runs (a claim, a report, is still its own)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
