"""A scripted LLM for tests: answers each distillation step from a script, and counts the calls.

It recognises the step by its prompt (the system message of each template says what it asks),
so the real prompt rendering, parsing, validation and recording run around it. ``ScriptedLLM``
is the in-process port; ``ScriptedEndpoint`` serves the same script as an OpenAI-compatible HTTP
API on loopback, with faults (a status code, a stall past the client's timeout), so that the
real adapter runs too.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from grpod.workers.llm import Completion, parse_answer


@dataclass(frozen=True)
class Status:
    """An HTTP error answer instead of a completion (a 500, a 429, ...), with a Retry-After if given."""

    code: int
    retry_after: float | None = None


@dataclass(frozen=True)
class Stall:
    """No answer for this long (past the client's timeout, which then asks again), then ``then``."""

    seconds: float
    then: str = ""


@dataclass(frozen=True)
class Raw:
    """A body that is no OpenAI completion at all (an HTML error page from a proxy, say)."""

    body: str
    code: int = 200


Answer = str | Callable[[Sequence[Mapping[str, str]]], str]
Scripted = Answer | Status | Stall | Raw

STEP_MARKERS = {
    "summary": "Summarise the attempt",
    "advantage": "State at most",
    "operations": "Decide how the new experiences change the library",
    "consolidation": "Merge them into one consistent set",
    "merge": "say nearly the same thing",
    "rollout": "put your final answer within \\boxed{}",  # paper mode's policy (workers/prompts/rollout.md)
}


def step_of(messages: Sequence[Mapping[str, str]]) -> str:
    system = messages[0]["content"]
    for step, marker in STEP_MARKERS.items():
        if marker in system:
            return step
    raise AssertionError(f"no step recognised in the prompt: {system[:120]!r}")


class Script:
    """Answers per step: a fixed one, a function of the messages, or a list consumed in order (its
    last entry then repeats). Thread-safe; counts the calls of each step."""

    def __init__(self, script: Mapping[str, Scripted | list[Scripted]]) -> None:
        self._steps = {step: list(a) if isinstance(a, list) else a for step, a in script.items()}
        self.calls: list[str] = []
        self._lock = threading.Lock()

    def next(self, messages: Sequence[Mapping[str, str]]) -> tuple[str, Scripted]:
        step = step_of(messages)
        with self._lock:
            self.calls.append(step)
            answer = self._steps[step]
            if isinstance(answer, list):
                answer = answer.pop(0) if len(answer) > 1 else answer[0]
        return step, answer

    def replace(self, script: Mapping[str, Scripted | list[Scripted]]) -> None:
        """Answer from now on as ``script`` says (the calls counted so far stay)."""
        with self._lock:
            self._steps = {step: list(a) if isinstance(a, list) else a for step, a in script.items()}


def text_of(answer: Answer, messages: Sequence[Mapping[str, str]]) -> str:
    return answer(messages) if callable(answer) else answer


class ScriptedLLM:
    """The in-process port, answering from a ``Script`` (faults are for ``ScriptedEndpoint``)."""

    model = "scripted"

    def __init__(self, script: Mapping[str, Scripted | list[Scripted]], delay: float = 0.0) -> None:
        self.script = Script(script)
        self.delay = delay

    @property
    def calls(self) -> list[str]:
        return self.script.calls

    def complete(
        self,
        messages: Sequence[Mapping[str, str]],
        *,
        schema: Mapping[str, Any] | None = None,
        max_tokens: int = 512,
        temperature: float = 0.0,
        seed: int | None = None,
    ) -> Completion:
        _, answer = self.script.next(messages)
        assert not isinstance(answer, Status | Stall | Raw), "faults need the HTTP endpoint (ScriptedEndpoint)"
        if self.delay:
            time.sleep(self.delay)
        text = text_of(answer, messages)
        data, error = parse_answer(text, schema)
        return Completion(
            text, data, self.model, sum(len(m["content"]) for m in messages) // 4, len(text) // 4, 0.01, error
        )


def completion_body(model: str, messages: Sequence[Mapping[str, str]], text: str) -> dict[str, Any]:
    """An OpenAI chat completion carrying ``text``, with usage counted as characters / 4."""
    tokens_in = sum(len(m.get("content", "")) for m in messages) // 4
    return {
        "id": "chatcmpl-scripted",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": tokens_in, "completion_tokens": len(text) // 4, "total_tokens": tokens_in},
    }


class ScriptedEndpoint:
    """A ``Script`` behind a real OpenAI-compatible ``/v1/chat/completions`` on a loopback port.

    ``latency`` is added to every answer. It counts the requests of each step, the requests from
    each client address (and those in flight), and the most it had in flight at once; ``arrived(step)`` is set when a
    request for that step comes in. ``host``: the address it listens on.
    """

    def __init__(
        self, script: Mapping[str, Scripted | list[Scripted]], *, latency: float = 0.0, host: str = "127.0.0.1"
    ) -> None:
        self.script = Script(script)
        self.clients: Counter[str] = Counter()
        self.in_flight_from: Counter[str] = Counter()
        self.latency = latency
        self.in_flight = 0
        self.max_in_flight = 0
        self.statuses: Counter[int] = Counter()
        self._arrived: dict[str, threading.Event] = {step: threading.Event() for step in STEP_MARKERS}
        self._lock = threading.Lock()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                if self.path.rstrip("/").endswith("/models"):
                    self.send(200, {"object": "list", "data": [{"id": "scripted", "object": "model"}]})
                else:
                    self.send(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self.send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                client = self.client_address[0]
                with endpoint._lock:
                    endpoint.clients[client] += 1
                    endpoint.in_flight_from[client] += 1
                    endpoint.in_flight += 1
                    endpoint.max_in_flight = max(endpoint.max_in_flight, endpoint.in_flight)
                try:
                    reply = self.answer(json.loads(body))
                finally:
                    # Out of flight before the answer goes: once the client has it, it may send its
                    # next call, which must not find this one still counted.
                    with endpoint._lock:
                        endpoint.in_flight_from[client] -= 1
                        endpoint.in_flight -= 1
                self.send(*reply)

            def answer(
                self, request: dict[str, Any]
            ) -> tuple[int, dict[str, Any] | bytes, str, Mapping[str, str] | None]:
                """The status, body, content type and headers to answer with, after the latency."""
                messages = request["messages"]
                step, answer = endpoint.script.next(messages)
                endpoint._arrived[step].set()
                if endpoint.latency:
                    time.sleep(endpoint.latency)
                if isinstance(answer, Stall):
                    time.sleep(answer.seconds)
                    answer = answer.then
                if isinstance(answer, Status):
                    headers = {} if answer.retry_after is None else {"Retry-After": f"{answer.retry_after:g}"}
                    body = {"error": {"message": f"scripted {answer.code}", "type": "scripted"}}
                    return answer.code, body, "application/json", headers
                if isinstance(answer, Raw):
                    return answer.code, answer.body.encode(), "text/html", None
                text = text_of(answer, messages)
                return 200, completion_body(request.get("model", "scripted"), messages, text), "application/json", None

            def send(
                self,
                status: int,
                payload: dict[str, Any] | bytes,
                content_type: str = "application/json",
                headers: Mapping[str, str] | None = None,
            ) -> None:
                with endpoint._lock:
                    endpoint.statuses[status] += 1
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(data)))
                    for name, value in (headers or {}).items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client timed out and hung up
                    pass

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://{host}:{self.server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def calls(self) -> list[str]:
        return self.script.calls

    def arrived(self, step: str) -> threading.Event:
        return self._arrived[step]

    def __enter__(self) -> ScriptedEndpoint:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


GOOD_SUMMARY = "The agent looked the answer up in the docs before answering."
GOOD_ADVANTAGE = '{"experiences": ["When asked about account settings, search the documentation before answering."]}'
GOOD_SCRIPT: dict[str, Scripted | list[Scripted]] = {
    "summary": GOOD_SUMMARY,
    "advantage": GOOD_ADVANTAGE,
    "operations": '{"operations": [{"operation": "ADD", "id": null, "text": "When asked about account settings, '
    'search the documentation before answering.", "reason": "the better attempts did"}]}',
    "consolidation": '{"operations": []}',
}
