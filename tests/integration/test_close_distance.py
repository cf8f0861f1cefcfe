"""The default ``close_distance`` separates rules that say the same thing from rules that do not,
with the bundled embedding model (the figures the README quotes)."""

from __future__ import annotations

from grpod.workers.distillation import CLOSE_DISTANCE, nearest
from grpod.workers.embeddings import LocalEmbedder

SAME = [
    (
        "When asked about account settings, search the documentation before answering.",
        "When asked about account settings, search the documentation first.",
    ),
    (
        "When a user asks to reset a password, send the reset link from the account page.",
        "When someone forgot their password, point them to the password reset link.",
    ),
    (
        "When a tool call fails, retry it once before reporting an error.",
        "When a tool returns an error, try the call again once before giving up.",
    ),
    (
        "When asked to export data, use the CSV export under Settings > Data.",
        "When a user wants their data exported, point them to Settings > Data > Export CSV.",
    ),
    (
        "When a SQL query joins large tables, describe the tables first to find the keys.",
        "Before joining tables in SQL, describe them to learn their key columns.",
    ),
    (
        "When the user asks about billing, look up the account before answering.",
        "When a billing question comes in, fetch the customer's account first.",
    ),
    (
        "When I'm trying to reset my password, I'm using a password reset link.",
        "When resetting a password, use the password reset link.",
    ),
]
DIFFERENT = [
    (
        "When asked about account settings, search the documentation before answering.",
        "When a SQL query joins large tables, describe the tables first to find the keys.",
    ),
    (
        "When a user asks to reset a password, send the reset link from the account page.",
        "When asked to export data, use the CSV export under Settings > Data.",
    ),
    (
        "When a tool call fails, retry it once before reporting an error.",
        "When the user asks about billing, look up the account before answering.",
    ),
    (
        "When the user asks about billing, look up the account before answering.",
        "When the user asks about API keys, rotate them under Settings > Security.",
    ),
    (
        "When a ticket is urgent, create it with priority high.",
        "When asked about the refund policy, search the docs for the policy text.",
    ),
    (
        "When counting rows in SQL, use count(*) on the filtered table.",
        "When a query times out, add a LIMIT and an index hint.",
    ),
    (
        "When the customer asks about API rate limits, check the docs for the plan limits.",
        "When the customer asks about API keys, rotate them in Settings > Security.",
    ),
]


def distances(embedder: LocalEmbedder, pairs: list[tuple[str, str]]) -> list[float]:
    found = []
    for candidate, experience in pairs:
        vectors = embedder.embed([candidate, experience])
        (neighbour,) = nearest(vectors[:1], vectors[1:], [1])
        assert neighbour is not None
        found.append(neighbour[1])
    return found


def test_the_default_close_distance_lies_between_restated_and_different_rules() -> None:
    embedder = LocalEmbedder()
    same, different = distances(embedder, SAME), distances(embedder, DIFFERENT)
    assert max(same) < CLOSE_DISTANCE < min(different), (same, different)
    assert CLOSE_DISTANCE - max(same) >= 0.1 and min(different) - CLOSE_DISTANCE >= 0.1  # a margin each way
