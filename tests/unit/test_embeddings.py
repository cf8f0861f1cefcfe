"""The embeddings port without a model: choosing the adapter, and the pure helpers."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pytest

from grpod.daemon import ports
from grpod.daemon.ports import embedder_from_settings, process_embedder
from grpod.daemon.settings import load_settings
from grpod.schema.errors import ConfigError
from grpod.workers import embeddings
from grpod.workers.embeddings import (
    Embedder,
    OpenAIEmbedder,
    Vectors,
    api_base,
    batches,
    normalise_rows,
    vectors_from_answer,
)


class FakeLocalEmbedder:
    """Stands in for the local model, which unit tests never load."""

    model = "all-MiniLM-L6-v2"
    dimension = 384

    def __init__(self, *, batch_size: int) -> None:
        self.batch_size = batch_size

    def embed(self, texts: Sequence[str]) -> Vectors:
        return np.zeros((len(texts), self.dimension), dtype=np.float32)


@pytest.fixture
def fake_local(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embeddings, "LocalEmbedder", FakeLocalEmbedder)
    ports.forget()


def test_local_is_the_default_and_gets_the_batch_size(fake_local: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRPOD_EMBEDDINGS_BATCH_SIZE", "16")
    embedder = embedder_from_settings(load_settings())
    assert isinstance(embedder, FakeLocalEmbedder)
    assert embedder.batch_size == 16


def test_a_url_gives_the_openai_adapter_with_every_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRPOD_EMBEDDINGS", "https://embed.internal:8443/v1")
    monkeypatch.setenv("GRPOD_EMBEDDINGS_MODEL", "text-embedding-3-small")
    monkeypatch.setenv("GRPOD_EMBEDDINGS_API_KEY", "sk-embeddings")
    monkeypatch.setenv("GRPOD_LLM_API_KEY", "sk-llm")
    monkeypatch.setenv("GRPOD_EMBEDDINGS_TIMEOUT", "7.5")
    monkeypatch.setenv("GRPOD_EMBEDDINGS_BATCH_SIZE", "100")
    embedder = embedder_from_settings(load_settings())
    assert isinstance(embedder, OpenAIEmbedder)
    assert embedder.model == "text-embedding-3-small"
    assert embedder.url == "https://embed.internal:8443/v1"
    assert embedder.timeout == 7.5
    assert embedder.batch_size == 100
    assert embedder._client.api_key == "sk-embeddings"
    assert str(embedder._client.base_url).rstrip("/") == "https://embed.internal:8443/v1"
    assert "sk-embeddings" not in repr(embedder)


def test_the_embeddings_api_key_defaults_to_the_llm_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRPOD_EMBEDDINGS", "http://127.0.0.1:8000/v1")
    monkeypatch.setenv("GRPOD_EMBEDDINGS_MODEL", "nomic-embed-text")
    monkeypatch.setenv("GRPOD_LLM_API_KEY", "sk-llm")
    embedder = embedder_from_settings(load_settings())
    assert isinstance(embedder, OpenAIEmbedder)
    assert embedder._client.api_key == "sk-llm"


def test_no_api_key_at_all_is_sent_as_unused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRPOD_EMBEDDINGS", "http://127.0.0.1:8000/v1")
    monkeypatch.setenv("GRPOD_EMBEDDINGS_MODEL", "nomic-embed-text")
    embedder = embedder_from_settings(load_settings())
    assert isinstance(embedder, OpenAIEmbedder)
    assert embedder._client.api_key == "unused"


def test_a_url_without_a_model_is_a_config_error_naming_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRPOD_EMBEDDINGS", "https://bot:s3cret@embed.internal/v1")
    with pytest.raises(ConfigError) as raised:
        embedder_from_settings(load_settings())
    message = str(raised.value)
    assert message.startswith("GRPOD_EMBEDDINGS_MODEL must name the model at GRPOD_EMBEDDINGS=https://bot:***@")
    assert "s3cret" not in message
    assert "GRPOD_EMBEDDINGS=local" in message


def test_the_process_embedder_is_built_once_and_forgotten_on_demand(fake_local: None) -> None:
    first = process_embedder()
    assert process_embedder() is first
    ports.forget()
    assert process_embedder() is not first


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX-only")
def test_a_forked_child_builds_its_own_embedder(fake_local: None) -> None:
    process_embedder()
    assert process_embedder.cache_info().currsize == 1
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        os._exit(0 if process_embedder.cache_info().currsize == 0 else 1)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_known_dimension_needs_no_call() -> None:
    embedder: Embedder = OpenAIEmbedder(base_url="http://127.0.0.1:9/v1", model="m", dimension=3)
    assert embedder.dimension == 3
    assert embedder.embed([]).shape == (0, 3)


# Pure helpers -----------------------------------------------------------------


def test_rows_are_normalised_to_unit_length_in_float32() -> None:
    rows = normalise_rows([[3.0, 4.0], [0.0, -2.0], [1e-3, 0.0]])
    assert rows.dtype == np.float32
    assert rows.shape == (3, 2)
    np.testing.assert_allclose(rows, [[0.6, 0.8], [0.0, -1.0], [1.0, 0.0]], atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-6)


def test_a_zero_row_stays_zero_instead_of_nan() -> None:
    rows = normalise_rows(np.zeros((2, 5)))
    assert not np.isnan(rows).any()
    assert (rows == 0).all()


def test_normalising_an_empty_matrix_keeps_its_width() -> None:
    assert normalise_rows(np.zeros((0, 384))).shape == (0, 384)


def test_normalising_needs_a_matrix() -> None:
    with pytest.raises(ValueError, match="matrix"):
        normalise_rows([1.0, 2.0])


@pytest.mark.parametrize(
    ("count", "size", "expected"),
    [(0, 4, []), (3, 4, [3]), (4, 4, [4]), (9, 4, [4, 4, 1]), (5, 1, [1, 1, 1, 1, 1])],
)
def test_batches_keep_the_order_and_respect_the_size(count: int, size: int, expected: list[int]) -> None:
    texts = [f"t{index}" for index in range(count)]
    cut = batches(texts, size)
    assert [len(batch) for batch in cut] == expected
    assert [text for batch in cut for text in batch] == texts


def test_a_batch_size_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        batches(["a"], 0)


@pytest.mark.parametrize(
    ("written", "base"),
    [
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000/v1"),
        ("http://127.0.0.1:8000/", "http://127.0.0.1:8000/v1"),
        ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1"),
        ("http://127.0.0.1:8000/v1/", "http://127.0.0.1:8000/v1"),
        ("http://127.0.0.1:8000/v1/embeddings", "http://127.0.0.1:8000/v1"),
        ("https://api.example.com/openai/v1", "https://api.example.com/openai/v1"),
        ("http://ollama:11434/v1", "http://ollama:11434/v1"),
    ],
)
def test_the_api_base_comes_from_what_an_operator_writes(written: str, base: str) -> None:
    assert api_base(written) == base


def test_an_answer_is_checked_and_normalised() -> None:
    vectors = vectors_from_answer([[2.0, 0.0], [0.0, 0.5]], expected=2, dimension=None)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(vectors, [[1.0, 0.0], [0.0, 1.0]])


@pytest.mark.parametrize(
    ("rows", "dimension", "reason"),
    [
        ([[1.0, 0.0]], None, "answered 1 vectors for 2 texts"),
        ([[1.0, 0.0], [1.0]], None, "one flat, non-empty vector per text"),
        ([[[1.0], [2.0]], [[1.0], [2.0]]], None, "one flat, non-empty vector per text"),
        ([[], []], None, "one flat, non-empty vector per text"),
        ([[1.0, float("nan")], [1.0, 0.0]], None, "NaN or infinite"),
        ([[1.0, 0.0], [0.0, 1.0]], 3, "of 2 dimensions after vectors of 3"),
    ],
)
def test_a_wrong_answer_says_what_is_wrong(rows: list[object], dimension: int | None, reason: str) -> None:
    with pytest.raises(ValueError, match="answered") as raised:
        vectors_from_answer(rows, expected=2, dimension=dimension)
    assert reason in str(raised.value)
