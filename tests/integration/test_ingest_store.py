"""Storing events in the real PostgreSQL: exactly once, late rewards, conflicts, every rejection kept."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from grpod.daemon.rejected import list_rejected, replay
from grpod.daemon.settings import Settings
from grpod.daemon.status import domain_counts
from grpod.schema.errors import OperatorError
from grpod.schema.events import Limits, RejectReason
from grpod.workers.ingest import BatchOutcome, Incoming, store_isolating_failures
from grpod.workers.maintenance import expire_orphan_rewards

from ..factories import raw, reward, trace

LIMITS = Limits(max_event_bytes=64 * 1024, max_query_bytes=256)


def store(conn: psycopg.Connection[Any], *payloads: bytes, origin: str = "queue") -> BatchOutcome:
    return store_isolating_failures(conn, [Incoming(p, origin) for p in payloads], LIMITS, payload_limit=4096)


def count(conn: psycopg.Connection[Any], sql: str) -> int:
    row = conn.execute(sql).fetchone()
    assert row is not None
    return int(row[0])


def test_a_trace_is_stored_once_whatever_the_redeliveries(conn: psycopg.Connection[Any]) -> None:
    first = store(conn, raw(trace("t-1")), raw(reward("t-1")))
    assert (first.accepted, first.duplicates) == (2, 0)
    assert first.stored_traces == {"support": ["t-1"]}
    again = store(conn, raw(trace("t-1")), raw(reward("t-1")), raw(trace("t-1")))
    assert (again.accepted, again.duplicates, sum(again.rejected.values())) == (0, 3, 0)
    assert again.stored_traces == {}
    assert count(conn, "SELECT count(*) FROM traces") == 1
    assert count(conn, "SELECT count(*) FROM rewards") == 1
    stored = conn.execute("SELECT domain, query, trajectory, library_version, metadata FROM traces").fetchone()
    assert stored is not None
    assert stored[0] == "support" and stored[3] == 7
    assert stored[2][2] == {"role": "tool", "tool_call_id": "c1", "content": "Settings > API keys > Rotate"}
    assert stored[4] == {"agent": "support-bot", "latency_ms": 812}


def test_a_reward_before_its_trace_waits_then_joins(conn: psycopg.Connection[Any]) -> None:
    store(conn, raw(reward("t-late", 0.0, source="tests")))
    assert (
        count(
            conn,
            "SELECT count(*) FROM rewards r WHERE NOT EXISTS (SELECT 1 FROM traces t WHERE t.trace_id = r.trace_id)",
        )
        == 1
    )
    assert domain_counts(conn) == []
    store(conn, raw(trace("t-late")))
    assert domain_counts(conn) == [{"domain": "support", "traces": 1, "rewarded_traces": 1}]


def test_several_reward_sources_for_one_trace(conn: psycopg.Connection[Any]) -> None:
    outcome = store(
        conn,
        raw(trace("t-1")),
        raw(reward("t-1", 1.0, source="user_thumbs")),
        raw(reward("t-1", 0.2, source="unit_tests", critique="2 of 10 tests pass")),
        raw(reward("t-1", 0.7, source="grader", ground_truth="Settings > API keys > Rotate")),
    )
    assert outcome.accepted == 4
    rows = conn.execute("SELECT source, value, critique, ground_truth FROM rewards ORDER BY source").fetchall()
    assert rows == [
        ("grader", 0.7, None, "Settings > API keys > Rotate"),
        ("unit_tests", 0.2, "2 of 10 tests pass", None),
        ("user_thumbs", 1.0, None, None),
    ]
    assert domain_counts(conn) == [{"domain": "support", "traces": 1, "rewarded_traces": 1}]


def test_conflicts_are_rejected_and_never_overwrite(conn: psycopg.Connection[Any]) -> None:
    store(conn, raw(trace("t-1")), raw(reward("t-1", 1.0)))
    outcome = store(conn, raw(trace("t-1", answer="a different answer")), raw(reward("t-1", 0.0)))
    assert outcome.rejected == {"conflict": 2}
    assert conn.execute("SELECT answer FROM traces").fetchone() == ("Go to Settings > API keys and press Rotate.",)
    assert conn.execute("SELECT value FROM rewards").fetchone() == (1.0,)
    rejected = list_rejected(conn, reason="conflict", limit=10)
    assert {r["trace_id"] for r in rejected} == {"t-1"}
    assert json.loads(rejected[-1]["payload"])["answer"] == "a different answer"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\x00\x01 not json", RejectReason.UNPARSABLE),
        (raw(trace(query=7)), RejectReason.SCHEMA_VIOLATION),
        (raw(trace(schema_version=9)), RejectReason.UNKNOWN_SCHEMA_VERSION),
        (raw(trace(domain="No Spaces")), RejectReason.BAD_DOMAIN),
        (
            b'{"type":"reward","schema_version":1,"trace_id":"t","value":NaN,"source":"s"}',
            RejectReason.NON_FINITE_REWARD,
        ),
        (raw(trace(answer="x" * 70_000)), RejectReason.EVENT_TOO_LARGE),
        (raw(trace(query="q" * 300)), RejectReason.QUERY_TOO_LARGE),
    ],
)
def test_every_rejection_is_kept_with_reason_time_and_payload(
    conn: psycopg.Connection[Any], payload: bytes, reason: RejectReason
) -> None:
    outcome = store(conn, raw(trace("t-ok")), payload, raw(trace("t-ok-2")))
    assert outcome.accepted == 2, "the batch goes on"
    assert outcome.rejected == {reason.value: 1}
    (row,) = list_rejected(conn, reason=None, limit=10)
    assert row["reason"] == reason.value
    assert row["detail"]
    assert row["received_at"]
    assert row["origin"] == "queue"
    expected = payload[:4096]
    assert row["payload"] == expected.decode("utf-8", errors="replace")
    assert row["payload_size"] == len(payload)
    assert row["payload_truncated"] is (len(payload) > 4096)


def test_an_event_the_database_refuses_is_isolated_from_its_batch(conn: psycopg.Connection[Any]) -> None:
    conn.execute(
        """
        CREATE FUNCTION refuse_cursed() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.trace_id = 't-cursed' THEN RAISE EXCEPTION 'the database refuses this trace'; END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER refuse_cursed BEFORE INSERT ON traces FOR EACH ROW EXECUTE FUNCTION refuse_cursed();
        """
    )
    outcome = store(conn, raw(trace("t-a")), raw(trace("t-cursed")), raw(trace("t-b")))
    assert outcome.accepted == 2
    assert outcome.rejected == {"processing_error": 1}
    (row,) = list_rejected(conn, reason="processing_error", limit=5)
    assert "the database refuses this trace" in row["detail"]
    assert count(conn, "SELECT count(*) FROM traces") == 2


def test_domains_are_created_on_their_first_trace_and_kept_apart(conn: psycopg.Connection[Any]) -> None:
    store(conn, raw(trace("a-1", domain="billing")), raw(trace("s-1", domain="support")), raw(reward("s-1")))
    assert domain_counts(conn) == [
        {"domain": "billing", "traces": 1, "rewarded_traces": 0},
        {"domain": "support", "traces": 1, "rewarded_traces": 1},
    ]
    settings = conn.execute("SELECT name, settings FROM domains ORDER BY name").fetchall()
    assert settings == [("billing", {}), ("support", {})]


def test_orphan_rewards_expire_into_the_rejected_store_and_can_be_replayed(
    conn: psycopg.Connection[Any], tmp_path: Any
) -> None:
    store(conn, raw(reward("t-never", 0.5, source="grader", critique="half right")), raw(reward("t-recent")))
    conn.execute("UPDATE rewards SET received_at = now() - interval '2 hours' WHERE trace_id = 't-never'")
    assert expire_orphan_rewards(conn, ttl_seconds=3600) == 1
    assert count(conn, "SELECT count(*) FROM rewards") == 1, "the recent one still waits"
    (row,) = list_rejected(conn, reason="reward_expired", limit=5)
    assert row["trace_id"] == "t-never"
    assert json.loads(row["payload"])["critique"] == "half right"
    # The trace turns up after all: the operator replays the expired reward.
    store(conn, raw(trace("t-never")))
    result = replay(conn, row["id"], Settings(home=tmp_path))
    assert result.outcome == "accepted"
    assert conn.execute("SELECT value, critique FROM rewards WHERE trace_id = 't-never'").fetchone() == (
        0.5,
        "half right",
    )
    (after,) = list_rejected(conn, reason="reward_expired", limit=5)
    assert after["replay_outcome"] == "accepted" and after["replayed_at"]


def test_replay_after_raising_a_limit(conn: psycopg.Connection[Any], tmp_path: Any) -> None:
    outcome = store(conn, raw(trace("t-long", query="q" * 300)))
    (rejected_id,) = outcome.rejected_ids
    again = replay(conn, rejected_id, Settings(home=tmp_path, max_query_bytes=128))
    assert again.outcome == "rejected" and again.reason == "query_too_large"
    assert replay(conn, rejected_id, Settings(home=tmp_path, max_query_bytes=1024)).outcome == "accepted"
    assert replay(conn, rejected_id, Settings(home=tmp_path, max_query_bytes=1024)).outcome == "duplicate"
    assert count(conn, "SELECT count(*) FROM traces WHERE trace_id = 't-long'") == 1


def test_replay_refuses_unknown_ids_and_truncated_payloads(conn: psycopg.Connection[Any], tmp_path: Any) -> None:
    with pytest.raises(OperatorError, match="there is no rejected event 424242"):
        replay(conn, 424242, Settings(home=tmp_path))
    outcome = store_isolating_failures(
        conn, [Incoming(raw(trace(answer="x" * 9000)), "queue")], Limits(max_event_bytes=2048), payload_limit=1024
    )
    (rejected_id,) = outcome.rejected_ids
    with pytest.raises(OperatorError, match="truncated"):
        replay(conn, rejected_id, Settings(home=tmp_path))


def test_a_re_sent_event_serialised_differently_is_a_duplicate_not_a_conflict(conn: psycopg.Connection[Any]) -> None:
    event, prize = trace("t-1"), reward("t-1", 0.5)
    store(conn, raw(event), raw(prize))
    reordered = [json.dumps(dict(reversed(list(e.items()))), indent=1).encode() for e in (event, prize)]
    outcome = store(conn, *reordered)
    assert (outcome.accepted, outcome.duplicates, dict(outcome.rejected)) == (0, 2, {})


def test_a_rejected_event_keeps_its_domain_and_can_be_listed_by_it(conn: psycopg.Connection[Any]) -> None:
    store(conn, raw(trace("t-1")), raw(trace("c-1", domain="coding")))
    outcome = store(
        conn,
        raw(trace("t-2", query=7)),  # names support
        raw(reward("c-1", "high")),  # a reward of a stored coding trace: coding
        raw(reward("t-none", "high")),  # its trace never came: no domain
        b"{not json",
    )
    assert sum(outcome.rejected.values()) == 4
    listed = list_rejected(conn, reason=None, limit=10)
    assert [row["domain"] for row in listed] == [None, None, "coding", "support"]
    assert [row["trace_id"] for row in list_rejected(conn, None, 10, ["support", "coding"])] == ["c-1", "t-2"]
    assert list_rejected(conn, None, 10, []) == []


def _awaiting(conn: psycopg.Connection[Any]) -> list[str]:
    return [row[0] for row in conn.execute("SELECT trace_id FROM traces_awaiting_reward ORDER BY 1")]


def test_a_trace_awaits_its_first_reward_whatever_the_order_of_arrival(conn: psycopg.Connection[Any]) -> None:
    store(conn, raw(trace("first")))  # its reward comes later
    store(conn, raw(reward("early")))  # a reward before its trace
    store(conn, raw(reward("together")), raw(trace("together")))  # both in one batch, reward first
    store(conn, raw(trace("other", domain="coding")))
    assert _awaiting(conn) == ["first", "other"]

    store(conn, raw(trace("early")))
    assert _awaiting(conn) == ["first", "other"]
    store(conn, raw(reward("first")))
    assert _awaiting(conn) == ["other"]
    # Redeliveries and a second source change nothing; the other domain still awaits.
    store(conn, raw(trace("first")), raw(reward("first")), raw(reward("first", 0.5, source="grader")))
    assert _awaiting(conn) == ["other"]
    rows = conn.execute("SELECT domain FROM traces_awaiting_reward").fetchall()
    assert rows == [("coding",)]


def test_a_trace_and_its_reward_in_concurrent_batches_are_counted_by_the_sweep(database_url: str) -> None:
    """Each batch's transaction sees nothing of the other's: the trace is left marked awaiting, and
    its reward uncounted. The maintenance sweep (every GRPOD_MAINTENANCE_SECONDS) sets both right."""
    from grpod.daemon.api.dashboard_store import overview
    from grpod.daemon.resources import open_pool
    from grpod.workers.maintenance_sweep import DeploymentUpkeep, sweep

    with open_pool(database_url, Settings(database_url=database_url), max_size=2) as pool:
        with pool.connection() as first, pool.connection() as second, first.transaction(), second.transaction():
            store(first, raw(trace("raced")))
            store(second, raw(reward("raced")))
        with pool.connection() as conn:
            assert _awaiting(conn) == ["raced"]
            assert [row["awaiting_reward"] for row in overview(conn, None)] == [1]
            assert domain_counts(conn) == [{"domain": "support", "traces": 1, "rewarded_traces": 0}]
            assert _kept(conn) == {"support": (1, 0, 1)}

            report = sweep(conn, DeploymentUpkeep())

            assert _awaiting(conn) == []
            assert [row["awaiting_reward"] for row in overview(conn, None)] == [0]
            assert conn.execute("SELECT expired_at FROM traces").fetchall() == [(None,)]
            assert report.to_json()["deployment"]["counts"] == {"rewards_counted_late": 1, "domains_folded": 1}
            assert domain_counts(conn) == [{"domain": "support", "traces": 1, "rewarded_traces": 1}]
            assert _kept(conn) == _recounted(conn) == {"support": (1, 1, 0)}
            assert count(conn, "SELECT count(*) FROM domain_count_deltas") == 0  # all folded


def _kept(conn: psycopg.Connection[Any]) -> dict[str, tuple[int, int, int]]:
    """Each domain's kept counts (migration 0020): traces, rewards of its traces, unrewarded traces."""
    rows = conn.execute("SELECT domain, traces, rewards, unrewarded FROM domain_totals WHERE traces > 0")
    return {row[0]: (int(row[1]), int(row[2]), int(row[3])) for row in rows}


def _recounted(conn: psycopg.Connection[Any]) -> dict[str, tuple[int, int, int]]:
    """The same, counted over the whole history."""
    rows = conn.execute(
        "SELECT t.domain, count(*), coalesce(sum(r.n), 0), count(*) FILTER (WHERE r.n IS NULL) FROM traces t "
        "LEFT JOIN (SELECT trace_id, count(*) AS n FROM rewards GROUP BY trace_id) r ON r.trace_id = t.trace_id "
        "GROUP BY t.domain"
    )
    return {row[0]: (int(row[1]), int(row[2]), int(row[3])) for row in rows}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_kept_counts_equal_a_count_of_the_history(conn: psycopg.Connection[Any], seed: int) -> None:
    """Batches in any order: rewards before and after their traces and in the same batch, several
    sources, redeliveries, conflicts, rewards whose trace never comes, expiry, the sweep's folds."""
    import random

    from grpod.workers.maintenance_sweep import DeploymentUpkeep, sweep

    rng = random.Random(seed)
    events: list[bytes] = []
    for n in range(120):
        events.append(raw(trace(f"t{n}", domain=rng.choice(["support", "coding", "sql"]))))
        for source in rng.sample(["thumbs", "grader", "tests"], k=rng.choice([0, 0, 1, 1, 1, 2, 3])):
            events.append(raw(reward(f"t{n}", rng.choice([0.0, 1.0]), source=source)))
    events += [raw(reward(f"never-{n}")) for n in range(5)]
    events += rng.sample(events, k=30)  # redeliveries
    events.append(raw(trace("t0", query="different content: a conflict")))
    rng.shuffle(events)
    batches = range(0, len(events), 25)
    for number, start in enumerate(batches):
        store(conn, *events[start : start + 25])
        if number == len(batches) // 2:  # halfway, a third of the traces age past their time-to-live
            aged = [f"t{n}" for n in rng.sample(range(120), k=40)]
            conn.execute("UPDATE traces SET received_at = now() - interval '8 days' WHERE trace_id = ANY(%s)", (aged,))
        if number % 4 == 3:
            sweep(conn, DeploymentUpkeep())
        assert _kept(conn) == _recounted(conn)
    assert count(conn, "SELECT count(*) FROM traces WHERE expired_at IS NOT NULL") > 0
    # and rewards came late for some of them (they are rewarded traces all the same)
    late = "SELECT count(*) FROM traces t JOIN rewards r USING (trace_id) WHERE t.expired_at IS NOT NULL"
    assert count(conn, late) > 0
    sweep(conn, DeploymentUpkeep())
    assert _kept(conn) == _recounted(conn)
    rows = conn.execute("SELECT domain, traces, rewards, unrewarded FROM domain_counts").fetchall()
    assert {row[0]: tuple(row[1:]) for row in rows} == _recounted(conn)  # folded, nothing left in deltas
