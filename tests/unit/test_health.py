"""Health verdicts over plain reports: live means a fresh report with the consumer running; ready
means live, consuming, and the database answering."""

from __future__ import annotations

from grpod.daemon.health import FRESH_SECONDS, ConsumerReport, judge

NOW = 1_000_000.0


def report(state: str = "consuming", *, alive: bool = True, age: float = 1.0) -> ConsumerReport:
    return ConsumerReport("host", 42, state, alive, NOW - 2, NOW - 2, NOW - age)


def test_a_consuming_worker_with_its_database_is_live_and_ready() -> None:
    verdict = judge([report()], NOW, database_reachable=True)
    assert (verdict.live, verdict.ready, verdict.reasons) == (True, True, [])


def test_a_consumer_holding_its_batch_through_an_outage_is_live_but_not_ready() -> None:
    verdict = judge([report("waiting_for_database")], NOW, database_reachable=False)
    assert (verdict.live, verdict.ready) == (True, False)
    assert verdict.reasons == ["the ingest consumer is waiting for database", "the database does not answer"]


def test_a_dead_consumer_thread_or_a_stale_report_is_not_live() -> None:
    dead = judge([report(alive=False)], NOW, database_reachable=True)
    assert (dead.live, dead.ready) == (False, False) and "thread is not running" in dead.reasons[0]
    stale = judge([report(age=FRESH_SECONDS + 1)], NOW, database_reachable=True)
    assert not stale.live and "old" in stale.reasons[0]
    nobody = judge([], NOW, database_reachable=True)
    assert not nobody.live and "no worker" in nobody.reasons[0]
