"""The JSON Schemas in schema/events are the contract; the Python types must agree with them.

Property-based: hypothesis builds valid events and mutates them (drop a field, change a type,
add a field, break a value) and the two validators must give the same verdict. Random bytes
must never make the validator raise.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from importlib import resources
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator, FormatChecker

from grpod.schema.events import Accepted, Limits, RewardEvent, TraceEvent, parse_event, validate_event

BIG = Limits(max_event_bytes=10**9, max_query_bytes=10**9)  # sizes are not the schema's business


def _load(name: str) -> dict[str, Any]:
    text = resources.files("grpod.schema").joinpath(f"events/{name}.schema.json").read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


formats = FormatChecker()


@formats.checks("date-time", raises=ValueError)
def _date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True
    return datetime.fromisoformat(value).tzinfo is not None


SCHEMAS = {"trace": _load("trace"), "reward": _load("reward")}
VALIDATORS = {kind: Draft202012Validator(schema, format_checker=formats) for kind, schema in SCHEMAS.items()}


def schema_accepts(document: dict[str, Any]) -> bool:
    kind = document.get("type")
    if not isinstance(kind, str) or kind not in VALIDATORS:
        return False
    return bool(VALIDATORS[kind].is_valid(document))


def python_accepts(document: dict[str, Any]) -> bool:
    return isinstance(validate_event(document, BIG), Accepted)


@pytest.mark.parametrize(("kind", "model"), [("trace", TraceEvent), ("reward", RewardEvent)])
def test_fields_and_required_fields_are_the_same(kind: str, model: type[TraceEvent | RewardEvent]) -> None:
    schema = SCHEMAS[kind]
    assert set(schema["properties"]) == set(model.model_fields)
    required = {name for name, field in model.model_fields.items() if field.is_required()}
    assert set(schema["required"]) == required
    assert schema["additionalProperties"] is False


def test_message_fields_are_the_same() -> None:
    from grpod.schema.events import Message

    message_schema = SCHEMAS["trace"]["$defs"]["message"]
    assert set(message_schema["properties"]) == set(Message.model_fields)
    assert set(message_schema["required"]) == {n for n, f in Message.model_fields.items() if f.is_required()}


def test_the_schemas_themselves_are_valid() -> None:
    for schema in SCHEMAS.values():
        Draft202012Validator.check_schema(schema)


# Strategies -----------------------------------------------------------------------------------

text = st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=40)
trace_ids = st.from_regex(r"\A[A-Za-z0-9_.:-]{1,40}\Z")
domains = st.from_regex(r"\A[a-z0-9][a-z0-9_.-]{0,20}\Z")
timestamps = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)).map(
    lambda moment: moment.isoformat() + "Z"
)
messages = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant", "tool", "developer"])},
    optional={
        "content": st.one_of(st.none(), text),
        "name": text,
        "tool_call_id": text,
        "tool_calls": st.lists(st.fixed_dictionaries({"id": text}), max_size=2),
    },
)
traces = st.fixed_dictionaries(
    {
        "type": st.just("trace"),
        "schema_version": st.just(1),
        "trace_id": trace_ids,
        "domain": domains,
        "query": text.filter(bool),
        "trajectory": st.lists(messages, max_size=4),
        "answer": text,
        "created_at": timestamps,
    },
    optional={
        "library_version": st.one_of(st.none(), st.integers(min_value=0, max_value=2**31 - 1)),
        "metadata": st.one_of(st.none(), st.dictionaries(text, st.integers(), max_size=3)),
    },
)
rewards = st.fixed_dictionaries(
    {
        "type": st.just("reward"),
        "schema_version": st.just(1),
        "trace_id": trace_ids,
        "value": st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-(10**6), 10**6)),
        "source": st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.:-]{0,20}\Z"),
        "created_at": timestamps,
    },
    optional={"critique": st.one_of(st.none(), text), "ground_truth": st.one_of(st.none(), text)},
)
events = st.one_of(traces, rewards)
odd_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 2**40),
    st.floats(allow_nan=False, allow_infinity=False),
    text,
    st.lists(st.integers(), max_size=2),
    st.dictionaries(text, st.integers(), max_size=2),
)


@st.composite
def mutated(draw: st.DrawFn) -> dict[str, Any]:
    document = dict(draw(events))
    keys = sorted(document)
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        action = draw(st.sampled_from(["drop", "retype", "add", "message"]))
        if action == "drop" and keys:
            document.pop(draw(st.sampled_from(keys)), None)
        elif action == "retype" and keys:
            document[draw(st.sampled_from(keys))] = draw(odd_values)
        elif action == "add":
            document[draw(text)] = draw(odd_values)
        elif action == "message":
            trajectory = document.get("trajectory")
            if isinstance(trajectory, list):
                document["trajectory"] = [*trajectory, draw(st.dictionaries(text, odd_values, max_size=3))]
    return document


# Properties -----------------------------------------------------------------------------------


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(events)
def test_valid_events_are_accepted_by_both(document: dict[str, Any]) -> None:
    assert schema_accepts(document)
    assert python_accepts(document)


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_events_get_the_same_verdict(document: dict[str, Any]) -> None:
    # Non-finite numbers cannot be written in standard JSON; grpod refuses them on top of the schema.
    value = document.get("value")
    if isinstance(value, float) and not math.isfinite(value):
        return
    assert schema_accepts(document) == python_accepts(document), document


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_random_bytes_never_raise(payload: bytes) -> None:
    result = parse_event(payload, BIG)
    assert not isinstance(result, Accepted)


@settings(max_examples=300)
@given(events, st.integers(min_value=0, max_value=200), st.binary(min_size=1, max_size=3))
def test_corrupted_serialisations_never_raise(document: dict[str, Any], position: int, junk: bytes) -> None:
    payload = json.dumps(document).encode()
    position = min(position, len(payload))
    corrupted = payload[:position] + junk + payload[position:]
    parse_event(corrupted, BIG)  # must return, accepted or rejected, whatever the bytes
