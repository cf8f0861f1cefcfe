"""The LLM port without a model: tolerant JSON extraction, validation, and choosing the adapter."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from grpod.daemon import ports
from grpod.daemon.ports import llm_from_settings, process_llm
from grpod.daemon.settings import load_settings
from grpod.schema.errors import ConfigError
from grpod.workers import llm
from grpod.workers.llm import (
    Completion,
    OpenAILLM,
    api_base,
    extract_json,
    parse_answer,
    process_slots,
    validate,
)

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "operation": {"enum": ["ADD", "UPDATE", "DELETE", "NONE"]},
        "id": {"type": "integer"},
        "text": {"type": "string"},
    },
    "required": ["operation"],
}


class FakeLocalLLM:
    """Stands in for the local model, which unit tests never load."""

    model = "SmolLM2-135M-Instruct"

    def __init__(self, *, n_threads: int = 2) -> None:
        self.n_threads = n_threads

    def complete(
        self,
        messages: Sequence[Mapping[str, str]],
        *,
        schema: Mapping[str, Any] | None = None,
        max_tokens: int = 512,
        temperature: float = 0.0,
        seed: int | None = None,
    ) -> Completion:
        return Completion("", None, self.model, 0, 0, 0.0, None)


@pytest.fixture
def fake_local(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(llm, "LocalLLM", FakeLocalLLM)
    ports.forget()


# Tolerant extraction ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"operation": "ADD", "text": "x"}', {"operation": "ADD", "text": "x"}),
        ('  \n{"a": [1, 2, {"b": null}]}\n', {"a": [1, 2, {"b": None}]}),
        ('```json\n{"operation": "NONE"}\n```', {"operation": "NONE"}),
        ('Here it is:\n```\n{"operation": "DELETE", "id": 3}\n```\nDone.', {"operation": "DELETE", "id": 3}),
        ('Sure! The answer is {"operation": "UPDATE", "id": 2} as asked.', {"operation": "UPDATE", "id": 2}),
        ('I think {not json} but {"a": 1} is.', {"a": 1}),
        (
            '{"text": "use {braces} and } freely", "n": {"m": 1}} trailing',
            {"text": "use {braces} and } freely", "n": {"m": 1}},
        ),
        ('prefix {"q": "a \\"quoted\\" } brace", "k": 1} suffix', {"q": 'a "quoted" } brace', "k": 1}),
        ('{"a": "\\\\"} and more }', {"a": "\\"}),
    ],
)
def test_extract_json_finds_the_object(text: str, expected: dict[str, Any]) -> None:
    assert extract_json(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"operation": "ADD", "text": "Check the unit', {"operation": "ADD", "text": "Check the unit"}),
        ('{"a": 1, "b": [1, 2', {"a": 1, "b": [1, 2]}),
        ('{"a": {"b": {"c": "deep', {"a": {"b": {"c": "deep"}}}),
        ('{"a": 1, "b"', {"a": 1}),
        ('{"a": 1, "b":', {"a": 1}),
        ('{"a": 1, "b": tru', {"a": 1}),
        ('{"a": "ends in a backslash \\', {"a": "ends in a backslash "}),
        ('```json\n{"operation": "NONE", "text": "cut', {"operation": "NONE", "text": "cut"}),
        ('{"a": [{"x": 1}, {"y": "has } and ] insi', {"a": [{"x": 1}, {"y": "has } and ] insi"}]}),
    ],
)
def test_extract_json_repairs_a_truncated_object(text: str, expected: dict[str, Any]) -> None:
    assert extract_json(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "   ", "no json here", "[1, 2, 3]", '"a string"', "42", "{not json at all}", "} { ] [", "```json\n```"],
)
def test_extract_json_gives_none_for_garbage(text: str) -> None:
    assert extract_json(text) is None


def test_extract_json_prefers_the_whole_text_then_the_fence() -> None:
    fenced = 'Ignore {"a": 1}\n```json\n{"b": 2}\n```'
    assert extract_json(fenced) == {"b": 2}


# Validation ---------------------------------------------------------------------


def test_validate_accepts_a_valid_object() -> None:
    assert validate({"operation": "ADD", "text": "x"}, SCHEMA) is None


@pytest.mark.parametrize(
    ("data", "where", "why"),
    [
        ({}, "$", "'operation' is a required property"),
        ({"operation": "MERGE"}, "$.operation", "'MERGE' is not one of"),
        ({"operation": "UPDATE", "id": "two"}, "$.id", "'two' is not of type 'integer'"),
        ([1], "$", "is not of type 'object'"),
    ],
)
def test_validate_says_where_and_why_in_one_sentence(data: Any, where: str, why: str) -> None:
    message = validate(data, SCHEMA)
    assert message is not None
    assert message.startswith(f"the answer does not follow the schema at {where}: ")
    assert why in message
    assert message.endswith(".")
    assert "\n" not in message


def test_validate_uses_draft_2020_12() -> None:
    schema = {"type": "array", "prefixItems": [{"type": "integer"}], "items": False}
    assert validate([1], schema) is None
    assert validate([1, 2], schema) is not None


def test_parse_answer_gives_the_object_or_the_reason() -> None:
    assert parse_answer('{"operation": "NONE"}', None) == (None, None)  # no schema: no data asked for
    assert parse_answer('ok: {"operation": "NONE"}', SCHEMA) == ({"operation": "NONE"}, None)
    data, error = parse_answer('{"operation": 7}', SCHEMA)
    assert data is None
    assert error is not None and "$.operation" in error
    data, error = parse_answer("I cannot help with that.", SCHEMA)
    assert data is None
    assert error == "the answer holds no JSON object (it begins 'I cannot help with that.')."
    assert parse_answer("  ", SCHEMA) == (None, "the answer is empty, so it holds no JSON object.")


@pytest.mark.parametrize(
    ("url", "base"),
    [
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000/v1"),
        ("http://127.0.0.1:8000/", "http://127.0.0.1:8000/v1"),
        ("https://api.deepseek.com/v1", "https://api.deepseek.com/v1"),
        ("https://api.deepseek.com/v1/chat/completions", "https://api.deepseek.com/v1"),
        ("http://ollama:11434/v1/", "http://ollama:11434/v1"),
    ],
)
def test_api_base(url: str, base: str) -> None:
    assert api_base(url) == base


# Choosing the adapter -----------------------------------------------------------


def test_the_local_model_is_the_default(fake_local: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRPOD_LLM_BASE_URL", raising=False)
    chosen = llm_from_settings(load_settings())
    assert isinstance(chosen, FakeLocalLLM) and chosen.n_threads == (os.cpu_count() or 2)
    monkeypatch.setenv("GRPOD_LLM_THREADS", "1")  # what a prefork worker of as many processes as cores sets
    chosen = llm_from_settings(load_settings())
    assert isinstance(chosen, FakeLocalLLM) and chosen.n_threads == 1


def test_a_url_gives_the_openai_adapter_with_every_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRPOD_LLM_BASE_URL", "https://api.deepseek.com")
    monkeypatch.setenv("GRPOD_LLM_MODEL", "deepseek-chat")
    monkeypatch.setenv("GRPOD_LLM_API_KEY", "sk-llm-secret")
    chosen = llm_from_settings(load_settings())
    assert isinstance(chosen, OpenAILLM)
    assert chosen.url == "https://api.deepseek.com"
    assert chosen.model == "deepseek-chat"
    assert str(chosen._client.base_url) == "https://api.deepseek.com/v1/"
    assert chosen._client.api_key == "sk-llm-secret"
    assert "sk-llm-secret" not in repr(chosen)


def test_no_api_key_is_sent_as_unused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRPOD_LLM_BASE_URL", "http://vllm.internal:8000/v1")
    monkeypatch.setenv("GRPOD_LLM_MODEL", "qwen")
    monkeypatch.delenv("GRPOD_LLM_API_KEY", raising=False)
    chosen = llm_from_settings(load_settings())
    assert isinstance(chosen, OpenAILLM)
    assert chosen._client.api_key == "unused"


def test_a_url_without_a_model_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRPOD_LLM_BASE_URL", "https://user:pw-secret@llm.internal/v1")
    monkeypatch.delenv("GRPOD_LLM_MODEL", raising=False)
    with pytest.raises(ConfigError) as raised:
        llm_from_settings(load_settings())
    message = str(raised.value)
    assert message.startswith("GRPOD_LLM_MODEL must name the model at GRPOD_LLM_BASE_URL=https://user:***@llm.internal")
    assert "pw-secret" not in message
    assert "\n" not in message


def test_the_process_llm_is_built_once_and_forgotten(fake_local: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRPOD_LLM_BASE_URL", raising=False)
    try:
        first = process_llm()
        assert process_llm() is first
        ports.forget()
        assert process_llm() is not first
    finally:
        ports.forget()


def test_every_adapter_of_the_process_shares_one_concurrency_limit() -> None:
    one = OpenAILLM(base_url="http://127.0.0.1:9/v1", model="m")
    two = OpenAILLM(base_url="http://127.0.0.1:10/v1", model="n")
    assert one._slots is two._slots is process_slots(4)
    with pytest.raises(ValueError, match="at least 1"):
        process_slots(0)


def test_the_settings_set_the_calls_in_flight_and_the_shared_budget() -> None:
    from grpod.daemon.ports import llm_from_settings
    from grpod.daemon.settings import Settings
    from grpod.workers.llm_budget import SharedBudget

    plain = llm_from_settings(Settings(llm_base_url="http://127.0.0.1:9/v1", llm_model="m", llm_concurrency=16))
    assert isinstance(plain, OpenAILLM) and plain._slots is process_slots(16) and plain._budget is None
    limited = llm_from_settings(Settings(llm_base_url="http://127.0.0.1:9/v1", llm_model="m", llm_max_rpm=500))
    assert isinstance(limited, OpenAILLM) and isinstance(limited._budget, SharedBudget)
    assert (limited._budget.max_requests, limited._budget.max_tokens) == (500, None)
    assert limited._budget.endpoint == "http://127.0.0.1:9/v1 m"
