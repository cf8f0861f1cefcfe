"""Merging groups that never reach their size, against the real PostgreSQL with pgvector.

The queries' vectors are chosen by the test (an embedder that looks them up), so that the groups
online assignment makes, and their distances, are known: two groups of one topic 0.6 apart in
cosine distance, beyond the threshold (0.5), within the relaxed one (0.75).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import psycopg
import pytest
from psycopg.types.json import Jsonb

from grpod.schema.sql import load_queries
from grpod.workers import grouping_store
from grpod.workers.embeddings import Vectors
from grpod.workers.grouping import DomainSettings

from ..factories import reward, trace
from ..faults.invariants import assert_whole
from .stored import ingest

DIMENSION = 8


def _unit(*coordinates: float) -> np.ndarray[Any, np.dtype[np.float32]]:
    vector = np.zeros(DIMENSION, dtype=np.float32)
    vector[: len(coordinates)] = coordinates
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def _at(degrees: float, wobble: int) -> np.ndarray[Any, np.dtype[np.float32]]:
    """A direction in the first plane, nudged along its own axis so that no two members are equal."""
    radians = math.radians(degrees)
    nudge = [0.0] * (DIMENSION - 2)
    nudge[wobble % (DIMENSION - 2)] = 0.03
    return _unit(math.cos(radians), math.sin(radians), *nudge)


class LookedUp:
    """An embedder whose vectors the test chose, by query."""

    model = "chosen-vectors"
    dimension = DIMENSION

    def __init__(self, vectors: Mapping[str, np.ndarray[Any, np.dtype[np.float32]]]) -> None:
        self.vectors = dict(vectors)

    def embed(self, texts: Sequence[str]) -> Vectors:
        return np.stack([self.vectors[text] for text in texts])


# Group A: three queries around 0 degrees; group B: two around 66.4 degrees (cos 0.4: 0.6 away).
SPLIT = {f"a{i}": _at(0, i) for i in range(3)} | {f"b{i}": _at(66.4, 3 + i) for i in range(2)}
REWARDS = {"a0": 1.0, "a1": 0.0, "a2": 1.0, "b0": 0.0, "b1": 1.0}


def _split_groups(conn: psycopg.Connection[Any], *, wait_seconds: int) -> tuple[int, int]:
    """Five rewarded traces of one topic in two groups (3 and 2) that never reach G = 5 alone."""
    ingest(conn, *(trace(name, query=name) for name in SPLIT), *(reward(n, v) for n, v in REWARDS.items()))
    grouping_store.set_settings(conn, "support", DomainSettings(), {"group_merge_wait_seconds": wait_seconds})
    run = grouping_store.group_domain(conn, LookedUp(SPLIT), "support")
    assert (run.placed, run.new_groups, run.ready) == (5, 2, [])
    (a,), (b,) = grouping_store.groups_of(conn, ["a0"]), grouping_store.groups_of(conn, ["b0"])
    assert (
        a != b and grouping_store.groups_of(conn, ["a1", "a2"]) == [a] and grouping_store.groups_of(conn, ["b1"]) == [b]
    )
    return a, b


def _groups(conn: psycopg.Connection[Any]) -> dict[int, tuple[int, list[str], bytes, Any]]:
    """Each group: its size, its members, its centroid (as stored) and when it last grew."""
    rows = conn.execute(
        "SELECT g.id, g.size, array_agg(t.trace_id ORDER BY t.trace_id), g.centroid::text, g.updated_at"
        " FROM groups g JOIN traces t ON t.group_id = g.id GROUP BY g.id"
    ).fetchall()
    return {int(r[0]): (int(r[1]), list(r[2]), r[3].encode(), r[4]) for r in rows}


def test_a_small_group_that_waited_joins_its_nearest_which_becomes_ready(
    conn: psycopg.Connection[Any], database_url: str
) -> None:
    a, b = _split_groups(conn, wait_seconds=86_400)
    signalled: list[tuple[int, str]] = []
    # Both are young: they wait (the default is a day).
    young = grouping_store.merge_groups(conn, "support", on_ready=signalled.extend)
    assert (young.merges, young.groups_before, young.groups_after, young.small) == ((), 2, 2, 2)
    assert signalled == [] and set(_groups(conn)) == {a, b}
    grouping_store.set_settings(conn, "support", DomainSettings(), {"group_merge_wait_seconds": 0})

    merged = grouping_store.merge_groups(conn, "support", on_ready=signalled.extend)

    (merge,) = merged.merges
    assert (merge.survivor, merge.absorbed, merge.rule) == (a, b, "waited")
    assert 0.5 < merge.distance <= 0.75
    assert (merged.groups_before, merged.groups_after, merged.traces_moved, merged.small) == (2, 1, 2, 0)
    # Five rewarded traces whose rewards differ: ready, marked once and handed on.
    assert merged.ready == (a,) and signalled == [(a, "support")]
    ((size, members, _, _),) = _groups(conn).values()
    assert size == 5 and members == sorted(SPLIT)
    assert conn.execute("SELECT count(*) FROM groups WHERE id = %s", (b,)).fetchone() == (0,)
    assert conn.execute("SELECT ready_at IS NOT NULL FROM groups WHERE id = %s", (a,)).fetchone() == (True,)
    # The survivor's centroid is the mean of all its members now.
    row = conn.execute(
        "SELECT g.centroid, (SELECT avg(embedding) FROM traces WHERE group_id = g.id) FROM groups g WHERE g.id = %s",
        (a,),
    ).fetchone()
    assert row is not None
    assert np.allclose(grouping_store.as_array(row[0]), grouping_store.as_array(row[1]), atol=1e-6)
    assert np.allclose(grouping_store.as_array(row[0]), np.mean(list(SPLIT.values()), axis=0), atol=1e-6)
    assert merged.to_json() == {
        "domain": "support",
        "groups_before": 2,
        "groups_after": 1,
        "merged": 1,
        "traces_moved": 2,
        "ready": [a],
        "small": 0,
        "merges": [{"survivor": a, "absorbed": b, "distance": merge.distance, "rule": "waited"}],
    }
    assert_whole(database_url, traces=list(SPLIT), rewards=5)  # a group's size is its members
    # A second pass has nothing left to do, and hands nothing on again.
    again = grouping_store.merge_groups(conn, "support", on_ready=signalled.extend)
    assert again.merges == () and again.ready == () and signalled == [(a, "support")]


def test_groups_whose_centroids_came_close_merge_without_waiting(conn: psycopg.Connection[Any]) -> None:
    # B opens 0.6 from A's first query; queries at 30 degrees join A and draw its centroid
    # towards B, until B's query sits 0.28 from it: within the threshold, whatever their age.
    vectors = {"a0": _at(0, 0), "b0": _at(66.4, 1)} | {f"w{i}": _at(30, 2 + i) for i in range(3)}
    ingest(conn, *(trace(name, query=name) for name in vectors))
    grouping_store.group_domain(conn, LookedUp(vectors), "support", trace_ids=["a0", "b0"])
    grouping_store.group_domain(conn, LookedUp(vectors), "support")
    (a,), (b,) = grouping_store.groups_of(conn, ["a0"]), grouping_store.groups_of(conn, ["b0"])
    assert a != b and grouping_store.groups_of(conn, ["w0", "w1", "w2"]) == [a]

    merged = grouping_store.merge_groups(conn, "support")

    assert [(m.survivor, m.absorbed, m.rule) for m in merged.merges] == [(a, b, "close")]
    assert merged.merges[0].distance < 0.5 and merged.ready == ()
    ((size, members, _, _),) = _groups(conn).values()
    assert size == 5 and members == sorted(vectors)


def _claim_distillation(conn: psycopg.Connection[Any], group_id: int) -> int:
    """A distillation of the group, running, as distill_group records it before its LLM calls."""
    row = conn.execute(
        load_queries("grpod.schema", "queries/distillation.sql")["claim_distillation"],
        {
            "domain": "support",
            "group_id": group_id,
            "input_key": f"test-{group_id}".encode(),
            "parent_version": 0,
            "samples": Jsonb([]),
            "settings": Jsonb({}),
        },
    ).fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize("running", ["small", "large"])
def test_a_group_with_a_running_distillation_is_not_touched(conn: psycopg.Connection[Any], running: str) -> None:
    a, b = _split_groups(conn, wait_seconds=0)
    busy = b if running == "small" else a
    distillation = _claim_distillation(conn, busy)
    before = _groups(conn)

    merged = grouping_store.merge_groups(conn, "support")

    # The busy group takes no part, and the other, whose nearest it is, waits for it.
    assert merged.merges == () and merged.groups_after == 2
    assert _groups(conn) == before
    # Once it has failed (it stays named by its distillation, so it can no longer disappear), the
    # other joins it and it keeps its id.
    conn.execute(
        load_queries("grpod.schema", "queries/distillation.sql")["fail_distillation"],
        {"id": distillation, "error": "test", "backoff_seconds": 60.0, "terminal": False},
    )
    merged = grouping_store.merge_groups(conn, "support")
    other = a if busy == b else b
    assert [(m.survivor, m.absorbed) for m in merged.merges] == [(busy, other)]
    ((size, _, _, _),) = _groups(conn).values()
    assert size == 5


def test_a_group_with_used_traces_is_never_absorbed(conn: psycopg.Connection[Any]) -> None:
    a, b = _split_groups(conn, wait_seconds=0)
    # B's traces were learned from: it has history (B's distillation finished and used them).
    distillation = _claim_distillation(conn, b)
    conn.execute("UPDATE distillations SET status = 'distilled' WHERE id = %s", (distillation,))
    conn.execute("UPDATE traces SET used_by_distillation = %s WHERE group_id = %s", (distillation, b))
    merged = grouping_store.merge_groups(conn, "support")
    assert [(m.survivor, m.absorbed) for m in merged.merges] == [(b, a)]
    assert merged.ready == ()  # its used traces do not count: three unused, fewer than G
    assert conn.execute("SELECT group_id FROM distillations WHERE id = %s", (distillation,)).fetchone() == (b,)


def test_merging_waits_for_the_domains_grouping_lock(conn: psycopg.Connection[Any], database_url: str) -> None:
    a, b = _split_groups(conn, wait_seconds=0)
    errors: list[BaseException] = []
    results: list[grouping_store.GroupMerges] = []

    def merge() -> None:
        try:
            with psycopg.connect(database_url, autocommit=True) as other:
                results.append(grouping_store.merge_groups(other, "support"))
        except BaseException as error:
            errors.append(error)

    with psycopg.connect(database_url) as holder:  # a placement of the domain, mid-transaction
        holder.execute(
            load_queries("grpod.schema", "queries/grouping.sql")["lock_domain_grouping"], {"domain": "support"}
        )
        thread = threading.Thread(target=merge)
        thread.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # until the merge is seen waiting for the lock
            waiting = conn.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            )
            if waiting.fetchone() == (1,):
                break
            time.sleep(0.05)
        else:
            pytest.fail("the merge never waited for the grouping lock")
        assert results == [] and set(_groups(conn)) == {a, b}
        holder.rollback()
    thread.join(timeout=60)
    assert errors == [] and [m.absorbed for m in results[0].merges] == [b]
