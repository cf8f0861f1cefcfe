"""The shared limit per LLM endpoint (GRPOD_LLM_MAX_RPM, _TPM), in the real PostgreSQL: two workers'
budgets keep to one count; the real adapter waits for it; a 429's Retry-After is waited out."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from grpod.daemon.resources import open_pool
from grpod.daemon.settings import Settings
from grpod.workers.llm import OpenAILLM
from grpod.workers.llm_budget import SharedBudget, estimated_tokens

from ..scripted_llm import ScriptedEndpoint, Status

WINDOW = 2.0  # seconds: a short window, so the test waits for one


@pytest.fixture
def pool(database_url: str) -> Iterator[ConnectionPool]:
    with open_pool(database_url, Settings(database_url=database_url), max_size=4) as opened:
        yield opened


def _budget(pool: ConnectionPool, **limits: Any) -> SharedBudget:
    def connect() -> AbstractContextManager[psycopg.Connection[Any]]:
        return pool.connection()

    return SharedBudget(connect, "http://llm.internal/v1 model", window_seconds=WINDOW, **limits)


def _windows(pool: ConnectionPool) -> list[tuple[int, int]]:
    with pool.connection() as conn:
        return [(int(r), int(t)) for r, t in conn.execute("SELECT requests, tokens FROM llm_budget ORDER BY 1")]


def test_two_workers_share_one_request_budget(pool: ConnectionPool) -> None:
    # Two processes' budgets (two objects, one table) ask for 6 requests at once; 3 fit a window.
    first, second = _budget(pool, max_requests=3, max_tokens=None), _budget(pool, max_requests=3, max_tokens=None)
    taken: list[float] = []

    def take(budget: SharedBudget) -> None:
        budget.acquire(10)
        taken.append(time.monotonic())

    started = time.monotonic()
    threads = [threading.Thread(target=take, args=(b,)) for b in (first, second) * 3]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(taken) == 6
    counts = sorted(r for r, _ in _windows(pool))
    assert sum(counts) == 6 and max(counts) <= 3  # never more than the limit in one window
    assert first.waited + second.waited > 0  # some waited for the next window
    assert max(taken) - started < 3 * WINDOW


def test_tokens_are_estimated_then_settled_and_a_window_full_of_tokens_waits(pool: ConnectionPool) -> None:
    budget = _budget(pool, max_requests=None, max_tokens=100)
    reservation = budget.acquire(60)
    budget.settle(reservation, 25)  # the call used less than its estimate
    assert _windows(pool) == [(1, 25)]
    budget.acquire(70)  # 25 + 70 fits (in this window, or the next if it just began)
    before = budget.waited
    budget.acquire(60)  # over 100 in this window: the next one
    assert budget.waited > before
    assert estimated_tokens([{"role": "user", "content": "x" * 400}], 50) == 100 + 4 + 50


def test_the_real_adapter_waits_for_the_shared_budget(pool: ConnectionPool) -> None:
    with ScriptedEndpoint({"summary": "fine"}) as endpoint:
        llm = OpenAILLM(
            base_url=endpoint.url,
            model="scripted",
            max_retries=0,
            budget=_budget(pool, max_requests=2, max_tokens=None),
        )
        messages = [{"role": "system", "content": "Summarise the attempt"}, {"role": "user", "content": "hello"}]
        answers = [llm.complete(messages, max_tokens=20) for _ in range(4)]
    assert [a.text for a in answers] == ["fine"] * 4 and endpoint.calls.count("summary") == 4
    windows = _windows(pool)
    counts = [r for r, _ in windows]
    assert sum(counts) == 4 and max(counts) == 2 and len(counts) >= 2  # four requests, two to a window
    # What each window holds is what the endpoint reported using, not the estimate.
    assert sum(t for _, t in windows) == sum(a.tokens_in + a.tokens_out for a in answers)


def test_a_429_is_retried_after_its_retry_after() -> None:
    with ScriptedEndpoint({"summary": [Status(429, retry_after=2), "fine"]}) as endpoint:
        llm = OpenAILLM(base_url=endpoint.url, model="scripted", max_retries=2)
        started = time.monotonic()
        answer = llm.complete(
            [{"role": "system", "content": "Summarise the attempt"}, {"role": "user", "content": "x"}]
        )
        waited = time.monotonic() - started
    assert answer.text == "fine" and endpoint.statuses[429] == 1
    assert waited >= 2.0  # the endpoint's Retry-After, not the client's shorter backoff
