"""The LLM adapters against the real local model and a real OpenAI-compatible server.

``LocalLLM`` runs the bundled SmolLM2-135M-Instruct with llama.cpp. ``OpenAILLM``
talks HTTP to llama-cpp-python's own OpenAI-compatible server, started here as
a subprocess on 127.0.0.1 with the same GGUF. That server rejects
``response_format=json_schema`` (it answers 500 with the validation error), so
the schema test goes through the fallback; a small relay on loopback shows the
other paths: a 400 for the parameter, and broken model output that must not
raise. Answers are checked for structure, never for wording.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from grpod.workers.llm import LLMError, LocalLLM, OpenAILLM, validate

from ..ports import free_port
from .llama_server import SERVED_MODEL, Server
from .llama_server import llama_server as start_llama_server

SECRET = "sk-never-shown-0123456789"
CITY: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "minLength": 1, "maxLength": 40},
        "continent": {"enum": ["Africa", "Asia", "Europe", "North America", "South America", "Oceania"]},
        "is_capital": {"type": "boolean"},
    },
    "required": ["city", "continent", "is_capital"],
    "additionalProperties": False,
}
CITY_QUESTION = [
    {"role": "system", "content": "You answer with one JSON object."},
    {
        "role": "user",
        "content": "What is the capital of France? Answer with its city, continent, and whether it is a capital.",
    },
]
# Without a grammar, the 135M model writes JSON when it is shown the object to fill in.
PAIR: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string", "minLength": 1}, "country": {"type": "string", "minLength": 1}},
    "required": ["city", "country"],
}
PAIR_QUESTION = [
    {
        "role": "user",
        "content": 'Fill in this JSON and reply with it only: {"city": "<the capital of France>", "country": "France"}',
    }
]
HELLO = [{"role": "user", "content": "Say hello in one short sentence."}]


# The local model ---------------------------------------------------------------


@pytest.fixture(scope="module")
def local() -> LocalLLM:
    return LocalLLM()


def test_local_schema_answer_parses_and_validates(local: LocalLLM) -> None:
    completion = local.complete(CITY_QUESTION, schema=CITY, max_tokens=96)
    assert completion.error is None, completion.text
    assert completion.data is not None
    assert validate(completion.data, CITY) is None
    assert set(completion.data) == {"city", "continent", "is_capital"}
    assert json.loads(completion.text) == completion.data  # the grammar made the whole answer JSON
    assert completion.model == "SmolLM2-135M-Instruct"
    assert completion.tokens_in > 0
    assert 0 < completion.tokens_out <= 96
    assert completion.latency_seconds > 0


def test_local_text_answer_has_no_data_and_no_error(local: LocalLLM) -> None:
    completion = local.complete(HELLO, max_tokens=24)
    assert completion.text.strip()
    assert completion.data is None
    assert completion.error is None
    assert completion.tokens_in > 0
    assert 0 < completion.tokens_out <= 24


def test_local_answer_cut_by_max_tokens_is_an_error_not_an_exception(local: LocalLLM) -> None:
    completion = local.complete(CITY_QUESTION, schema=CITY, max_tokens=4)
    assert completion.tokens_out <= 4
    assert completion.data is None
    assert completion.error is not None
    assert completion.error.startswith("the answer ")
    assert "\n" not in completion.error


def test_the_module_alone_loads_neither_llama_cpp_nor_openai() -> None:
    script = (
        "import json, sys\n"
        "import grpod.workers.llm as llm\n"
        "heavy = sorted(name for name in ('llama_cpp', 'openai') if name in sys.modules)\n"
        "answer = llm.LocalLLM().complete([{'role': 'user', 'content': 'hi'}], max_tokens=4)\n"
        "print(json.dumps({'heavy_at_import': heavy, 'tokens_out': answer.tokens_out}))\n"
    )
    environment = {name: value for name, value in os.environ.items() if not name.startswith("GRPOD_")}
    done = subprocess.run(
        [sys.executable, "-c", script], env=environment, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["heavy_at_import"] == []
    assert 0 < report["tokens_out"] <= 4


# A real OpenAI-compatible server -----------------------------------------------


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """llama-cpp-python's OpenAI-compatible server, chatting with the SmolLM2 GGUF, on a free port."""
    options = ["--n_ctx", "2048"]
    with start_llama_server(tmp_path_factory.mktemp("llama-server"), options) as server:
        yield server


def remote(url: str, *, max_retries: int = 3) -> OpenAILLM:
    return OpenAILLM(base_url=url, model=SERVED_MODEL, api_key=SECRET, timeout=60, max_retries=max_retries)


def test_a_text_completion_over_http(llama_server: Server) -> None:
    completion = remote(llama_server.url).complete(HELLO, max_tokens=24)
    assert completion.text.strip()
    assert completion.data is None
    assert completion.error is None
    assert completion.model == SERVED_MODEL
    assert completion.tokens_in > 0
    assert 0 < completion.tokens_out <= 24
    assert completion.latency_seconds > 0


def test_a_schema_completion_over_http_gives_a_valid_object(llama_server: Server) -> None:
    model = remote(llama_server.url + "/v1")
    completion = model.complete(PAIR_QUESTION, schema=PAIR, max_tokens=48)
    assert completion.error is None, completion.text
    assert completion.data is not None
    assert validate(completion.data, PAIR) is None
    assert completion.tokens_in > 0
    assert completion.tokens_out > 0
    if not model.json_schema_supported:  # llama.cpp's server refused json_schema: remembered for its URL
        assert not remote(llama_server.url + "/v1").json_schema_supported
        again = model.complete(PAIR_QUESTION, schema=PAIR, max_tokens=48)
        assert again.data == completion.data  # temperature 0, asked the same way


class Relay:
    """A real HTTP server on loopback that plays an OpenAI-compatible chat API.

    ``reject_response_format``: a request with response_format gets a 400, as
    OpenAI-compatible servers answer an unknown parameter. Otherwise it forwards
    to ``upstream``, or answers ``content`` as the model's text. Every
    request's body is kept.
    """

    def __init__(self, *, upstream: str | None = None, content: str = "", reject_response_format: bool = False):
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        relay = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                request = json.loads(body)
                with relay._lock:
                    relay.requests.append(request)
                if reject_response_format and "response_format" in request:
                    error = {"error": {"message": "Unrecognized request argument: response_format", "code": None}}
                    self.answer(400, json.dumps(error).encode())
                elif upstream is not None:
                    forward = urllib.request.Request(
                        upstream + self.path, data=body, headers={"Content-Type": "application/json"}
                    )
                    with urllib.request.urlopen(forward, timeout=60) as answer:
                        self.answer(answer.status, answer.read())
                else:
                    completion = {
                        "id": "chatcmpl-relay",
                        "object": "chat.completion",
                        "created": 0,
                        "model": request["model"],
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": content},
                                "finish_reason": "length",
                            }
                        ],
                        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
                    }
                    self.answer(200, json.dumps(completion).encode())

            def answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Relay:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def test_a_400_for_json_schema_falls_back_once_and_is_remembered(llama_server: Server) -> None:
    with Relay(upstream=llama_server.url, reject_response_format=True) as relay:
        model = remote(relay.url)
        assert model.json_schema_supported
        first = model.complete(PAIR_QUESTION, schema=PAIR, max_tokens=48)
        asked = [("response_format" in request) for request in relay.requests]
        assert asked == [True, False]  # one 400 (never retried), then without the parameter
        assert relay.requests[0]["response_format"] == {
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": PAIR, "strict": False},
        }
        assert first.error is None, first.text
        assert first.data is not None
        assert validate(first.data, PAIR) is None
        assert not remote(relay.url).json_schema_supported  # remembered for the URL, by every instance
        model.complete(PAIR_QUESTION, schema=PAIR, max_tokens=48)
        assert [("response_format" in request) for request in relay.requests] == [True, False, False]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("I am sorry, I cannot do that.", "the answer holds no JSON object"),
        ('{"city": "Paris"}', "the answer does not follow the schema at $: 'country' is a required property"),
        ('{"city": 7, "country": "France"}', "the answer does not follow the schema at $.city"),
        ("", "the answer is empty"),
    ],
)
def test_bad_model_output_is_an_error_sentence_never_an_exception(content: str, reason: str) -> None:
    with Relay(content=content) as relay:
        completion = remote(relay.url).complete(PAIR_QUESTION, schema=PAIR, max_tokens=48)
    assert completion.text == content
    assert completion.data is None
    assert completion.error is not None
    assert completion.error.startswith(reason)
    assert "\n" not in completion.error
    assert (completion.tokens_in, completion.tokens_out) == (11, 7)


def test_a_truncated_answer_from_a_server_is_repaired() -> None:
    with Relay(content='Here you go: {"city": "Paris", "country": "Fra') as relay:
        completion = remote(relay.url).complete(PAIR_QUESTION, schema=PAIR, max_tokens=48)
    assert completion.data == {"city": "Paris", "country": "Fra"}
    assert completion.error is None


def test_an_unreachable_url_is_one_clear_sentence_within_bounded_time() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    model = remote(url, max_retries=2)
    started = time.monotonic()
    with pytest.raises(LLMError) as raised:
        model.complete(HELLO, max_tokens=8)
    elapsed = time.monotonic() - started
    message = str(raised.value)
    assert message.startswith(f"the LLM API at GRPOD_LLM_BASE_URL={url} (model 'smollm2') could not be reached")
    assert "in 3 attempts" in message
    assert SECRET not in message
    assert "\n" not in message
    assert elapsed < 10
