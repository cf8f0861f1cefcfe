"""State planted for the maintenance sweeps: groups of one topic, applied distillations, old rows.

Grouping is not what these tests are about, so one embedder puts every query of a domain in one
group; ages are set with plain SQL, since the sweeps compare them with the database's clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import psycopg

from grpod.workers import distillation_store, grouping_store, update_window
from grpod.workers.embeddings import Vectors

from ..factories import agent_trace, reward
from ..scripted_llm import GOOD_SCRIPT, ScriptedLLM
from .stored import ingest


class OneTopic:
    """Every text gets the same unit vector: a domain's traces all join one group."""

    model = "one-topic-test"
    dimension = 3

    def embed(self, texts: Sequence[str]) -> Vectors:
        return np.tile(np.array([1.0, 0.0, 0.0], dtype=np.float32), (len(texts), 1))


def traces(
    conn: psycopg.Connection[Any], prefix: str, rewards: Sequence[float | None], domain: str = "support"
) -> list[str]:
    """Stored traces ``prefix0``, ``prefix1``, ..., each with its reward (None: none yet), grouped."""
    ids = [f"{prefix}{i}" for i in range(len(rewards))]
    ingest(
        conn,
        *(
            agent_trace(t, f"How do I rotate my API key? ({t})", good=(v or 0) > 0.5, domain=domain)
            for t, v in zip(ids, rewards, strict=True)
        ),
        *(reward(t, v) for t, v in zip(ids, rewards, strict=True) if v is not None),
    )
    grouping_store.group_domain(conn, OneTopic(), domain)
    return ids


def group_of(conn: psycopg.Connection[Any], trace_id: str) -> int:
    row = conn.execute("SELECT group_id FROM traces WHERE trace_id = %s", (trace_id,)).fetchone()
    assert row is not None and row[0] is not None
    return int(row[0])


def applied_distillation(conn: psycopg.Connection[Any], prefix: str, domain: str = "support") -> int:
    """A group of five distilled with the scripted LLM and published: its distillation's id."""
    ids = traces(conn, prefix, [1.0, 0.0, 1.0, 0.0, 0.0], domain)
    run = distillation_store.distill_group(conn, ScriptedLLM(GOOD_SCRIPT), OneTopic(), group_of(conn, ids[0]))
    assert run.status == "distilled" and run.id is not None, run.reason
    window = update_window.run_window(conn, ScriptedLLM(GOOD_SCRIPT), domain, force=True)
    assert window.status in ("published", "no_change"), window  # either way the distillation is applied
    return run.id
