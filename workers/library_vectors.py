"""The IO shell around ``relevance``: a library's experience vectors, stored once per text and
embedding model, and what each distillation step's prompt shows of the library (recorded)."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np
import psycopg

from grpod.schema.sql import load_queries
from grpod.workers import grouping_store
from grpod.workers.distillation import Neighbour, Purpose, nearest
from grpod.workers.embeddings import Embedder
from grpod.workers.relevance import Vectors, ranked_by_relevance, within_budget


def text_hash(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


class LibraryVectors:
    """One distillation's view of its parent library: ``near`` for the triage and ``shown`` for the
    prompts, over vectors read from ``experience_vectors`` (an experience is embedded the first
    time a distillation needs it, and never again). ``recorded`` is what each step showed."""

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        embedder: Embedder,
        domain: str,
        library: Mapping[int, str],
        budget_tokens: int,
    ) -> None:
        self._conn = conn
        self._embedder = embedder
        self._domain = domain
        self._library = library
        self._budget = budget_tokens
        self._ids = sorted(library)
        self._vectors: Vectors | None = None
        self._lock = threading.Lock()
        self.recorded: dict[str, list[int]] = {}

    def vectors(self) -> Vectors:
        """The library's vectors, a row per experience id in order."""
        with self._lock:
            if self._vectors is None:
                self._vectors = self._load()
            return self._vectors

    def _load(self) -> Vectors:
        if not self._ids:
            return np.zeros((0, 0), dtype=np.float32)
        grouping_store.prepare(self._conn)
        named = load_queries("grpod.schema", "queries/distillation.sql")
        hashes = [text_hash(self._library[i]) for i in self._ids]
        key = {"domain": self._domain, "model": self._embedder.model}
        stored = {
            bytes(row[0]): grouping_store.as_array(row[1])
            for row in self._conn.execute(named["experience_vectors"], {**key, "text_hashes": hashes})
        }
        missing = [i for i, digest in zip(self._ids, hashes, strict=True) if digest not in stored]
        if missing:
            for experience_id, vector in zip(
                missing, self._embedder.embed([self._library[i] for i in missing]), strict=True
            ):
                digest = text_hash(self._library[experience_id])
                stored[digest] = np.asarray(vector, dtype=np.float32)
                self._conn.execute(
                    named["insert_experience_vector"], {**key, "text_hash": digest, "embedding": stored[digest]}
                )
        return np.stack([stored[digest] for digest in hashes])

    def near(self, texts: Sequence[str]) -> list[Neighbour | None]:
        if not self._ids:
            return [None] * len(texts)
        return nearest(self._embedder.embed(list(texts)), self.vectors(), self._ids)

    def shown(self, step: Purpose, texts: Sequence[str], must: Collection[int] = ()) -> Mapping[int, str]:
        if not self._ids:
            picked: dict[int, str] = {}
        else:
            anchors = self._embedder.embed(list(texts)) if texts else np.zeros((0, 0), dtype=np.float32)
            ranked = ranked_by_relevance(anchors, self._ids, self.vectors())
            picked = within_budget(ranked, self._library, self._budget, must)
        self.recorded[step] = sorted(picked)
        return picked
