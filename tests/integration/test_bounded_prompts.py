"""A large library, a distillation on the real database: its prompts show the experiences nearest
to the group within the budget, each experience is embedded once for all distillations, and a
replay shows the same."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
import pytest

from grpod.schema.library import estimate_tokens
from grpod.workers import distillation_store, grouping_store, replay
from grpod.workers.distillation import CONTEXT_TOKENS
from grpod.workers.embeddings import LocalEmbedder, Vectors
from grpod.workers.operations import Operation

from ..factories import KEY_QUERIES
from ..scripted_llm import GOOD_SCRIPT, ScriptedLLM
from .stored import publish
from .test_distillation import ready_group

TOPICS = ["invoices", "refunds", "shipping", "passwords", "webhooks", "exports", "teams", "billing", "quotas", "SSO"]
LIBRARY_SIZE = 300


class CountingEmbedder:
    """The bundled embedder, counting the texts it is asked to embed."""

    def __init__(self, inner: LocalEmbedder) -> None:
        self.inner = inner
        self.texts: list[str] = []

    @property
    def model(self) -> str:
        return self.inner.model

    @property
    def dimension(self) -> int:
        return self.inner.dimension

    def embed(self, texts: Sequence[str]) -> Vectors:
        self.texts.extend(texts)
        return self.inner.embed(texts)


@pytest.fixture(scope="module")
def embedder() -> LocalEmbedder:
    return LocalEmbedder()


def library_lines(prompt: str) -> list[str]:
    return [line for line in prompt.splitlines() if line.startswith("[")]


def test_a_large_librarys_prompts_stay_within_the_budget_and_show_the_nearest(
    conn: psycopg.Connection[Any], embedder: LocalEmbedder
) -> None:
    grouping_store.prepare(conn)
    texts = [
        f"When a user asks about {TOPICS[n % 10]} case {n}, check the {TOPICS[n % 10]} page first."
        for n in range(1, LIBRARY_SIZE)
    ]
    texts.insert(41, "When asked to rotate an API key, open Settings > Security > API keys before answering.")
    first_group = ready_group(conn, embedder, "k", KEY_QUERIES)
    publish(conn, "support", [Operation("ADD", text) for text in texts])
    prompts: dict[str, list[str]] = {}

    def keep(step: str) -> Any:
        def answer(messages: Sequence[Mapping[str, str]]) -> str:
            prompts.setdefault(step, []).append(messages[-1]["content"])
            return str(GOOD_SCRIPT[step])

        return answer

    llm = ScriptedLLM({**GOOD_SCRIPT, "advantage": keep("advantage"), "operations": keep("operations")})
    counting = CountingEmbedder(embedder)

    run = distillation_store.distill_group(conn, llm, counting, first_group)

    assert run.status == "distilled"
    (advantage,) = prompts["advantage"]
    shown = library_lines(advantage)
    assert 0 < len(shown) < LIBRARY_SIZE
    assert sum(estimate_tokens(line) + 1 for line in shown) <= CONTEXT_TOKENS
    assert any("rotate an API key" in line for line in shown)  # the one about the group's queries
    # Each experience embedded once, and stored with its text's hash.
    assert conn.execute("SELECT count(*) FROM experience_vectors").fetchone() == (LIBRARY_SIZE,)
    library_texts = [t for t in counting.texts if t in texts]
    assert sorted(library_texts) == sorted(texts)
    recorded = conn.execute("SELECT shown FROM distillations WHERE id = %s", [run.id]).fetchone()
    assert recorded is not None and sorted(recorded[0]) == sorted(prompts)
    assert len(recorded[0]["advantage"]) == len(shown)

    # A second distillation on the same library embeds none of its experiences again.
    second_group = ready_group(conn, embedder, "j", KEY_QUERIES)
    counting.texts.clear()
    again = distillation_store.distill_group(conn, llm, counting, second_group)
    assert again.status == "distilled"
    assert not set(counting.texts) & set(texts)
    assert conn.execute("SELECT count(*) FROM experience_vectors").fetchone() == (LIBRARY_SIZE,)

    # A replay shows each step what it showed then, so it gives the same operations with no LLM.
    assert run.id is not None
    replayed = replay.replay(conn, run.id)
    assert replayed.same
