"""The process's LLM and embedder, built from the settings and handed to the stages as plain objects.

The ports (``grpod.workers.llm``, ``grpod.workers.embeddings``) take plain values; this is the one
place that reads ``GRPOD_LLM_*`` and ``GRPOD_EMBEDDINGS*`` for them. A worker builds each once
(loading a model takes a while); a forked child builds its own.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager
from functools import cache
from typing import Any

import psycopg

from grpod.daemon import resources
from grpod.daemon.settings import Settings
from grpod.schema.errors import ConfigError
from grpod.schema.urls import redact
from grpod.workers import embeddings, llm
from grpod.workers.embeddings import Embedder
from grpod.workers.llm import LLM
from grpod.workers.llm_budget import SharedBudget


def llm_from_settings(settings: Settings) -> LLM:
    """The LLM GRPOD_LLM_BASE_URL names: the bundled SmolLM2 when unset, else the API at that URL."""
    if settings.llm_base_url is None:
        return llm.LocalLLM(n_threads=settings.llm_threads or os.cpu_count() or llm.LOCAL_THREADS)
    if not settings.llm_model:
        raise ConfigError(
            f"GRPOD_LLM_MODEL must name the model at GRPOD_LLM_BASE_URL={redact(settings.llm_base_url)}; "
            "set it (for example GRPOD_LLM_MODEL=deepseek-chat) or unset GRPOD_LLM_BASE_URL to use the "
            "bundled model."
        )
    api_key = settings.llm_api_key
    return llm.OpenAILLM(
        base_url=settings.llm_base_url,
        model=settings.llm_model,
        api_key=api_key.get_secret_value() if api_key is not None else None,
        timeout=settings.llm_timeout,
        max_retries=settings.llm_max_retries,
        concurrency=settings.llm_concurrency,
        budget=_budget(settings, settings.llm_base_url, settings.llm_model),
    )


def _budget(settings: Settings, base_url: str, model: str) -> SharedBudget | None:
    """GRPOD_LLM_MAX_RPM and _TPM, shared through the database by every worker that calls this endpoint."""
    if settings.llm_max_rpm is None and settings.llm_max_tpm is None:
        return None

    def connect() -> AbstractContextManager[psycopg.Connection[Any]]:
        return resources.pool().connection()

    return SharedBudget(
        connect,
        f"{redact(base_url)} {model}",
        max_requests=settings.llm_max_rpm,
        max_tokens=settings.llm_max_tpm,
    )


def policy_from_settings(settings: Settings, concurrency: int) -> LLM:
    """Paper mode's policy: GRPOD_POLICY_BASE_URL (else GRPOD_LLM_BASE_URL's endpoint), or the
    bundled model (this process's, shared with the distiller) when neither is set."""
    base_url = settings.policy_base_url or settings.llm_base_url
    if base_url is None:
        return process_llm()
    model = settings.policy_model or (settings.llm_model if settings.policy_base_url is None else None)
    if not model:
        raise ConfigError(
            f"GRPOD_POLICY_MODEL must name the policy's model at {redact(base_url)}; set it (for example "
            "GRPOD_POLICY_MODEL=deepseek-chat)."
        )
    api_key = settings.policy_api_key or settings.llm_api_key
    return llm.OpenAILLM(
        base_url=base_url,
        model=model,
        api_key=api_key.get_secret_value() if api_key is not None else None,
        timeout=settings.llm_timeout,
        max_retries=settings.llm_max_retries,
        concurrency=concurrency,
    )


def prices(settings: Settings) -> dict[str, float | None]:
    """Per million tokens: the LLM's (the distiller) and the policy's (by default the LLM's)."""
    return {
        "llm_in": settings.llm_price_input,
        "llm_out": settings.llm_price_output,
        "policy_in": settings.policy_price_input
        if settings.policy_price_input is not None
        else settings.llm_price_input,
        "policy_out": (
            settings.policy_price_output if settings.policy_price_output is not None else settings.llm_price_output
        ),
    }


def embedder_from_settings(settings: Settings) -> Embedder:
    """The embedder GRPOD_EMBEDDINGS names: the bundled model, or the API at that URL."""
    if settings.embeddings == embeddings.LOCAL:
        return embeddings.LocalEmbedder(batch_size=settings.embeddings_batch_size)
    if not settings.embeddings_model:
        raise ConfigError(
            f"GRPOD_EMBEDDINGS_MODEL must name the model at GRPOD_EMBEDDINGS={redact(settings.embeddings)}; "
            "set it (for example GRPOD_EMBEDDINGS_MODEL=text-embedding-3-small) or set GRPOD_EMBEDDINGS=local "
            "to use the bundled model."
        )
    api_key = settings.embeddings_api_key or settings.llm_api_key
    return embeddings.OpenAIEmbedder(
        base_url=settings.embeddings,
        model=settings.embeddings_model,
        api_key=api_key.get_secret_value() if api_key is not None else None,
        timeout=settings.embeddings_timeout,
        batch_size=settings.embeddings_batch_size,
    )


@cache
def process_llm() -> LLM:
    """This process's LLM, built on first use (a worker loads the model once).

    Two threads of a ``threads`` pool that ask at the same moment may each build one; one is kept.
    """
    return llm_from_settings(resources.settings())


@cache
def process_embedder() -> Embedder:
    """This process's embedder, built on first use (a worker loads the model once)."""
    return embedder_from_settings(resources.settings())


def forget() -> None:
    """Drop the process's LLM, request slots and embedder (after a fork, or when a test changes the settings)."""
    process_llm.cache_clear()
    process_embedder.cache_clear()
    llm.forget()


os.register_at_fork(after_in_child=forget)
