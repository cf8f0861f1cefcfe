"""grpod's settings: one typed object, from GRPOD_* variables or a TOML file.

Precedence, highest first: explicit arguments, environment variables
(``GRPOD_`` prefix), the TOML file named by ``GRPOD_CONFIG``, the defaults.
An unset database or broker means embedded mode.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from grpod.schema.errors import ConfigError
from grpod.schema.events import Limits
from grpod.schema.spool import spool_folder
from grpod.schema.urls import redact
from grpod.sdk import settings as sdk_settings
from grpod.sdk.settings import default_home

ENV_PREFIX = "GRPOD_"
CONFIG_ENV = "GRPOD_CONFIG"

DATABASE_SCHEMES = ("postgresql", "postgres")
BROKER_SCHEMES = ("amqp", "amqps", "pyamqp", "filesystem", "memory")
URL_FIELDS = ("database_url", "broker_url", "llm_base_url", "policy_base_url", "embeddings")


class Settings(BaseSettings):
    """Every knob grpod has. The README lists each with its default."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="ignore",
        validate_default=True,
    )

    database_url: str | None = Field(
        default=None,
        description="PostgreSQL with pgvector; unset: the embedded server under GRPOD_HOME.",
    )
    broker_url: str | None = Field(
        default=None,
        description="amqp://... for RabbitMQ; unset: the embedded filesystem broker under GRPOD_HOME.",
    )
    home: Path = Field(
        default_factory=default_home,
        description="Folder for embedded data: database, broker, beat schedule, locks.",
    )
    llm_base_url: str | None = Field(
        default=None,
        description="OpenAI-compatible endpoint; unset: the embedded SmolLM2-135M-Instruct.",
    )
    llm_model: str | None = Field(default=None, description="Model name at GRPOD_LLM_BASE_URL.")
    llm_api_key: SecretStr | None = Field(default=None, description="API key for GRPOD_LLM_BASE_URL.")
    llm_timeout: float = Field(
        default=120.0, gt=0, le=3600, description="Seconds one request to GRPOD_LLM_BASE_URL may take."
    )
    llm_max_retries: int = Field(
        default=3,
        ge=0,
        le=10,
        description="Retries of a request to GRPOD_LLM_BASE_URL that timed out, failed to connect or got 429/5xx.",
    )
    llm_threads: int | None = Field(
        default=None,
        ge=1,
        le=256,
        description="CPU threads of the bundled model per process (default: the cores, shared by a worker).",
    )
    # Paper mode's policy (`grpod train`, `grpod eval`): the model that answers the questions.
    policy_base_url: str | None = Field(
        default=None,
        description="OpenAI-compatible endpoint of the policy that rolls out (default: GRPOD_LLM_BASE_URL's).",
    )
    policy_model: str | None = Field(
        default=None, description="Model name at the policy endpoint (default: GRPOD_LLM_MODEL)."
    )
    policy_api_key: SecretStr | None = Field(
        default=None, description="API key of the policy (default: GRPOD_LLM_API_KEY)."
    )
    # Prices, per million tokens, for the running cost `grpod train` shows (unset: no cost shown).
    llm_price_input: float | None = Field(default=None, ge=0, description="Price of a million input tokens of the LLM.")
    llm_price_output: float | None = Field(
        default=None, ge=0, description="Price of a million output tokens of the LLM."
    )
    policy_price_input: float | None = Field(
        default=None, ge=0, description="Price of a million input tokens of the policy (default: the LLM's)."
    )
    policy_price_output: float | None = Field(
        default=None, ge=0, description="Price of a million output tokens of the policy (default: the LLM's)."
    )
    embeddings: str = Field(
        default="local",
        description="'local' (bundled all-MiniLM-L6-v2) or an OpenAI-compatible embeddings URL.",
    )
    embeddings_model: str | None = Field(
        default=None,
        description="Model name at the GRPOD_EMBEDDINGS URL (required with a URL; ignored for 'local').",
    )
    embeddings_api_key: SecretStr | None = Field(
        default=None, description="API key for the GRPOD_EMBEDDINGS URL (default: GRPOD_LLM_API_KEY)."
    )
    embeddings_timeout: float = Field(default=30.0, gt=0, le=600, description="Seconds per embeddings request.")
    embeddings_batch_size: int = Field(default=64, ge=1, le=2048, description="Texts embedded per call.")
    queue_prefix: str = Field(
        default=sdk_settings.QUEUE_PREFIX,
        pattern=r"^[a-z][a-z0-9_.-]{0,31}$",
        description="Prefix of every queue and exchange name on the broker.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO")
    log_format: Literal["auto", "json", "console"] = Field(
        default="auto",
        description="'auto': pretty in a terminal, JSON lines otherwise.",
    )
    llm_concurrency: int = Field(
        default=16,
        ge=1,
        le=1024,
        description="LLM calls in flight per worker process; a threads worker runs this many tasks at once.",
    )
    llm_max_rpm: int | None = Field(
        default=None, ge=1, description="Requests per minute to the LLM endpoint, shared by every worker."
    )
    llm_max_tpm: int | None = Field(
        default=None, ge=1, description="Tokens per minute to the LLM endpoint, shared by every worker."
    )
    database_pool_size: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description="Database connections per process at most (default: 4; a threads worker: its threads + 2).",
    )
    worker_concurrency: int = Field(
        default_factory=lambda: os.cpu_count() or 1,
        ge=1,
        le=256,
        description="Worker processes per `grpod worker` (default: the number of cores).",
    )
    task_max_retries: int = Field(
        default=8, ge=0, le=100, description="Retries of a failing task before it is given up."
    )
    retry_backoff_max: int = Field(
        default=600, ge=1, description="Upper bound in seconds of the exponential retry backoff."
    )
    delivery_limit: int = Field(
        default=sdk_settings.DELIVERY_LIMIT,
        ge=1,
        le=100,
        description="Deliveries of one message before RabbitMQ dead-letters it (quorum queues).",
    )
    shutdown_timeout: float = Field(
        default=10.0,
        gt=0,
        le=600,
        description="Seconds `grpod up` waits for its children to stop before killing them.",
    )
    api_host: str = Field(default="127.0.0.1", description="Where `grpod api` (and `grpod up`) listens.")
    api_port: int = Field(
        default=8080, ge=0, le=65535, description="The HTTP API's port (0: do not serve it in `grpod up`)."
    )
    api_max_body_bytes: int = Field(
        default=10 * 1024 * 1024,
        ge=1024,
        le=1024 * 1024 * 1024,
        description="The largest request body the HTTP API reads (POST /v1/events); larger is 413.",
    )
    heartbeat_seconds: float = Field(
        default=30.0, gt=0, le=3600, description="How often beat asks a worker to record that both are alive."
    )
    maintenance_seconds: float = Field(
        default=600.0,
        ge=1,
        le=7 * 24 * 3600,
        description="How often beat runs the maintenance sweep (expiry, retention, pruning, lost work).",
    )
    consolidate_seconds: float = Field(
        default=3600.0,
        ge=1,
        le=7 * 24 * 3600,
        description="How often beat consolidates every library (merges near-duplicates, keeps the budgets).",
    )
    rejected_retention_seconds: int = Field(
        default=30 * 24 * 3600, ge=60, description="How long rejected events are kept before the sweep prunes them."
    )
    heartbeat_retention_seconds: int = Field(
        default=7 * 24 * 3600,
        ge=60,
        description="How long a process's heartbeat row is kept after it was last seen.",
    )
    max_event_bytes: int = Field(
        default=Limits.max_event_bytes, ge=1024, le=64 * 1024 * 1024, description="Largest accepted event, in bytes."
    )
    max_query_bytes: int = Field(
        default=Limits.max_query_bytes, ge=64, le=16 * 1024 * 1024, description="Largest accepted query, in bytes."
    )
    rejected_payload_bytes: int = Field(
        default=2 * 1024 * 1024,
        ge=1024,
        description="Bytes of a rejected event's payload kept for inspection and replay.",
    )
    reward_ttl_seconds: int = Field(
        default=7 * 24 * 3600,
        ge=60,
        description="How long a reward waits for its trace before it is expired into the rejected store.",
    )
    ingest_batch_size: int = Field(
        default=500, ge=1, le=10_000, description="Events stored per transaction by the ingest consumer."
    )
    ingest_batch_seconds: float = Field(
        default=0.2, gt=0, le=60, description="Longest wait to fill a batch before storing what has come."
    )
    publish_timeout: float = Field(
        default=sdk_settings.PUBLISH_TIMEOUT,
        gt=0,
        le=300,
        description="SDK: seconds to wait for the broker to confirm a publish.",
    )
    publish_retries: int = Field(
        default=sdk_settings.PUBLISH_RETRIES,
        ge=0,
        le=20,
        description="SDK: attempts after the first before a publish fails.",
    )
    database_keepalive_seconds: int = Field(
        default=30,
        ge=0,
        le=3600,
        description="The database server probes a grpod connection idle this long, then every third of it, "
        "three times: a host that died without closing its connections (power or network lost) has its "
        "sessions, and the locks they hold, ended within about twice this. 0: the operating system's default "
        "(about two hours).",
    )
    database_connect_timeout: int = Field(
        default=10, ge=1, le=300, description="Seconds to wait for PostgreSQL to answer."
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get(CONFIG_ENV)
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config_file)))
        return tuple(sources)

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        parts = urlsplit(value)
        if parts.scheme not in DATABASE_SCHEMES:
            raise ValueError("is not a PostgreSQL URL; use postgresql://user:password@host:5432/dbname")
        _require_numeric_port(value)
        return value

    @field_validator("broker_url")
    @classmethod
    def _check_broker_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        scheme = urlsplit(value).scheme
        if scheme not in BROKER_SCHEMES:
            raise ValueError(f"has scheme {scheme!r}; use amqp://user:password@host:5672/vhost for RabbitMQ")
        _require_numeric_port(value)
        return value

    @field_validator("embeddings")
    @classmethod
    def _check_embeddings(cls, value: str) -> str:
        if value == "local" or urlsplit(value).scheme in ("http", "https"):
            return value
        raise ValueError("must be 'local' or an http(s) URL of an OpenAI-compatible embeddings API")

    @field_validator("llm_base_url", "policy_base_url")
    @classmethod
    def _check_llm_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if urlsplit(value).scheme not in ("http", "https"):
            raise ValueError("must be an http(s) URL of an OpenAI-compatible API")
        return value

    def __repr_args__(self) -> Any:
        # URLs may carry passwords: a repr (a log line, a traceback) shows them redacted.
        for name, value in super().__repr_args__():
            yield name, redact(value) if isinstance(value, str) and name in URL_FIELDS else value

    # Derived facts -------------------------------------------------------

    @property
    def embedded_database(self) -> bool:
        return self.database_url is None

    @property
    def embedded_broker(self) -> bool:
        return self.broker_url is None

    @property
    def pgdata(self) -> Path:
        return self.home / "pgdata"

    @property
    def broker_folder(self) -> Path:
        return self.home / "broker"

    @property
    def beat_schedule_file(self) -> Path:
        return self.home / "beat-schedule"

    @property
    def event_spool(self) -> Path:
        """Where the embedded broker keeps events waiting to be ingested."""
        return spool_folder(self.home)

    def limits(self) -> Limits:
        return Limits(max_event_bytes=self.max_event_bytes, max_query_bytes=self.max_query_bytes)

    @property
    def up_lock_file(self) -> Path:
        return self.home / "up.lock"

    def effective_broker_url(self) -> str:
        return self.broker_url or "filesystem://localhost/"


def _require_numeric_port(url: str) -> None:
    try:
        port = urlsplit(url).port
    except ValueError:
        port = 0
    if port == 0:
        raise ValueError("has a port that is not a number from 1 to 65535")


def env_name(field: str) -> str:
    return f"{ENV_PREFIX}{field.upper()}"


def load_settings(**overrides: Any) -> Settings:
    """Build the settings, turning a validation failure into one clear sentence."""
    config_file = os.environ.get(CONFIG_ENV)
    if config_file and not Path(config_file).is_file():
        raise ConfigError(f"{CONFIG_ENV}={config_file} is not a readable TOML file; fix the path or unset it.")
    try:
        return Settings(**overrides)
    except ValidationError as error:
        raise ConfigError(describe_validation_error(error)) from None
    except (OSError, ValueError) as error:  # a TOML file that does not parse
        raise ConfigError(f"{CONFIG_ENV}={config_file} could not be read: {error}.") from None


def describe_validation_error(error: ValidationError) -> str:
    first = error.errors()[0]
    field = str(first["loc"][0]) if first["loc"] else "settings"
    value = first.get("input")
    secret = field.endswith("api_key") or value is None
    shown = "" if secret else f"={redact(str(value))}"
    if first["type"] == "value_error":  # our own validators phrase the whole remedy
        return f"{env_name(field)}{shown} {str(first['msg']).removeprefix('Value error, ')}."
    return f"{env_name(field)}{shown} is invalid: {first['msg']}."
