"""The wire events (trace, reward): their Python types and their validation.

The JSON Schemas in ``schema/events`` are the contract; these types follow
them, and a test checks that both accept and refuse the same events. Parsing
never raises on bad input: it returns a ``Rejection`` with a reason code and
one sentence of detail, so the caller can store it and move on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

import orjson
from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

SCHEMA_VERSION = 1
MAX_INT4 = 2**31 - 1  # library versions are PostgreSQL integers
DOMAIN_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
TRACE_ID_PATTERN = r"^[^\u0000-\u001f\u007f]{1,128}$"
SOURCE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"


class RejectReason(StrEnum):
    """Why an event was not stored. Every rejected event carries exactly one."""

    UNPARSABLE = "unparsable"  # not UTF-8 JSON, or not a JSON object
    SCHEMA_VIOLATION = "schema_violation"
    UNKNOWN_SCHEMA_VERSION = "unknown_schema_version"
    BAD_DOMAIN = "bad_domain"
    NON_FINITE_REWARD = "non_finite_reward"
    EVENT_TOO_LARGE = "event_too_large"
    QUERY_TOO_LARGE = "query_too_large"
    CONFLICT = "conflict"  # same idempotency key, different content
    DEAD_LETTERED = "dead_lettered"  # delivered too often without being stored
    REWARD_EXPIRED = "reward_expired"  # its trace never came
    PROCESSING_ERROR = "processing_error"  # storing it failed on its own


def _timestamp(value: Any) -> Any:
    """RFC 3339 text, as on the wire (strict mode would refuse text for a datetime)."""
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{value[:40]!r} is not an RFC 3339 date-time such as 2026-11-24T10:00:00Z") from None
    raise ValueError("must be an RFC 3339 date-time string such as 2026-11-24T10:00:00Z")


Timestamp = Annotated[AwareDatetime, BeforeValidator(_timestamp)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class Message(BaseModel):
    """An OpenAI-style chat message; other fields an SDK adds are kept."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[Any] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class TraceEvent(_Strict):
    type: Literal["trace"]
    schema_version: Literal[1]
    trace_id: str = Field(pattern=TRACE_ID_PATTERN)
    domain: str = Field(pattern=DOMAIN_PATTERN.pattern)
    query: str = Field(min_length=1)
    trajectory: list[Message]
    answer: str
    library_version: int | None = Field(default=None, ge=0, le=MAX_INT4)
    created_at: Timestamp
    metadata: dict[str, Any] | None = None


class RewardEvent(_Strict):
    type: Literal["reward"]
    schema_version: Literal[1]
    trace_id: str = Field(pattern=TRACE_ID_PATTERN)
    value: float
    source: str = Field(pattern=SOURCE_PATTERN)
    critique: str | None = None
    ground_truth: str | None = None
    created_at: Timestamp


Event = TraceEvent | RewardEvent


@dataclass(frozen=True)
class Limits:
    max_event_bytes: int = 1024 * 1024
    max_query_bytes: int = 32 * 1024


@dataclass(frozen=True)
class Accepted:
    event: Event
    content_hash: bytes  # of the canonical JSON: equal events hash equal, however serialised
    document: dict[str, Any]  # the event as received (parsed JSON), e.g. to store the trajectory as sent


@dataclass(frozen=True)
class Rejection:
    reason: RejectReason
    detail: str
    trace_id: str | None = None
    domain: str | None = None  # the domain the event named, where it named a valid one


Parsed = Accepted | Rejection


def parse_event(raw: bytes, limits: Limits) -> Parsed:
    """Parse and validate one event as received from the wire."""
    if len(raw) > limits.max_event_bytes:
        return Rejection(
            RejectReason.EVENT_TOO_LARGE,
            f"the event is {len(raw)} bytes; the limit is {limits.max_event_bytes} (GRPOD_MAX_EVENT_BYTES)",
        )
    try:
        document = orjson.loads(raw)  # strict: UTF-8 only, no NaN, 64-bit integers
    except orjson.JSONDecodeError:
        # Rare: say precisely what is wrong (the standard parser also reads NaN and big
        # integers, which validation then refuses with their own reasons).
        try:
            document = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            return Rejection(RejectReason.UNPARSABLE, f"not UTF-8 JSON: {error}")
        except RecursionError:
            return Rejection(RejectReason.UNPARSABLE, "JSON nested too deeply")
    if not isinstance(document, dict):
        return Rejection(RejectReason.UNPARSABLE, f"a JSON {type(document).__name__} is not an event object")
    if b"\\u0000" in raw and _has_nul(document):
        return Rejection(
            RejectReason.SCHEMA_VIOLATION,
            "a string contains the NUL character (\\u0000), which PostgreSQL cannot store",
        )
    return validate_event(document, limits)


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(item) for item in value)
    return False


def validate_event(document: dict[str, Any], limits: Limits) -> Parsed:
    parsed = _validate(document, limits)
    domain = document.get("domain")
    if isinstance(parsed, Rejection) and isinstance(domain, str) and DOMAIN_PATTERN.match(domain):
        return dataclasses.replace(parsed, domain=domain)
    return parsed


def _validate(document: dict[str, Any], limits: Limits) -> Parsed:
    trace_id = document.get("trace_id") if isinstance(document.get("trace_id"), str) else None
    kind = document.get("type")
    if kind not in ("trace", "reward"):
        return Rejection(RejectReason.SCHEMA_VIOLATION, f"type is {kind!r}; it must be 'trace' or 'reward'", trace_id)
    if "schema_version" not in document:
        return Rejection(RejectReason.SCHEMA_VIOLATION, "schema_version is missing", trace_id)
    version = document["schema_version"]
    if version != SCHEMA_VERSION or isinstance(version, bool):
        return Rejection(
            RejectReason.UNKNOWN_SCHEMA_VERSION,
            f"schema_version {version!r} is not known; this grpod reads version {SCHEMA_VERSION}",
            trace_id,
        )
    if kind == "trace":
        domain = document.get("domain")
        if isinstance(domain, str) and not DOMAIN_PATTERN.match(domain):
            return Rejection(
                RejectReason.BAD_DOMAIN,
                f"domain {domain[:80]!r} must match {DOMAIN_PATTERN.pattern} (lower case, digits, _ . -)",
                trace_id,
            )
        query = document.get("query")
        if isinstance(query, str):
            size = len(query.encode("utf-8", errors="surrogatepass"))  # exact even for bad input
            if size > limits.max_query_bytes:
                return Rejection(
                    RejectReason.QUERY_TOO_LARGE,
                    f"the query is {size} bytes; the limit is {limits.max_query_bytes} (GRPOD_MAX_QUERY_BYTES)",
                    trace_id,
                )
    else:
        value = document.get("value")
        if isinstance(value, float) and not math.isfinite(value):
            return Rejection(RejectReason.NON_FINITE_REWARD, f"value is {value}; a reward must be finite", trace_id)
    model = TraceEvent if kind == "trace" else RewardEvent
    try:
        event: Event = model.model_validate(document)
    except ValidationError as error:
        return Rejection(RejectReason.SCHEMA_VIOLATION, describe(error), trace_id)
    try:
        digest = content_hash(document)
    except UnicodeEncodeError:
        return Rejection(RejectReason.UNPARSABLE, "a string contains a lone UTF-16 surrogate", trace_id)
    return Accepted(event=event, content_hash=digest, document=document)


def describe(error: ValidationError) -> str:
    """The first problem of a validation error as one sentence."""
    first = error.errors(include_url=False)[0]
    where = ".".join(str(part) for part in first["loc"]) or "the event"
    more = error.error_count() - 1
    suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    return f"{where}: {first['msg']}{suffix}"


def canonical_json(document: dict[str, Any]) -> bytes:
    """One byte string per distinct event, however it was serialised (raises on lone surrogates)."""
    try:
        return orjson.dumps(document, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError as error:  # a lone surrogate, or an integer beyond 64 bits
        if isinstance(error.__cause__, UnicodeEncodeError) or "surrogates" in str(error):
            raise UnicodeEncodeError("utf-8", "", 0, 1, "lone surrogate") from None
        return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def content_hash(document: dict[str, Any]) -> bytes:
    return hashlib.sha256(canonical_json(document)).digest()


def event_to_json(event: Event) -> dict[str, Any]:
    """The wire form of an event (what an SDK publishes)."""
    document = event.model_dump(mode="json", exclude_none=True)
    return document


def utc_iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")
