"""Publishing events to grpod: over RabbitMQ with publisher confirms, or into the embedded spool.

Publishing waits for the broker to confirm every event, in batches, and retries a bounded number
of times; an event is never dropped silently: ``PublishError`` says what could not be handed over.
The spool (``grpod.schema.spool``) is written atomically: temporary file, fsync, rename.
kombu and the standard library only.
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

from grpod.schema.spool import spool_name
from grpod.schema.topology import amqp_errors, declare_event_queues, events_exchange
from grpod.schema.urls import redact


class PublishError(Exception):
    """Events could not be handed to the broker within the retry budget (the caller keeps them)."""


class EventPublisher(Protocol):
    def publish(self, bodies: Sequence[bytes]) -> None: ...
    def close(self) -> None: ...


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
        errors = amqp_errors()
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
            os.replace(temporary, self.folder / spool_name(0))
            directory = os.open(self.folder, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        except OSError as error:
            raise PublishError(f"could not write event(s) to the spool {self.folder}: {error}") from None

    def close(self) -> None:
        return None


class HttpPublisher:
    """Publishes over grpod's HTTP API (``POST /v1/events`` with a ``publish`` token), for an agent
    with no broker access. The API publishes with confirms; a failed request is retried."""

    def __init__(self, api_url: str, token: str, timeout: float, retries: int) -> None:
        if not api_url.startswith(("http://", "https://")):
            raise PublishError(f"GRPOD_API_URL must start with http:// or https://, not {api_url!r}")
        self.url = api_url.rstrip("/") + "/v1/events"
        self.token = token
        self.timeout = timeout
        self.retries = retries

    def publish(self, bodies: Sequence[bytes]) -> None:
        import json
        import urllib.error
        import urllib.request

        data = b"[" + b",".join(bodies) + b"]"
        last = ""
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(  # noqa: S310 (the scheme is checked above)
                self.url,
                data=data,
                method="POST",
                headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as answer:  # noqa: S310
                    outcome = json.loads(answer.read())
            except urllib.error.HTTPError as error:
                detail = error.read().decode(errors="replace")[:300]
                if error.code in (400, 401, 403, 413):  # asking again changes nothing
                    raise PublishError(f"grpod's API refused the events ({error.code}): {detail}") from None
                last = f"{error.code}: {detail}"
            except OSError as error:
                last = str(error)
            else:
                if outcome.get("rejected"):
                    raise PublishError(
                        f"grpod's API rejected some events (kept with their reasons): {outcome['rejected']}"
                    )
                return
            time.sleep(min(5.0, 0.2 * 2**attempt))
        raise PublishError(f"grpod's API at {self.url} did not take the events after {self.retries + 1} tries: {last}")

    def close(self) -> None:
        pass
