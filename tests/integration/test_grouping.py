"""Grouping against the real PostgreSQL with pgvector and the real local embedding model."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import psycopg
import pytest

from grpod.workers import grouping_store
from grpod.workers.embeddings import LocalEmbedder, normalise_rows
from grpod.workers.grouping import DomainSettings

from ..factories import reward, trace
from .stored import ingest


@pytest.fixture(scope="module")
def embedder() -> LocalEmbedder:
    return LocalEmbedder()


KEYS = [
    "How do I rotate my API key?",
    "rotate api key please",
    "I need to generate a new API key and revoke the old one",
    "how can i roll my api token",
]
EXPORT = ["Export all my data as CSV", "how do I download an export of my account data", "data export to csv?"]


def test_similar_queries_share_a_group_and_others_do_not(
    conn: psycopg.Connection[Any], embedder: LocalEmbedder
) -> None:
    ingest(
        conn,
        *(trace(f"k{i}", query=q) for i, q in enumerate(KEYS)),
        *(trace(f"e{i}", query=q) for i, q in enumerate(EXPORT)),
    )
    run = grouping_store.group_domain(conn, embedder, "support")
    assert run.placed == 7
    groups = {row["id"]: set(row["trace_ids"]) for row in grouping_store.list_groups(conn, "support")}
    assert {"k0", "k1", "k2", "k3"} in groups.values()
    assert {"e0", "e1", "e2"} in groups.values()
    state = grouping_store.domain_state(conn, "support")
    assert (state.embedding_model, state.embedding_dimension) == ("all-MiniLM-L6-v2", 384)
    # Centroids stay current: the mean of the members' vectors.
    row = conn.execute(
        "SELECT g.centroid, (SELECT avg(embedding) FROM traces WHERE group_id = g.id), g.size"
        " FROM groups g ORDER BY size DESC LIMIT 1"
    ).fetchone()
    assert row is not None
    assert np.allclose(grouping_store.as_array(row[0]), grouping_store.as_array(row[1]), atol=1e-5) and row[2] == 4


def test_the_hnsw_index_is_used_with_iterative_scans(conn: psycopg.Connection[Any], embedder: LocalEmbedder) -> None:
    ingest(conn, trace("t0", query=KEYS[0]))
    grouping_store.group_domain(conn, embedder, "support")
    with conn.transaction():
        conn.execute("SET LOCAL enable_seqscan = off")
        conn.execute("SET LOCAL enable_sort = off")  # a tiny table: make the planner show the index can serve it
        conn.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
        plan = conn.execute(
            "EXPLAIN SELECT id FROM groups WHERE dimension = 384 AND domain = 'support'"
            " ORDER BY centroid::vector(384) <=> %s::vector(384) LIMIT 1",
            (embedder.embed(["x"])[0],),
        ).fetchall()
    assert "groups_centroid_hnsw_384" in " ".join(str(line[0]) for line in plan)


def test_an_identical_query_of_another_domain_never_joins(
    conn: psycopg.Connection[Any], embedder: LocalEmbedder
) -> None:
    ingest(conn, trace("a1", domain="billing", query=KEYS[0]), trace("s1", domain="support", query=KEYS[0]))
    grouping_store.group_domain(conn, embedder, "billing")
    grouping_store.group_domain(conn, embedder, "support")
    rows = conn.execute("SELECT t.trace_id, g.domain FROM traces t JOIN groups g ON g.id = t.group_id").fetchall()
    assert sorted(rows) == [("a1", "billing"), ("s1", "support")]
    assert conn.execute("SELECT count(*) FROM groups").fetchone() == (2,)


def test_concurrent_workers_open_one_group_for_a_new_topic(database_url: str, embedder: LocalEmbedder) -> None:
    with psycopg.connect(database_url, autocommit=True) as setup:
        ingest(setup, *(trace(f"c{i}", query=q) for i, q in enumerate(KEYS * 3)))
    ids = [f"c{i}" for i in range(len(KEYS) * 3)]
    barrier = threading.Barrier(3)
    errors: list[BaseException] = []

    def worker(part: Sequence[str]) -> None:
        try:
            with psycopg.connect(database_url, autocommit=True) as conn:
                barrier.wait()
                grouping_store.group_domain(conn, embedder, "support", trace_ids=part)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(ids[i::3],)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*), sum(size) FROM groups").fetchone() == (1, 12)
        assert conn.execute("SELECT count(*) FROM traces WHERE group_id IS NULL").fetchone() == (0,)


def test_a_group_becomes_ready_exactly_once(conn: psycopg.Connection[Any], embedder: LocalEmbedder) -> None:
    ingest(conn, *(trace(f"r{i}", query=q) for i, q in enumerate(KEYS)))
    grouping_store.set_settings(conn, "support", DomainSettings(group_size=3))
    signalled: list[tuple[int, str]] = []
    first = grouping_store.group_domain(conn, embedder, "support", on_ready=signalled.extend)
    assert first.ready == [] and signalled == []
    # Rewards arrive late: all equal first (no signal), then a different one.
    ingest(conn, reward("r0", 1.0), reward("r1", 1.0), reward("r2", 1.0))
    group_ids = grouping_store.groups_of(conn, ["r0"])
    verdicts = grouping_store.check_readiness(conn, group_ids, signalled.extend)
    assert not verdicts[group_ids[0]].ready and signalled == []
    ingest(conn, reward("r3", 0.0))
    for _ in range(3):  # retries and duplicate tasks
        grouping_store.check_readiness(conn, group_ids, signalled.extend)
    assert signalled == [(group_ids[0], "support")]
    (listed,) = grouping_store.list_groups(conn, "support")
    assert listed["ready"] and listed["rewarded"] == 4 and listed["spread"] == 1.0


def test_a_redelivered_grouping_changes_nothing(conn: psycopg.Connection[Any], embedder: LocalEmbedder) -> None:
    ingest(conn, *(trace(f"d{i}", query=q) for i, q in enumerate(KEYS)))
    grouping_store.group_domain(conn, embedder, "support")
    again = grouping_store.group_domain(conn, embedder, "support", trace_ids=["d0", "d1"])
    assert again.placed == 0
    assert conn.execute("SELECT count(*), sum(size) FROM groups").fetchone() == (1, 4)


class _OtherModel:
    """Stands in for a second embedding model (another name and dimension) for the switch."""

    model = "other-model"
    dimension = 8

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        rng = np.random.default_rng(len(texts))
        return normalise_rows(rng.normal(size=(len(texts), 8)))


def test_a_domain_never_mixes_models_and_reembed_switches(
    conn: psycopg.Connection[Any], embedder: LocalEmbedder
) -> None:
    ingest(conn, *(trace(f"m{i}", query=q) for i, q in enumerate(KEYS)))
    grouping_store.group_domain(conn, embedder, "support")
    ingest(conn, trace("m-late", query="one more question"))
    with pytest.raises(grouping_store.EmbeddingModelMismatchError, match="run `grpod domain reembed support`"):
        grouping_store.group_domain(conn, _OtherModel(), "support")
    progress: list[tuple[int, int]] = []
    run = grouping_store.reembed(conn, _OtherModel(), "support", lambda done, total: progress.append((done, total)))
    assert run.placed == 5 and progress[-1] == (5, 5)
    state = grouping_store.domain_state(conn, "support")
    assert (state.embedding_model, state.embedding_dimension) == ("other-model", 8)
    assert conn.execute("SELECT count(*) FROM traces WHERE vector_dims(embedding) = 8").fetchone() == (5,)
    # And back to the real model, as an operator would after fixing GRPOD_EMBEDDINGS.
    back = grouping_store.reembed(conn, embedder, "support")
    assert back.placed == 5
    assert grouping_store.domain_state(conn, "support").embedding_dimension == 384


def test_a_query_the_embeddings_api_refuses_is_kept_aside_and_holds_back_no_other(
    conn: psycopg.Connection[Any], embedder: LocalEmbedder
) -> None:
    from grpod.workers.embeddings import EmbeddingError, Vectors

    class Refusing:
        """The real model, behind an API that refuses any batch holding a query it cannot take."""

        model = embedder.model
        dimension = embedder.dimension
        calls = 0

        def embed(self, texts: Sequence[str]) -> Vectors:
            Refusing.calls += 1
            if any("REFUSE-ME" in text for text in texts):
                raise EmbeddingError("the embeddings API answered 400: input too long", refused=True)
            return embedder.embed(texts)

    queries = ["How do I rotate my API key?", "REFUSE-ME please", "rotate api key how", "where is the API key page"]
    ingest(conn, *(trace(f"r{i}", query=q) for i, q in enumerate(queries)))

    run = grouping_store.group_domain(conn, Refusing(), "support")

    assert (run.embedded, run.placed, run.refused) == (4, 3, 1)
    row = conn.execute("SELECT group_id, grouping_error FROM traces WHERE trace_id = 'r1'").fetchone()
    assert row is not None and row[0] is None and "input too long" in row[1]
    assert grouping_store.ungrouped(conn, "support", 10) == []  # it waits for nothing: the domain is free
    assert grouping_store.domains_with_ungrouped(conn) == []

    class Down:
        model = embedder.model
        dimension = embedder.dimension

        def embed(self, texts: Sequence[str]) -> Vectors:
            raise EmbeddingError("the embeddings API cannot be reached")

    ingest(conn, trace("r9", query="export my data"))
    with pytest.raises(EmbeddingError, match="cannot be reached"):  # an outage is no refusal: nothing is set aside
        grouping_store.group_domain(conn, Down(), "support")
    assert [t for t, _ in grouping_store.ungrouped(conn, "support", 10)] == ["r9"]


def test_a_group_is_ready_in_the_database_when_its_hand_off_runs(
    conn: psycopg.Connection[Any], database_url: str, embedder: LocalEmbedder
) -> None:
    queries = ["How do I rotate my API key?", "rotate api key how", "how to rotate an API key", "API key rotation?"]
    ingest(conn, *(trace(f"h{i}", query=q) for i, q in enumerate(queries)))
    ingest(conn, *(reward(f"h{i}", float(i % 2)) for i in range(4)))
    seen: list[object] = []

    def hand_off(groups: list[tuple[int, str]]) -> None:
        # What the distill task does first: read the group's readiness on a connection of its own.
        with psycopg.connect(database_url) as other:
            for group_id, _ in groups:
                seen.append(
                    other.execute("SELECT ready_at IS NOT NULL FROM groups WHERE id = %s", (group_id,)).fetchone()
                )

    grouping_store.set_settings(conn, "support", DomainSettings(group_size=4), {})
    grouping_store.group_domain(conn, embedder, "support", on_ready=hand_off)

    assert seen == [(True,)]
