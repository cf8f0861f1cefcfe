from __future__ import annotations

import json
from collections import defaultdict
from datetime import datetime, timedelta
from itertools import pairwise
from typing import Any

import pytest

from grpod.daemon.demo_data import DOMAINS, demo_stream
from grpod.schema.events import Accepted, Limits, RewardEvent, TraceEvent, parse_event

SEEDS = (7, 1, 2026)


def _traces(stream: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [event for event in stream if event["type"] == "trace"]


def _rewards(stream: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [event for event in stream if event["type"] == "reward"]


def _topic(trace_id: str) -> str:
    """sup-apikey-3 -> sup-apikey"""
    return trace_id.rsplit("-", 1)[0]


def _at(event: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(event["created_at"])


@pytest.mark.parametrize("seed", SEEDS)
def test_every_event_is_accepted_by_the_validator(seed: int) -> None:
    stream = demo_stream(seed)
    assert stream
    for event in stream:
        result = parse_event(json.dumps(event).encode(), Limits())
        assert isinstance(result, Accepted), (event["trace_id"], result)
        assert isinstance(result.event, TraceEvent if event["type"] == "trace" else RewardEvent)
        assert None not in event.values(), "optional fields are left out, not sent as null"
    assert all("library_version" not in trace for trace in _traces(stream))


def test_both_domains_are_present() -> None:
    assert DOMAINS == ("support", "sql")
    assert {trace["domain"] for trace in _traces(demo_stream())} == set(DOMAINS)


@pytest.mark.parametrize("seed", SEEDS)
def test_each_topic_has_enough_traces_with_differing_rewards(seed: int) -> None:
    stream = demo_stream(seed)
    traces_per_topic: dict[tuple[str, str], int] = defaultdict(int)
    for trace in _traces(stream):
        traces_per_topic[trace["domain"], _topic(trace["trace_id"])] += 1
    values_per_topic: dict[str, set[float]] = defaultdict(set)
    for reward in _rewards(stream):
        values_per_topic[_topic(reward["trace_id"])].add(reward["value"])
    assert len(traces_per_topic) == 8
    assert {domain for domain, _ in traces_per_topic} == set(DOMAINS)
    for (_, topic), count in traces_per_topic.items():
        assert count >= 5, topic
        assert len(values_per_topic[topic]) >= 2, topic
        assert max(values_per_topic[topic]) == 1.0, topic
        assert min(values_per_topic[topic]) == 0.0, topic


@pytest.mark.parametrize("seed", SEEDS)
def test_every_trace_has_a_reward_and_every_reward_a_trace(seed: int) -> None:
    stream = demo_stream(seed)
    trace_ids = [trace["trace_id"] for trace in _traces(stream)]
    rewarded = {reward["trace_id"] for reward in _rewards(stream)}
    assert len(trace_ids) == len(set(trace_ids)), "trace ids are unique"
    assert rewarded == set(trace_ids)
    sources: dict[str, list[str]] = defaultdict(list)
    for reward in _rewards(stream):
        sources[reward["trace_id"]].append(reward["source"])
    assert all(len(names) == len(set(names)) for names in sources.values()), "one reward per (trace, source)"
    assert 1 <= sum(len(names) == 2 for names in sources.values()) <= len(trace_ids) // 4


@pytest.mark.parametrize("seed", SEEDS)
def test_rewards_mostly_arrive_late_and_a_few_before_their_trace(seed: int) -> None:
    stream = demo_stream(seed)
    position = {event["trace_id"]: index for index, event in enumerate(stream) if event["type"] == "trace"}
    gaps = [index - position[event["trace_id"]] for index, event in enumerate(stream) if event["type"] == "reward"]
    before = [gap for gap in gaps if gap < 0]
    assert 1 <= len(before) <= len(gaps) // 10
    assert sorted(gaps)[len(gaps) // 2] >= 3, "the median reward comes several events after its trace"


@pytest.mark.parametrize("seed", SEEDS)
def test_timestamps_are_plausible(seed: int) -> None:
    stream = demo_stream(seed)
    created = {trace["trace_id"]: _at(trace) for trace in _traces(stream)}
    for event in stream:
        assert event["created_at"].startswith("2026-11-24T") and event["created_at"].endswith("Z")
    for reward in _rewards(stream):
        delay = _at(reward) - created[reward["trace_id"]]
        assert timedelta(minutes=1) <= delay <= timedelta(minutes=120), reward
    in_order = [_at(trace) for trace in _traces(stream)]
    assert sum(a > b for a, b in pairwise(in_order)) <= 3, "traces arrive in creation order but for a few late ones"


def test_the_stream_is_deterministic_per_seed() -> None:
    assert demo_stream(7) == demo_stream(7)
    assert demo_stream() == demo_stream(7)
    assert demo_stream(8) != demo_stream(7)
    assert [e["trace_id"] for e in demo_stream(8)] != [e["trace_id"] for e in demo_stream(7)]


def test_trajectories_use_tools_and_answer_every_call() -> None:
    traces = _traces(demo_stream())
    with_tools = 0
    for trace in traces:
        trajectory = trace["trajectory"]
        assert trajectory[0]["role"] == "system" and trajectory[1] == {"role": "user", "content": trace["query"]}
        assert trajectory[-1] == {"role": "assistant", "content": trace["answer"]}
        called: list[str] = []
        for message in trajectory:
            for call in message.get("tool_calls") or []:
                assert call["type"] == "function"
                assert isinstance(json.loads(call["function"]["arguments"]), dict)
                called.append(call["id"])
            if message["role"] == "tool":
                assert message["tool_call_id"] == called[-1], "each tool result answers the call before it"
                assert message["content"]
        with_tools += bool(called)
    assert len(traces) // 2 < with_tools < len(traces), "most traces use tools, a few answer from memory"
    tools = {
        call["function"]["name"]
        for trace in traces
        for message in trace["trajectory"]
        for call in message.get("tool_calls") or []
    }
    assert tools == {"search_docs", "get_account", "create_ticket", "describe_table", "run_sql"}
    results = [m["content"] for t in traces for m in t["trajectory"] if m["role"] == "tool"]
    assert any(result.startswith("ERROR") for result in results), "some tool calls fail"


def test_failures_carry_critiques_and_sql_failures_the_correct_query() -> None:
    rewards = _rewards(demo_stream())
    low = [reward for reward in rewards if reward["value"] < 1.0 and reward["source"] == "grader"]
    assert low and all(reward.get("critique") for reward in low if reward["value"] == 0.5)
    truths = [reward["ground_truth"] for reward in rewards if "ground_truth" in reward]
    assert truths and all(truth.startswith("SELECT") for truth in truths)
    assert all(reward["trace_id"].startswith("sql-") for reward in rewards if "ground_truth" in reward)
    assert all(reward["value"] in (0.0, 1.0) for reward in rewards if reward["source"] == "user_thumbs")
