"""The agent SDK's client: build, validate and publish trace and reward events (see ``grpod.sdk``)."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

import orjson
from ulid import ULID

from grpod.schema.events import Accepted, Limits, RewardEvent, TraceEvent, validate_event
from grpod.schema.topology import is_rabbitmq
from grpod.sdk.publish import AmqpPublisher, EventPublisher, HttpPublisher, SpoolPublisher
from grpod.sdk.settings import ClientSettings, PublishSettings


class InvalidEventError(ValueError):
    """The event breaks the wire contract; the message says which field and why."""


class ValidEvent(dict[str, Any]):
    """An event dict that this SDK built and validated (``record_batch`` need not check it again)."""


def new_trace_id() -> str:
    """A time-ordered, unique id (a ULID: 26 characters, sortable by creation time)."""
    return str(ULID())


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _iso(moment: datetime | str | None) -> str:
    if moment is None:
        return _now()
    if isinstance(moment, datetime):
        if moment.tzinfo is None:
            raise InvalidEventError("created_at must carry a time zone (use datetime.now(UTC))")
        return moment.isoformat()
    return moment


class Client:
    """Publishes trace and reward events to grpod. Safe to share between threads."""

    def __init__(self, settings: PublishSettings | None = None) -> None:
        self.settings: PublishSettings = settings if settings is not None else ClientSettings.from_env()
        self._limits: Limits = self.settings.limits()
        self._lock = threading.Lock()
        self._publisher: EventPublisher | None = None

    # Building events ---------------------------------------------------------------------------

    def trace_event(
        self,
        *,
        domain: str,
        query: str,
        trajectory: Sequence[Mapping[str, Any]],
        answer: str,
        library_version: int | None = None,
        trace_id: str | None = None,
        created_at: datetime | str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> ValidEvent:
        """A validated trace event (a plain dict, the wire form), for ``record_batch``."""
        document: dict[str, Any] = {
            "type": "trace",
            "schema_version": 1,
            "trace_id": trace_id if trace_id is not None else new_trace_id(),
            "domain": domain,
            "query": query,
            "trajectory": [dict(message) for message in trajectory],
            "answer": answer,
            "created_at": _iso(created_at),
        }
        if library_version is not None:
            document["library_version"] = library_version
        if metadata is not None:
            document["metadata"] = dict(metadata)
        return self._validated(document)

    def reward_event(
        self,
        trace_id: str,
        value: float,
        *,
        source: str = "default",
        critique: str | None = None,
        ground_truth: str | None = None,
        created_at: datetime | str | None = None,
    ) -> ValidEvent:
        """A validated reward event (a plain dict, the wire form), for ``record_batch``."""
        document: dict[str, Any] = {
            "type": "reward",
            "schema_version": 1,
            "trace_id": trace_id,
            "value": float(value) if isinstance(value, int) and not isinstance(value, bool) else value,
            "source": source,
            "created_at": _iso(created_at),
        }
        if critique is not None:
            document["critique"] = critique
        if ground_truth is not None:
            document["ground_truth"] = ground_truth
        return self._validated(document)

    def _validated(self, document: dict[str, Any]) -> ValidEvent:
        if isinstance(document, ValidEvent):
            return document
        result = validate_event(document, self._limits)
        if not isinstance(result, Accepted):
            raise InvalidEventError(f"{result.reason.value}: {result.detail}")
        return ValidEvent(document)

    # Recording ---------------------------------------------------------------------------------

    def record_trace(self, **fields: Any) -> str:
        """Publish one trace; returns its trace_id (generated, time-ordered, when not given)."""
        document = self.trace_event(**fields)
        self._publish([document])
        return str(document["trace_id"])

    def record_reward(self, trace_id: str, value: float, **fields: Any) -> None:
        """Publish one reward for a trace (before or after the trace itself)."""
        self._publish([self.reward_event(trace_id, value, **fields)])

    def record_batch(self, events: Iterable[Mapping[str, Any] | TraceEvent | RewardEvent]) -> list[str]:
        """Publish many events with one round of confirms; returns their trace ids in order."""
        documents: list[dict[str, Any]] = []
        for event in events:
            if isinstance(event, ValidEvent):
                documents.append(event)
            elif isinstance(event, TraceEvent | RewardEvent):
                documents.append(self._validated(event.model_dump(mode="json", exclude_none=True)))
            else:
                documents.append(self._validated(dict(event)))
        self._publish(documents)
        return [str(document["trace_id"]) for document in documents]

    def _publish(self, documents: Sequence[dict[str, Any]]) -> None:
        bodies = [orjson.dumps(document) for document in documents]
        with self._lock:
            if self._publisher is None:
                self._publisher = self._open_publisher()
            self._publisher.publish(bodies)

    def _open_publisher(self) -> EventPublisher:
        settings = self.settings
        api_url = getattr(settings, "api_url", None)  # a ClientSettings' (the daemon's own have none)
        if api_url is not None:
            return HttpPublisher(
                api_url, getattr(settings, "api_token", None) or "", settings.publish_timeout, settings.publish_retries
            )
        if settings.broker_url is None or not is_rabbitmq(settings.broker_url):
            return SpoolPublisher(settings.event_spool)
        return AmqpPublisher(
            settings.broker_url,
            prefix=settings.queue_prefix,
            delivery_limit=settings.delivery_limit,
            timeout=settings.publish_timeout,
            retries=settings.publish_retries,
        )

    def close(self) -> None:
        with self._lock:
            if self._publisher is not None:
                self._publisher.close()
                self._publisher = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
