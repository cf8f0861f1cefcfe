"""Named SQL queries loaded from ``.sql`` files shipped inside the package.

A query file holds blocks like::

    -- name: fetch_applied_migrations
    -- The migrations recorded as applied, oldest first.
    SELECT version, name, checksum FROM grpod_migrations ORDER BY version;

Every block starts with ``-- name: <identifier>``; the comment lines right
after it describe the query. Nobody hunts for a query inside a Python string.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from functools import cache
from importlib import resources
from typing import LiteralString

_NAME_LINE = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


class QueryFile(Mapping[str, LiteralString]):
    """The named queries of one ``.sql`` file."""

    def __init__(self, origin: str, queries: dict[str, LiteralString]) -> None:
        self.origin = origin
        self._queries = queries

    def __getitem__(self, name: str) -> LiteralString:
        try:
            return self._queries[name]
        except KeyError:
            raise KeyError(f"no query named {name!r} in {self.origin}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._queries)

    def __len__(self) -> int:
        return len(self._queries)


def parse_queries(text: str, origin: str = "<string>") -> QueryFile:
    """Split a query file into its named blocks; a repeated name is an error."""
    matches = list(_NAME_LINE.finditer(text))
    queries: dict[str, LiteralString] = {}
    for index, match in enumerate(matches):
        name = match.group(1)
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        body = text[match.end() : end].strip()
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice in {origin}")
        if not _strip_comments(body):
            raise ValueError(f"query {name!r} in {origin} is empty")
        # The text comes from a file we ship, never from input: it is as
        # trusted as a literal in the code, hence typed LiteralString.
        queries[name] = body
    return QueryFile(origin, queries)


def _strip_comments(body: str) -> str:
    return "\n".join(line for line in body.splitlines() if not line.lstrip().startswith("--")).strip()


@cache
def load_queries(package: str, filename: str) -> QueryFile:
    """Load and cache the named queries of ``filename`` inside ``package``."""
    text = resources.files(package).joinpath(filename).read_text(encoding="utf-8")
    return parse_queries(text, origin=f"{package}/{filename}")
