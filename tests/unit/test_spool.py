"""The embedded event spool: durable publish, claim, acknowledge, redeliver, dead-letter."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from grpod.sdk.publish import PublishError, SpoolPublisher
from grpod.workers.event_source import SpoolSource


def test_published_batches_are_fetched_whole_in_order_and_gone_after_ack(tmp_path: Path) -> None:
    folder = tmp_path / "events"
    publisher = SpoolPublisher(folder)
    publisher.publish([b'{"n":1}', b'{"n":2}'])
    publisher.publish([b'{"n":3}'])
    source = SpoolSource(folder, delivery_limit=3)
    assert source.depth() == 3
    batch = source.fetch(1, 0.01)  # a published batch is never split
    assert [d.body for d in batch] == [b'{"n":1}', b'{"n":2}']
    assert source.depth() == 1
    source.ack(batch)
    rest = source.fetch(10, 0.01)
    assert [d.body for d in rest] == [b'{"n":3}']
    source.ack(rest)
    source.close()
    assert list(folder.iterdir()) == []


def test_a_body_with_a_raw_newline_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PublishError, match="raw newline"):
        SpoolPublisher(tmp_path / "events").publish([b'{"a":\n1}'])


def test_released_events_come_back_and_die_after_the_delivery_limit(tmp_path: Path) -> None:
    folder = tmp_path / "events"
    SpoolPublisher(folder).publish([b"poison"])
    source = SpoolSource(folder, delivery_limit=2)
    for expected_dead in (False, False, False):
        (delivery,) = source.fetch(1, 0.01)
        assert delivery.dead is expected_dead
        source.release([delivery])
    (dead,) = source.fetch(1, 0.01)
    assert dead.dead
    assert dead.death == "delivered 3 time(s) without being stored"


def test_claims_of_a_dead_consumer_return_on_the_next_start(tmp_path: Path) -> None:
    folder = tmp_path / "events"
    SpoolPublisher(folder).publish([b"a"])
    SpoolPublisher(folder).publish([b"b"])
    first = SpoolSource(folder, delivery_limit=5)
    assert len(first.fetch(2, 0.01)) == 2
    # Pretend the consumer was killed: its claim folder belongs to a pid that no longer exists.
    dead_claim = first.claims.with_name(f"{2**22 + 12345}-dead")
    first.claims.rename(dead_claim)
    second = SpoolSource(folder, delivery_limit=5)
    batch = second.fetch(5, 0.01)
    assert sorted(d.body for d in batch) == [b"a", b"b"]
    assert not dead_claim.exists()
    assert all(d.dead is False for d in batch)


def test_a_clean_close_returns_claims_without_counting_a_delivery(tmp_path: Path) -> None:
    folder = tmp_path / "events"
    SpoolPublisher(folder).publish([b"x"])
    source = SpoolSource(folder, delivery_limit=0)
    assert len(source.fetch(1, 0.01)) == 1
    source.close()
    (name,) = os.listdir(folder)
    assert name.endswith(".0.jsonl")


def test_a_live_consumers_claims_are_left_alone(tmp_path: Path) -> None:
    folder = tmp_path / "events"
    SpoolPublisher(folder).publish([b"x"])
    first = SpoolSource(folder, delivery_limit=5)
    assert len(first.fetch(1, 0.01)) == 1
    second = SpoolSource(folder, delivery_limit=5)  # same pid: alive
    assert second.fetch(1, 0.01) == []
