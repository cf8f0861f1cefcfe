"""What the SDK needs to publish, read from the same ``GRPOD_*`` variables as the daemon's settings.

The daemon's settings (``grpod.daemon.settings``) take their defaults from here, so an agent and
the service agree on queue names and limits without sharing a settings file. Anything with these
attributes will do as the settings of a ``Client``: the daemon hands in its own.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

import platformdirs

from grpod.schema.errors import ConfigError
from grpod.schema.events import Limits
from grpod.schema.spool import spool_folder

QUEUE_PREFIX = "grpod"
DELIVERY_LIMIT = 5
PUBLISH_TIMEOUT = 5.0
PUBLISH_RETRIES = 3

T = TypeVar("T", int, float)


def default_home() -> Path:
    return Path(platformdirs.user_data_dir("grpod", appauthor=False))


class PublishSettings(Protocol):
    """What a ``Client`` reads from its settings."""

    @property
    def broker_url(self) -> str | None: ...
    @property
    def event_spool(self) -> Path: ...
    @property
    def queue_prefix(self) -> str: ...
    @property
    def delivery_limit(self) -> int: ...
    @property
    def publish_timeout(self) -> float: ...
    @property
    def publish_retries(self) -> int: ...
    def limits(self) -> Limits: ...


@dataclass(frozen=True)
class ClientSettings:
    """The SDK's settings: an unset broker means the embedded spool under ``home``."""

    broker_url: str | None = None
    home: Path = field(default_factory=default_home)
    queue_prefix: str = QUEUE_PREFIX
    delivery_limit: int = DELIVERY_LIMIT
    publish_timeout: float = PUBLISH_TIMEOUT
    publish_retries: int = PUBLISH_RETRIES
    max_event_bytes: int = Limits.max_event_bytes
    max_query_bytes: int = Limits.max_query_bytes
    # Publish over grpod's HTTP API instead (a `publish` token), for an agent with no broker access.
    api_url: str | None = None
    api_token: str | None = field(default=None, repr=False)

    @property
    def event_spool(self) -> Path:
        return spool_folder(self.home)

    def limits(self) -> Limits:
        return Limits(max_event_bytes=self.max_event_bytes, max_query_bytes=self.max_query_bytes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> ClientSettings:
        """The settings from ``GRPOD_*`` variables; a malformed number is one sentence naming it."""

        def number(name: str, kind: Callable[[str], T], default: T, low: T) -> T:
            raw = environ.get(f"GRPOD_{name}")
            if raw is None or not raw.strip():
                return default
            try:
                value = kind(raw)
            except ValueError:
                raise ConfigError(f"GRPOD_{name}={raw} is not a number; unset it or give one.") from None
            if value < low:
                raise ConfigError(f"GRPOD_{name}={raw} must be at least {low}.")
            return value

        home = environ.get("GRPOD_HOME")
        return cls(
            broker_url=environ.get("GRPOD_BROKER_URL") or None,
            home=Path(home).expanduser() if home else default_home(),
            queue_prefix=environ.get("GRPOD_QUEUE_PREFIX") or QUEUE_PREFIX,
            delivery_limit=number("DELIVERY_LIMIT", int, DELIVERY_LIMIT, 1),
            publish_timeout=number("PUBLISH_TIMEOUT", float, PUBLISH_TIMEOUT, 0.001),
            publish_retries=number("PUBLISH_RETRIES", int, PUBLISH_RETRIES, 0),
            max_event_bytes=number("MAX_EVENT_BYTES", int, Limits.max_event_bytes, 1024),
            max_query_bytes=number("MAX_QUERY_BYTES", int, Limits.max_query_bytes, 64),
            api_url=environ.get("GRPOD_API_URL") or None,
            api_token=environ.get("GRPOD_API_TOKEN") or None,
        )
