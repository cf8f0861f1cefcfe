"""Valid wire events for tests, as plain dicts (the JSON an agent would send)."""

from __future__ import annotations

import json
from typing import Any


def trace(trace_id: str = "t-1", domain: str = "support", **fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": "trace",
        "schema_version": 1,
        "trace_id": trace_id,
        "domain": domain,
        "query": "How do I rotate my API key?",
        "trajectory": [
            {"role": "user", "content": "How do I rotate my API key?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "search_docs", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "Settings > API keys > Rotate"},
            {"role": "assistant", "content": "Go to Settings > API keys and press Rotate."},
        ],
        "answer": "Go to Settings > API keys and press Rotate.",
        "library_version": 7,
        "created_at": "2026-11-24T10:00:00Z",
        "metadata": {"agent": "support-bot", "latency_ms": 812},
    }
    event.update(fields)
    return event


def reward(trace_id: str = "t-1", value: Any = 1.0, source: str = "user_thumbs", **fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": "reward",
        "schema_version": 1,
        "trace_id": trace_id,
        "value": value,
        "source": source,
        "created_at": "2026-11-24T10:05:00Z",
    }
    event.update(fields)
    return event


def raw(event: dict[str, Any]) -> bytes:
    return json.dumps(event).encode("utf-8")


def agent_trace(
    trace_id: str, query: str, *, good: bool, domain: str = "support", tool: str = "search_docs"
) -> dict[str, Any]:
    """A realistic tool-using trajectory: a good one looks the answer up, a bad one guesses."""
    if good:
        steps: list[dict[str, Any]] = [
            {"role": "user", "content": query},
            {
                "role": "assistant",
                "content": "Let me check the documentation first.",
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": tool, "arguments": json.dumps({"q": query})}}
                ],
            },
            {
                "role": "tool",
                "tool_call_id": "c1",
                "content": "Settings > Security > API keys: press Rotate; the old key stays valid for 24 hours.",
            },
            {
                "role": "assistant",
                "content": "Open Settings > Security > API keys and press Rotate. "
                "The old key keeps working for 24 hours, so update your clients within a day.",
            },
        ]
    else:
        steps = [
            {"role": "user", "content": query},
            {
                "role": "assistant",
                "content": "You can probably find it under your profile page, "
                "then delete the key and create another one.",
            },
        ]
    return trace(trace_id, domain=domain, query=query, trajectory=steps, answer=str(steps[-1]["content"]))


# Five paraphrases that the local embedding model puts in one group, and rewards that differ.
KEY_QUERIES = [
    "How do I rotate my API key?",
    "rotate api key please",
    "I need to generate a new API key and revoke the old one",
    "how can i roll my api token",
    "what is the way to rotate an API key",
]
KEY_REWARDS = [1.0, 0.0, 1.0, 0.0, 0.0]
