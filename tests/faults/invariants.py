"""What every fault test checks at its end: each accepted event is stored exactly once, and every
group and library version is whole."""

from __future__ import annotations

import time
from collections.abc import Collection

import psycopg

from .tcp_postgres import count_rows


def wait_for_events(url: str, *, traces: int, rewards: int, timeout: float = 60) -> None:
    """Wait until at least ``traces`` traces and ``rewards`` rewards are stored. A batch's trace and
    its reward can land in different consumer batches, so waiting on traces alone races the reward."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (count_rows(url, "traces") or 0) >= traces and (count_rows(url, "rewards") or 0) >= rewards:
            return
        time.sleep(0.5)


def assert_whole(url: str, *, traces: Collection[str] | None = None, rewards: int | None = None) -> None:
    """``traces``: the trace ids accepted (stored once each, no other); ``rewards``: how many rewards."""
    with psycopg.connect(url) as conn:
        if traces is not None:
            stored = [str(row[0]) for row in conn.execute("SELECT trace_id FROM traces")]
            assert len(stored) == len(set(stored)) and set(stored) == set(traces), "traces stored other than once"
        if rewards is not None:
            count = conn.execute("SELECT count(*) FROM rewards").fetchone()
            assert count == (rewards,), f"{count} rewards stored, {rewards} accepted"
        # A group's size is its members: no placement was half written.
        uneven = conn.execute(
            "SELECT g.id, g.size, count(t.trace_id) FROM groups g LEFT JOIN traces t ON t.group_id = g.id "
            "GROUP BY g.id HAVING g.size <> count(t.trace_id)"
        ).fetchall()
        assert uneven == [], f"groups whose size is not their members (id, size, members): {uneven}"
        # Each domain's versions are 1..n, each on an earlier parent, with unique experience ids
        # below its next id.
        for domain, numbers in conn.execute(
            "SELECT domain, array_agg(version ORDER BY version) FROM library_versions GROUP BY domain"
        ):
            assert numbers == list(range(1, len(numbers) + 1)), f"{domain}: versions {numbers}"
        broken = conn.execute(
            "SELECT v.domain, v.version FROM library_versions v "
            "WHERE v.parent >= v.version "
            "OR (SELECT count(*) FROM jsonb_array_elements(v.experiences) e) "
            "   <> (SELECT count(DISTINCT e->>'id') FROM jsonb_array_elements(v.experiences) e) "
            "OR EXISTS (SELECT 1 FROM jsonb_array_elements(v.experiences) e "
            "           WHERE (e->>'id')::int >= v.next_experience_id OR coalesce(e->>'text', '') = '')"
        ).fetchall()
        assert broken == [], f"versions that are not whole: {broken}"
        # A version and the distillations it applied agree, both ways.
        disagreeing = conn.execute(
            "SELECT d.id, d.status, d.version FROM distillations d "
            "LEFT JOIN library_versions v ON (v.domain, v.version) = (d.domain, d.version) "
            "WHERE d.version IS NOT NULL AND (v.version IS NULL OR NOT d.id = ANY (v.distillation_ids))"
        ).fetchall()
        assert disagreeing == [], f"distillations their version does not list, or the other way: {disagreeing}"
        listed = conn.execute(
            "SELECT v.domain, v.version, i FROM library_versions v, unnest(v.distillation_ids) i "
            "WHERE NOT EXISTS (SELECT 1 FROM distillations d WHERE d.id = i AND d.version = v.version "
            "                  AND d.status = 'applied')"
        ).fetchall()
        assert listed == [], f"versions listing a distillation not applied to them: {listed}"
        # Each trace learned from once, by a distillation that finished.
        unused_by = conn.execute(
            "SELECT t.trace_id FROM traces t LEFT JOIN distillations d ON d.id = t.used_by_distillation "
            "WHERE t.used_by_distillation IS NOT NULL AND (d.id IS NULL OR d.status NOT IN ('distilled', 'applied'))"
        ).fetchall()
        assert unused_by == [], f"traces marked used by no finished distillation: {unused_by}"
