from __future__ import annotations

from importlib import resources

import pytest

from grpod.schema.sql import load_queries, parse_queries

TEXT = """
-- name: first
-- The first query.
SELECT 1;

-- name: second_one
SELECT %(x)s
  + 1;
"""


def test_blocks_are_split_by_name() -> None:
    queries = parse_queries(TEXT, origin="test.sql")
    assert list(queries) == ["first", "second_one"]
    assert queries["first"] == "-- The first query.\nSELECT 1;"
    assert queries["second_one"] == "SELECT %(x)s\n  + 1;"


def test_unknown_name_says_which_file() -> None:
    queries = parse_queries(TEXT, origin="test.sql")
    with pytest.raises(KeyError, match=r"no query named 'third' in test.sql"):
        queries["third"]


def test_a_name_defined_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="defined twice"):
        parse_queries("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;\n")


def test_an_empty_query_is_refused() -> None:
    with pytest.raises(ValueError, match="'a' in <string> is empty"):
        parse_queries("-- name: a\n-- only a comment\n-- name: b\nSELECT 2;\n")


def test_every_shipped_query_file_parses() -> None:
    folder = resources.files("grpod.schema").joinpath("queries")
    names = [entry.name for entry in folder.iterdir() if entry.name.endswith(".sql")]
    assert "migrations.sql" in names
    for name in names:
        queries = load_queries("grpod.schema", f"queries/{name}")
        assert len(queries) > 0
