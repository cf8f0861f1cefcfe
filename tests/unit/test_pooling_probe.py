"""The pooling decision of `grpod migrate`: which server process ids mean a pooler that breaks grpod."""

from __future__ import annotations

from grpod.daemon.migrations import BackendProbe, pooling_problem


def test_one_server_process_per_session_is_fine() -> None:
    # PostgreSQL itself, or PgBouncer in session mode: the session keeps 101, the other has its own.
    assert pooling_problem([BackendProbe(101, 102, 101)]) is None
    assert pooling_problem([BackendProbe(101, 102, 101), BackendProbe(101, 103, 101)]) is None
    assert pooling_problem([]) is None


def test_a_server_process_handed_to_another_client_is_a_transaction_pool() -> None:
    problem = pooling_problem([BackendProbe(101, 101)])
    assert problem is not None
    assert problem.startswith("reaches a connection pooler in transaction pooling mode")
    assert "pool_mode=session" in problem
    assert "advisory locks and LISTEN" in problem


def test_a_session_that_comes_back_on_another_server_process_is_a_transaction_pool() -> None:
    # server_round_robin: the other client got another idle server, and so did the session.
    moved = pooling_problem([BackendProbe(101, 102, 101), BackendProbe(101, 102, 103)])
    assert moved is not None and "transaction pooling mode" in moved


def test_a_refused_transaction_is_a_statement_pool_and_says_why() -> None:
    reason = "transaction blocks not allowed in statement pooling mode"
    problem = pooling_problem([BackendProbe(101, refused=reason)])
    assert problem is not None
    assert problem.startswith(f"refuses a transaction block ({reason})")
    assert "pool_mode=statement" in problem
    assert problem.endswith("point GRPOD_DATABASE_URL at PostgreSQL itself or at a pool with pool_mode=session")


def test_the_problem_is_one_clause_of_one_sentence() -> None:
    for probes in ([BackendProbe(1, 1)], [BackendProbe(1, refused="no")]):
        problem = pooling_problem(probes)
        assert problem is not None
        assert "\n" not in problem
        assert not problem.endswith(".")  # the caller ends the sentence after the URL and this
