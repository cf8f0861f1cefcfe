"""`grpod consolidate DOMAIN` as an operator runs it: the real OpenAI adapter against a scripted
endpoint on loopback, the bundled embedder, and the version it makes handled like any other."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg

from grpod.workers.operations import Operation

from ..factories import trace
from ..integration.stored import ingest, publish
from ..scripted_llm import ScriptedEndpoint
from .helpers import grpod_env, run_grpod

KEPT = "When an invoice total looks wrong, recompute it from the line items before answering."
DUPLICATES = [
    "When asked to rotate an API key, open Settings > Security > API keys.",
    "When asked to rotate an API key, open Settings > Security > API keys first.",
]
MERGED = "When asked to rotate an API key, open Settings > Security > API keys, then revoke the old key."


def test_consolidate_merges_and_the_version_is_history_diff_and_rollback(tmp_path: Path, database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        ingest(conn, trace("t1"))
        publish(conn, "support", [Operation("ADD", text) for text in [KEPT, *DUPLICATES]])
    with ScriptedEndpoint({"merge": json.dumps({"text": MERGED, "reason": "one rule"})}) as endpoint:
        env = grpod_env(tmp_path / "home", database_url=database_url, llm_base_url=endpoint.url, llm_model="scripted")
        done = run_grpod(["consolidate", "support", "--json"], env, timeout=300)
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert endpoint.calls == ["merge"]
        again = run_grpod(["consolidate", "support"], env, timeout=300)
    assert (report["status"], report["parent"], report["version"], report["label"]) == ("published", 1, 2, "production")
    assert report["merged"] == [{"into": 2, "merged": [2, 3], "text": MERGED, "reason": "one rule"}]
    assert report["experiences"] == {"before": 3, "after": 2} and report["retired"] == []
    assert [call["purpose"] for call in report["llm_calls"]] == ["merge"]
    assert again.returncode == 0 and again.stdout.strip() == (
        "support: no new version: nothing to merge, nothing over budget, scores as stored"
    )

    history = json.loads(run_grpod(["library", "history", "support", "--json"], env).stdout)
    assert [(row["version"], row["created_by"]) for row in history] == [(2, "consolidation"), (1, "distillation")]
    changes = json.loads(run_grpod(["library", "diff", "support", "1", "2", "--json"], env).stdout)
    assert changes["changed"] == [{"id": 2, "from": DUPLICATES[0], "to": MERGED}]
    assert [e["id"] for e in changes["removed"]] == [3]
    rolled = run_grpod(["library", "rollback", "support", "--to", "1", "--reason", "merge lost detail"], env)
    assert rolled.returncode == 0, rolled.stderr
    shown = json.loads(run_grpod(["library", "show", "support", "--json"], env).stdout)
    assert shown["version"] == 1 and len(shown["experiences"]) == 3


def test_consolidate_an_unknown_domain_is_one_sentence(tmp_path: Path, database_url: str) -> None:
    env = grpod_env(tmp_path / "home", database_url=database_url)
    result = run_grpod(["consolidate", "nowhere"], env)
    assert result.returncode == 2
    assert result.stderr.strip() == "grpod: there is no domain 'nowhere'; `grpod domains` lists them."
