from __future__ import annotations

import json

import pytest

from grpod.schema.events import Accepted, Limits, Rejection, RejectReason, RewardEvent, TraceEvent, parse_event

from ..factories import raw, reward, trace

LIMITS = Limits(max_event_bytes=64 * 1024, max_query_bytes=1024)


def _rejected(payload: bytes) -> Rejection:
    result = parse_event(payload, LIMITS)
    assert isinstance(result, Rejection), result
    return result


def test_a_valid_trace_is_accepted() -> None:
    result = parse_event(raw(trace()), LIMITS)
    assert isinstance(result, Accepted)
    assert isinstance(result.event, TraceEvent)
    assert result.event.domain == "support"
    assert result.event.trajectory[1].tool_calls is not None
    assert result.event.created_at.tzinfo is not None


def test_a_valid_reward_is_accepted_and_an_integer_value_is_a_number() -> None:
    result = parse_event(raw(reward(value=1)), LIMITS)
    assert isinstance(result, Accepted)
    assert isinstance(result.event, RewardEvent)
    assert result.event.value == 1.0


def test_optional_fields_may_be_left_out() -> None:
    minimal = trace()
    for name in ("library_version", "metadata"):
        del minimal[name]
    assert isinstance(parse_event(raw(minimal), LIMITS), Accepted)


def test_the_content_hash_ignores_key_order_and_spacing() -> None:
    event = trace()
    reordered = json.dumps(dict(reversed(list(event.items()))), indent=2).encode()
    first, second = parse_event(raw(event), LIMITS), parse_event(reordered, LIMITS)
    assert isinstance(first, Accepted) and isinstance(second, Accepted)
    assert first.content_hash == second.content_hash
    changed = parse_event(raw(trace(answer="something else")), LIMITS)
    assert isinstance(changed, Accepted) and changed.content_hash != first.content_hash


@pytest.mark.parametrize(
    ("payload", "reason", "detail"),
    [
        (b"\xff\xfe not utf-8", RejectReason.UNPARSABLE, "not UTF-8 JSON"),
        (b'{"type": "trace", ', RejectReason.UNPARSABLE, "not UTF-8 JSON"),
        (b"[1, 2, 3]", RejectReason.UNPARSABLE, "a JSON list is not an event object"),
        (b'"just a string"', RejectReason.UNPARSABLE, "a JSON str is not an event object"),
        (b"[" * 60_000, RejectReason.UNPARSABLE, ""),
        (raw(trace(type="span")), RejectReason.SCHEMA_VIOLATION, "type is 'span'"),
        (raw({k: v for k, v in trace().items() if k != "query"}), RejectReason.SCHEMA_VIOLATION, "query"),
        (raw(trace(query="")), RejectReason.SCHEMA_VIOLATION, "query"),
        (raw(trace(trajectory="not a list")), RejectReason.SCHEMA_VIOLATION, "trajectory"),
        (raw(trace(trajectory=[{"role": "robot", "content": "x"}])), RejectReason.SCHEMA_VIOLATION, "role"),
        (raw(trace(extra_field=1)), RejectReason.SCHEMA_VIOLATION, "extra_field"),
        (raw(trace(created_at="yesterday")), RejectReason.SCHEMA_VIOLATION, "RFC 3339"),
        (raw(trace(created_at="2026-11-24T10:00:00")), RejectReason.SCHEMA_VIOLATION, "timezone"),
        (raw(trace(created_at=1764000000)), RejectReason.SCHEMA_VIOLATION, "created_at"),
        (raw(trace(library_version=-1)), RejectReason.SCHEMA_VIOLATION, "library_version"),
        (raw(trace(library_version=2**31)), RejectReason.SCHEMA_VIOLATION, "library_version"),
        (raw(trace(library_version="7")), RejectReason.SCHEMA_VIOLATION, "library_version"),
        (raw(trace(trace_id="")), RejectReason.SCHEMA_VIOLATION, "trace_id"),
        (raw(trace(trace_id="x" * 129)), RejectReason.SCHEMA_VIOLATION, "trace_id"),
        (raw(trace(trace_id="tab\there")), RejectReason.SCHEMA_VIOLATION, "trace_id"),
        (raw(trace(answer="a\u0000b")), RejectReason.SCHEMA_VIOLATION, "NUL character"),
        (b'{"type":"trace","answer":"x"}', RejectReason.SCHEMA_VIOLATION, "schema_version is missing"),
        (raw(reward(value="1.0")), RejectReason.SCHEMA_VIOLATION, "value"),
        (raw(reward(value=True)), RejectReason.SCHEMA_VIOLATION, "value"),
        (raw(reward(source="")), RejectReason.SCHEMA_VIOLATION, "source"),
        (raw(reward(source="has space")), RejectReason.SCHEMA_VIOLATION, "source"),
        (raw(trace(schema_version=2)), RejectReason.UNKNOWN_SCHEMA_VERSION, "schema_version 2 is not known"),
        (raw(trace(schema_version="1")), RejectReason.UNKNOWN_SCHEMA_VERSION, "schema_version '1'"),
        (raw(trace(schema_version=True)), RejectReason.UNKNOWN_SCHEMA_VERSION, "schema_version True"),
        (raw(reward(schema_version=None)), RejectReason.UNKNOWN_SCHEMA_VERSION, "None"),
        (raw(trace(domain="Support")), RejectReason.BAD_DOMAIN, "domain 'Support' must match"),
        (raw(trace(domain="-support")), RejectReason.BAD_DOMAIN, "must match"),
        (raw(trace(domain="a" * 65)), RejectReason.BAD_DOMAIN, "must match"),
        (raw(trace(domain="sup port")), RejectReason.BAD_DOMAIN, "must match"),
        (b'{"type":"reward","schema_version":1,"trace_id":"t","value":NaN}', RejectReason.NON_FINITE_REWARD, "nan"),
        (
            b'{"type":"reward","schema_version":1,"trace_id":"t","value":Infinity}',
            RejectReason.NON_FINITE_REWARD,
            "inf",
        ),
        (b'{"type":"reward","schema_version":1,"trace_id":"t","value":-Infinity}', RejectReason.NON_FINITE_REWARD, ""),
        (b'{"type":"reward","schema_version":1,"trace_id":"t","value":1e400}', RejectReason.NON_FINITE_REWARD, ""),
        (raw(trace(answer="x" * 70_000)), RejectReason.EVENT_TOO_LARGE, "the limit is 65536"),
        (raw(trace(query="é" * 600)), RejectReason.QUERY_TOO_LARGE, "the query is 1200 bytes; the limit is 1024"),
    ],
)
def test_every_reason_has_a_clear_detail(payload: bytes, reason: RejectReason, detail: str) -> None:
    rejection = _rejected(payload)
    assert rejection.reason is reason, rejection
    assert detail in rejection.detail
    assert "\n" not in rejection.detail


def test_utf16_is_not_utf8() -> None:
    assert _rejected(raw(trace()).decode().encode("utf-16")).reason is RejectReason.UNPARSABLE


def test_a_lone_surrogate_is_refused() -> None:
    rejection = _rejected(
        b'{"type":"reward","schema_version":1,"trace_id":"t","value":1,"source":"s",'
        b'"created_at":"2026-11-24T10:00:00Z","critique":"\\ud800"}'
    )
    assert rejection.reason is RejectReason.UNPARSABLE
    assert "surrogate" in rejection.detail


def test_the_trace_id_is_kept_with_a_rejection_when_there_is_one() -> None:
    assert _rejected(raw(trace(trace_id="t-9", domain="BAD"))).trace_id == "t-9"
    assert _rejected(b"not json").trace_id is None


def test_a_rejection_keeps_the_domain_the_event_named_when_it_is_a_valid_one() -> None:
    # The dashboard counts each domain's rejected events by it.
    assert _rejected(raw(trace(query=1))).domain == "support"
    assert _rejected(raw(trace(domain="BAD"))).domain is None
    listed = trace(query=1)
    listed["domain"] = ["support"]
    assert _rejected(raw(listed)).domain is None
    assert _rejected(raw(reward(value="high"))).domain is None  # a reward's comes from its trace, when stored
    assert _rejected(b"not json").domain is None


def test_the_detail_counts_further_problems() -> None:
    rejection = _rejected(raw(trace(query=1, answer=2, trajectory=3)))
    assert "(and 2 more problems)" in rejection.detail
