"""Grouping stage, the database shell: embed waiting traces, place them in groups, mark ready groups,
merge groups that never reach their size.

Assignment for a domain runs under a transaction-scoped advisory lock, so two workers placing
similar queries of a new topic at once cannot open two groups for it; different domains proceed
in parallel. The nearest centroid is found with the HNSW index of the domain's dimension, with
iterative index scans so that the domain filter cannot starve the search.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg
import structlog
from pgvector.psycopg import register_vector
from psycopg import sql

from grpod.schema.errors import NotFoundError, OperatorError
from grpod.schema.sql import load_queries
from grpod.workers.embeddings import EmbeddingError
from grpod.workers.grouping import (
    DomainSettings,
    Member,
    Merge,
    MergeCandidate,
    Readiness,
    SourceReward,
    Vector,
    cosine_distance,
    joins_nearest,
    merged_into,
    moved_centroid,
    plan_merges,
    readiness,
)
from grpod.workers.upkeep_settings import UpkeepSettings

QUERIES = ("grpod.schema", "queries/grouping.sql")
log = structlog.stdlib.get_logger(__name__)
ReadyGroups = Callable[[list[tuple[int, str]]], None]


class EmbeddingModelMismatchError(OperatorError):
    """A domain's vectors come from another model; mixing them would make distances meaningless."""


@dataclass(frozen=True)
class DomainState:
    settings: DomainSettings
    embedding_model: str | None
    embedding_dimension: int | None


@dataclass(frozen=True)
class Placement:
    trace_id: str
    group_id: int
    new_group: bool


def _queries() -> Any:
    return load_queries(*QUERIES)


def _dimensioned(query: str, dimension: int) -> sql.Composed:
    name = f"groups_centroid_hnsw_{dimension}"
    return sql.SQL(query).format(  # the text is ours, from a shipped file
        dimension=sql.Literal(dimension), index=sql.Identifier(name), index_name=sql.Literal(name)
    )


def as_array(value: Any) -> Vector:
    """A pgvector value as read by psycopg, as float32 numpy."""
    array = value.to_numpy() if hasattr(value, "to_numpy") else value
    return np.asarray(array, dtype=np.float32)


_PREPARED: weakref.WeakSet[psycopg.Connection[Any]] = weakref.WeakSet()


def prepare(conn: psycopg.Connection[Any]) -> None:
    """Let this connection send and receive pgvector values as numpy arrays (once per connection)."""
    if conn not in _PREPARED:
        register_vector(conn)
        _PREPARED.add(conn)


def domain_state(conn: psycopg.Connection[Any], domain: str) -> DomainState:
    row = conn.execute(_queries()["domain_state"], {"domain": domain}).fetchone()
    if row is None:
        raise NotFoundError(f"there is no domain {domain!r}; `grpod domains` lists them.")
    return DomainState(DomainSettings.from_json(row[0] or {}), row[1], row[2])


def ensure_domain(conn: psycopg.Connection[Any], domain: str) -> None:
    """Make the domain (default settings) if it has none yet: for a cold start before any trace."""
    conn.execute(load_queries("grpod.schema", "queries/ingest.sql")["ensure_domains"], {"names": [domain]})


def claim_embedding_model(conn: psycopg.Connection[Any], domain: str, model: str, dimension: int) -> DomainState:
    """Record the domain's model on its first vectors; refuse another model afterwards."""
    conn.execute(_queries()["claim_embedding_model"], {"domain": domain, "model": model, "dimension": dimension})
    state = domain_state(conn, domain)
    if (state.embedding_model, state.embedding_dimension) != (model, dimension):
        raise EmbeddingModelMismatchError(
            f"domain {domain!r} is embedded with {state.embedding_model} ({state.embedding_dimension} dimensions), "
            f"not {model} ({dimension}); run `grpod domain reembed {domain}` to switch models."
        )
    return state


def ensure_centroid_index(conn: psycopg.Connection[Any], dimension: int) -> None:
    """The HNSW index for this dimension's centroids, created once (by one process)."""
    queries = _queries()
    exists = conn.execute(_dimensioned(queries["centroid_index_exists"], dimension)).fetchone()
    if exists is not None and exists[0]:
        return
    with conn.transaction():
        conn.execute(queries["lock_index_creation"])
        conn.execute(_dimensioned(queries["create_centroid_index"], dimension))


def ungrouped(
    conn: psycopg.Connection[Any], domain: str, limit: int, trace_ids: Sequence[str] | None = None
) -> list[tuple[str, str]]:
    rows = conn.execute(
        _queries()["ungrouped_traces"],
        {"domain": domain, "limit": limit, "trace_ids": list(trace_ids) if trace_ids is not None else None},
    ).fetchall()
    return [(str(row[0]), str(row[1])) for row in rows]


def place(
    conn: psycopg.Connection[Any],
    domain: str,
    items: Sequence[tuple[str, Vector]],
    settings: DomainSettings,
    dimension: int,
) -> list[Placement]:
    """Place embedded traces in the domain's groups, in one transaction under the domain's lock.

    Groups touched by the batch keep their moving centroid in memory and are written once at the
    end: rewriting an indexed vector per trace would add an HNSW entry per trace.
    """
    queries = _queries()
    nearest_query = _dimensioned(queries["nearest_group"], dimension)
    placements: list[Placement] = []
    with conn.transaction():
        conn.execute(queries["lock_domain_grouping"], {"domain": domain})
        conn.execute(queries["iterative_scan"])
        waiting = {
            str(row[0])
            for row in conn.execute(queries["still_ungrouped"], {"trace_ids": [t for t, _ in items]}).fetchall()
        }
        touched: dict[int, tuple[Vector, int]] = {}  # group -> (centroid, size) as of now
        for trace_id, vector in items:
            if trace_id not in waiting:  # grouped already (a redelivered task): nothing to do
                continue
            waiting.discard(trace_id)
            group_id: int | None = None
            row = conn.execute(nearest_query, {"domain": domain, "vector": vector}).fetchone()
            if row is not None:
                nearest_group = int(row[0])
                centroid, size = touched.get(nearest_group, (as_array(row[2]), int(row[1])))
                distance = cosine_distance(centroid, vector) if nearest_group in touched else float(row[3])
                if joins_nearest(distance, settings.group_threshold):
                    group_id = nearest_group
                    touched[nearest_group] = (moved_centroid(centroid, size, vector), size + 1)
            if group_id is None:
                created = conn.execute(
                    queries["create_group"], {"domain": domain, "dimension": dimension, "vector": vector}
                ).fetchone()
                assert created is not None
                group_id = int(created[0])
                touched[group_id] = (vector, 1)
                placements.append(Placement(trace_id, group_id, True))
            else:
                placements.append(Placement(trace_id, group_id, False))
        vectors = dict(items)
        with conn.cursor() as cursor:
            cursor.executemany(
                queries["place_trace"],
                [{"trace_id": p.trace_id, "vector": vectors[p.trace_id], "group_id": p.group_id} for p in placements],
            )
            cursor.executemany(
                queries["set_group"],
                [{"id": gid, "centroid": centroid, "size": size} for gid, (centroid, size) in touched.items()],
            )
    return placements


def members(conn: psycopg.Connection[Any], group_ids: Sequence[int]) -> dict[int, list[Member]]:
    rows = conn.execute(_queries()["group_members"], {"group_ids": list(group_ids)}).fetchall()
    result: dict[int, list[Member]] = {}
    for group_id, trace_id, used, sources, values, received in rows:
        rewards = tuple(
            SourceReward(source=s, value=float(v), received_at=float(r))
            for s, v, r in zip(sources, values, received, strict=True)
        )
        result.setdefault(int(group_id), []).append(Member(str(trace_id), rewards, bool(used)))
    return result


def check_readiness(
    conn: psycopg.Connection[Any], group_ids: Sequence[int], on_ready: ReadyGroups | None = None
) -> dict[int, Readiness]:
    """Evaluate the rule for these groups; mark the newly ready ones exactly once and report them."""
    if not group_ids:
        return {}
    queries = _queries()
    verdicts: dict[int, Readiness] = {}
    newly_ready: list[tuple[int, str]] = []
    settings_cache: dict[str, DomainSettings] = {}
    rows = conn.execute(queries["group_domains"], {"group_ids": list(group_ids)}).fetchall()
    domains = {int(row[0]): str(row[1]) for row in rows}
    for group_id, group_members in members(conn, list(domains)).items():
        domain = domains[group_id]
        if domain not in settings_cache:
            settings_cache[domain] = domain_state(conn, domain).settings
        verdict = readiness(group_members, settings_cache[domain])
        verdicts[group_id] = verdict
        if verdict.ready:
            marked = conn.execute(queries["mark_ready"], {"id": group_id}).fetchone()
            if marked is not None:
                newly_ready.append((int(marked[0]), str(marked[1])))
    if newly_ready and on_ready is not None:
        on_ready(newly_ready)
    return verdicts


def groups_of(conn: psycopg.Connection[Any], trace_ids: Sequence[str]) -> list[int]:
    rows = conn.execute(_queries()["groups_of_traces"], {"trace_ids": list(trace_ids)}).fetchall()
    return [int(row[0]) for row in rows]


def set_settings(
    conn: psycopg.Connection[Any], domain: str, settings: DomainSettings, more: Mapping[str, object] | None = None
) -> None:
    """Store the domain's grouping settings (and ``more`` settings of other stages, with them)."""
    values = settings.to_json() | dict(more or {})
    conn.execute(_queries()["set_domain_settings"], {"domain": domain, "settings": json.dumps(values)})


@dataclass(frozen=True)
class GroupingRun:
    embedded: int
    placed: int
    new_groups: int
    ready: list[int]
    refused: int = 0  # traces whose query the embeddings API refused: kept, never grouped


def embed_isolating(embedder: Any, texts: Sequence[str]) -> tuple[list[Vector | None], dict[int, str]]:
    """Vectors for ``texts``; a text the API refuses gets None and its reason, found by halving the
    batch, so one bad query cannot hold back the others. An outage (not a refusal) raises."""
    try:
        return list(embedder.embed(texts)), {}
    except EmbeddingError as error:
        if not error.refused:
            raise
        if len(texts) == 1:
            return [None], {0: str(error)}
    half = len(texts) // 2
    first, first_refused = embed_isolating(embedder, texts[:half])
    second, second_refused = embed_isolating(embedder, texts[half:])
    return first + second, first_refused | {half + i: why for i, why in second_refused.items()}


def group_domain(
    conn: psycopg.Connection[Any],
    embedder: Any,
    domain: str,
    *,
    trace_ids: Sequence[str] | None = None,
    limit: int = 1000,
    on_ready: ReadyGroups | None = None,
) -> GroupingRun:
    """Embed the domain's waiting traces (or just these), place them, and check their groups."""
    prepare(conn)
    waiting = ungrouped(conn, domain, limit, trace_ids)
    if not waiting:
        return GroupingRun(0, 0, 0, [])
    found, refused = embed_isolating(embedder, [query for _, query in waiting])
    for index, why in refused.items():
        conn.execute(_queries()["mark_grouping_error"], {"trace_id": waiting[index][0], "error": why[:1000]})
        log.warning(
            "the embeddings API refused a query; its trace is kept but not grouped", trace_id=waiting[index][0], why=why
        )
    embedded = [(trace_id, vector) for (trace_id, _), vector in zip(waiting, found, strict=True) if vector is not None]
    if not embedded:
        return GroupingRun(len(waiting), 0, 0, [], len(refused))
    dimension = int(embedded[0][1].shape[0])
    state = claim_embedding_model(conn, domain, embedder.model, dimension)
    ensure_centroid_index(conn, dimension)
    placements = place(conn, domain, embedded, state.settings, dimension)
    touched = sorted({p.group_id for p in placements})
    ready: list[int] = []

    def collect(groups: list[tuple[int, str]]) -> None:
        ready.extend(group_id for group_id, _ in groups)
        if on_ready is not None:
            on_ready(groups)

    check_readiness(conn, touched, collect)
    return GroupingRun(len(waiting), len(placements), sum(p.new_group for p in placements), ready, len(refused))


def domains_with_ungrouped(conn: psycopg.Connection[Any]) -> list[str]:
    return [str(row[0]) for row in conn.execute(_queries()["domains_with_ungrouped_traces"]).fetchall()]


def unready_rewarded_groups(conn: psycopg.Connection[Any], limit: int = 1000, domain: str | None = None) -> list[int]:
    rows = conn.execute(_queries()["unready_groups_with_rewards"], {"limit": limit, "domain": domain}).fetchall()
    return [int(row[0]) for row in rows]


def list_groups(conn: psycopg.Connection[Any], domain: str, limit: int = 100) -> list[dict[str, Any]]:
    """The domain's groups, largest first, each with its readiness verdict and members."""
    state = domain_state(conn, domain)
    rows = conn.execute(_queries()["list_groups"], {"domain": domain, "limit": limit}).fetchall()
    group_members = members(conn, [int(row[0]) for row in rows])
    listed = []
    for group_id, size, ready_at, created_at, trace_ids, samples in rows:
        verdict = readiness(group_members.get(int(group_id), []), state.settings)
        listed.append(
            {
                "id": int(group_id),
                "size": int(size),
                "rewarded": verdict.rewarded,
                "spread": verdict.spread,
                "ready": ready_at is not None or verdict.ready,
                "ready_at": ready_at.isoformat() if ready_at is not None else None,
                "why_not_ready": None if verdict.ready or ready_at is not None else verdict.reason,
                "created_at": created_at.isoformat(),
                "trace_ids": list(trace_ids or []),
                "samples": list(samples or []),
            }
        )
    return listed


def reembed(
    conn: psycopg.Connection[Any],
    embedder: Any,
    domain: str,
    progress: Callable[[int, int], None] | None = None,
    batch: int = 256,
) -> GroupingRun:
    """Switch a domain to the configured embedding model: drop its vectors and groups, then embed and
    group every trace again, oldest first (a group's readiness is then judged afresh)."""
    queries = _queries()
    domain_state(conn, domain)  # an unknown domain is an operator error
    with conn.transaction():
        conn.execute(queries["lock_domain_grouping"], {"domain": domain})
        conn.execute(queries["ungroup_domain_traces"], {"domain": domain})
        conn.execute(queries["delete_domain_groups"], {"domain": domain})
        conn.execute(queries["set_embedding_model"], {"domain": domain, "model": None, "dimension": None})
    row = conn.execute(queries["count_domain_traces"], {"domain": domain}).fetchone()
    total = int(row[0]) if row else 0
    done = GroupingRun(0, 0, 0, [])
    while True:
        run = group_domain(conn, embedder, domain, limit=batch)
        if run.embedded == 0:
            break
        done = GroupingRun(
            done.embedded + run.embedded,
            done.placed + run.placed,
            done.new_groups + run.new_groups,
            done.ready + run.ready,
        )
        if progress is not None:
            progress(done.placed, total)
    return done


# Merging groups that never reach their size ----------------------------------------------------


@dataclass(frozen=True)
class GroupMerges:
    """What one merge pass over a domain's groups did."""

    domain: str
    groups_before: int
    groups_after: int
    traces_moved: int
    merges: tuple[Merge, ...]
    ready: tuple[int, ...]  # survivors that became ready (handed to ``on_ready``)
    small: int  # groups afterwards with fewer than G members that can still count toward readiness

    def to_json(self) -> dict[str, object]:
        return {
            "domain": self.domain,
            "groups_before": self.groups_before,
            "groups_after": self.groups_after,
            "merged": len(self.merges),
            "traces_moved": self.traces_moved,
            "ready": list(self.ready),
            "small": self.small,
            "merges": [merge.to_json() for merge in self.merges],
        }


def merge_groups(conn: psycopg.Connection[Any], domain: str, on_ready: ReadyGroups | None = None) -> GroupMerges:
    """Merge the domain's groups that belong together (``grouping.plan_merges``), then check the
    survivors' readiness as ``group_domain`` does, handing newly ready ones to ``on_ready``.

    One transaction under the domain's grouping lock (no placement runs meanwhile), with the
    domain's groups locked, so that a ready mark or a new distillation waits for the merge. Give it
    an autocommit connection outside any transaction, as ``group_domain``: the merge, and then
    each ready mark, is committed before ``on_ready`` hands the group on.
    """
    prepare(conn)
    queries = _queries()
    row = conn.execute(queries["domain_state"], {"domain": domain}).fetchone()
    if row is None:
        raise NotFoundError(f"there is no domain {domain!r}; `grpod domains` lists them.")
    values, dimension = row[0] or {}, row[2]
    settings, upkeep = DomainSettings.from_json(values), UpkeepSettings.from_json(values)
    if dimension is None:  # nothing embedded yet: no groups
        return GroupMerges(domain, 0, 0, 0, (), (), 0)
    with conn.transaction():
        conn.execute(queries["lock_domain_grouping"], {"domain": domain})
        conn.execute(queries["lock_domain_groups"], {"domain": domain})
        candidates = [
            MergeCandidate(
                int(r[0]), as_array(r[1]), int(r[2]), float(r[3]), int(r[4]), busy=bool(r[5]), absorbable=bool(r[6])
            )
            for r in conn.execute(queries["merge_candidates"], {"domain": domain, "dimension": dimension})
        ]
        merges = plan_merges(
            candidates,
            threshold=settings.group_threshold,
            group_size=settings.group_size,
            wait_seconds=upkeep.group_merge_wait_seconds,
            factor=upkeep.group_merge_factor,
        )
        into = merged_into(merges)
        survivors = sorted(set(into.values()))
        moved = 0
        if merges:
            absorbed = sorted(into)
            cursor = conn.execute(
                queries["move_merged_traces"], {"absorbed": absorbed, "survivors": [into[a] for a in absorbed]}
            )
            moved = cursor.rowcount
            conn.execute(queries["refresh_groups"], {"group_ids": survivors})
            conn.execute(queries["delete_merged_groups"], {"group_ids": absorbed})
    for merge in merges:
        log.info(
            "groups merged",
            domain=domain,
            survivor=merge.survivor,
            absorbed=merge.absorbed,
            distance=round(merge.distance, 4),
            rule=merge.rule,
        )
    ready: list[int] = []

    def collect(groups: list[tuple[int, str]]) -> None:
        ready.extend(group_id for group_id, _ in groups)
        if on_ready is not None:
            on_ready(groups)

    check_readiness(conn, survivors, collect)
    counting = {c.id: c.counting or 0 for c in candidates}
    for absorbed_id, survivor_id in into.items():
        counting[survivor_id] += counting.pop(absorbed_id)
    small = sum(members < settings.group_size for members in counting.values())
    return GroupMerges(domain, len(candidates), len(counting), moved, tuple(merges), tuple(sorted(ready)), small)
