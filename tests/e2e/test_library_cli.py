"""`grpod library ...` as an operator runs it, against the real PostgreSQL."""

from __future__ import annotations

import json
import math
from pathlib import Path

import psycopg
import pytest

from grpod.workers.operations import Operation

from ..integration.stored import publish
from ..integration.test_library import make_domain, served
from .helpers import grpod_env, run_grpod


def _library(tmp_path: Path, database_url: str) -> dict[str, str]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        make_domain(conn)
        make_domain(conn, "billing")
        publish(conn, "support", [Operation("ADD", "When asked about keys, check the docs.", sources=(1,))])
        publish(conn, "support", [Operation("ADD", "When unsure, ask a question."), Operation("DELETE", None, 1)])
        served(conn, "support", 1, [1.0, 0.0, 1.0], "v1-")
        for _ in range(3):
            publish(conn, "billing", [Operation("ADD", "When billing, check the plan.")])
    return grpod_env(tmp_path / "home", database_url=database_url)


def ok(args: list[str], env: dict[str, str]) -> str:
    result = run_grpod(args, env)
    assert result.returncode == 0, (args, result.stderr)
    return result.stdout


def test_operator_commands_show_history_diff_rollback_pin_freeze_promote(tmp_path: Path, database_url: str) -> None:
    env = _library(tmp_path, database_url)

    shown = json.loads(ok(["library", "show", "support", "--json"], env))
    assert {"domain", "version", "labels", "experiences"} <= set(shown)
    assert (shown["domain"], shown["version"], shown["labels"]) == ("support", 2, ["production"])
    (experience,) = shown["experiences"]
    assert set(experience) >= {"id", "text", "provenance"} and experience["id"] == 2
    assert ok(["library", "show", "support", "--version", "1", "--format", "prompt"], env).splitlines()[1:] == [
        "[1] When asked about keys, check the docs."
    ]
    assert "[2] When unsure, ask a question." in ok(["library", "show", "support"], env)

    history = json.loads(ok(["library", "history", "support", "--json"], env))
    assert [row["version"] for row in history] == [2, 1]
    for row in history:
        assert {"version", "parent", "created_at", "created_by", "reason", "operations", "labels", "reward"} <= set(row)
    reward = history[1]["reward"]
    assert (reward["traces"], reward["mean"]) == (3, 2 / 3)
    # The 95% interval of the mean: Student's t with 2 degrees of freedom (4.3027).
    half = 4.3027 * reward["stddev"] / math.sqrt(3)
    assert reward["interval"] == pytest.approx([2 / 3 - half, 2 / 3 + half], abs=1e-4)

    changes = json.loads(ok(["library", "diff", "support", "1", "2", "--json"], env))
    assert [e["id"] for e in changes["added"]] == [2] and [e["id"] for e in changes["removed"]] == [1]

    rolled = json.loads(
        ok(["library", "rollback", "support", "--to", "1", "--reason", "v2 lost the key rule", "--json"], env)
    )
    assert (rolled["from"], rolled["to"]) == (2, 1)
    assert json.loads(ok(["library", "show", "support", "--json"], env))["version"] == 1
    ok(["library", "pin", "support", "--reason", "audit"], env)
    pinned = run_grpod(["library", "promote", "support", "2"], env)
    assert pinned.returncode == 2 and "pinned at version 1" in pinned.stderr
    ok(["library", "unpin", "support"], env)
    assert "version 2 is production" in ok(["library", "promote", "support", "2", "--reason", "fixed"], env)
    ok(["library", "freeze", "support", "--reason", "incident"], env)
    assert json.loads(ok(["library", "show", "support", "--json"], env))["frozen"] is True
    ok(["library", "unfreeze", "support"], env)

    log = json.loads(ok(["library", "log", "support", "--json"], env))
    assert [entry["action"] for entry in log][:6] == ["unfreeze", "freeze", "promote", "unpin", "pin", "rollback"]
    assert log[5]["reason"] == "v2 lost the key rule" and log[5]["actor"].startswith("operator")
    assert "rollback" in ok(["library", "log", "support"], {**env, "COLUMNS": "200"})


def test_bad_requests_say_what_is_wrong_and_change_nothing(tmp_path: Path, database_url: str) -> None:
    env = _library(tmp_path, database_url)
    before = ok(["library", "log", "support", "--json"], env)
    for args, message in [
        (
            ["library", "rollback", "support", "--to", "9", "--reason", "x"],
            "grpod: domain 'support' has no library version 9",
        ),
        (["library", "show", "support", "--label", "staging"], "grpod: there is no label 'staging'"),
        (["library", "show", "nowhere"], "grpod: there is no domain 'nowhere'"),
        (["library", "promote", "support", "3"], "grpod: domain 'support' has no library version 3"),  # billing has a 3
        (["library", "diff", "support", "1", "4"], "grpod: domain 'support' has no library version 4"),
        (["library", "show", "support", "--format", "yaml"], "grpod: --format must be text, json or prompt"),
        (["library", "unfreeze", "support"], "grpod: domain 'support' is not frozen already"),
    ]:
        result = run_grpod(args, env)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert result.stderr.startswith(message), result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert ok(["library", "log", "support", "--json"], env) == before
