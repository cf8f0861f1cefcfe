"""The grouping commands as an operator runs them: groups, domain show/set/reembed."""

from __future__ import annotations

import json
from pathlib import Path

from ..factories import raw, reward, trace
from .helpers import grpod_env, run_grpod

QUERIES = [
    "How do I rotate my API key?",
    "rotate api key please",
    "I need a new API key, how do I roll the old one?",
    "Export all my data as CSV",
    "how do I download an export of my account data",
]


def test_group_inspect_and_tune_a_domain(tmp_path: Path, database_url: str) -> None:
    env = grpod_env(tmp_path / "home", database_url=database_url)
    events = [raw(trace(f"t{i}", query=q)) for i, q in enumerate(QUERIES)]
    events += [raw(reward("t0", 1.0)), raw(reward("t1", 0.0)), raw(reward("t2", 1.0))]
    (tmp_path / "events.jsonl").write_bytes(b"\n".join(events) + b"\n")
    assert run_grpod(["ingest", str(tmp_path / "events.jsonl")], env).returncode == 0

    shown = json.loads(run_grpod(["domain", "show", "support", "--json"], env).stdout)
    assert shown["settings"] == {
        "group_threshold": 0.5,
        "group_size": 5,
        "reward_spread": 0.0,
        "reward_combination": "mean",
        "agent_objective": "Answer the user's query correctly, completely and efficiently.",
        "learning_objective": "Short, general rules about when to use which tool or strategy, and which mistakes "
        "to avoid.",
        "max_new_experiences": 2,
        "experience_max_words": 32,
        "update_window_seconds": 60.0,
        "update_window_groups": 4,
        "close_distance": 0.4,
        "context_tokens": 200,
        "publish_policy": "auto",
        "promotion_min_traces": 30,
        "promotion_margin": 0.05,
        "auto_rollback": True,
        "rollback_min_traces": 30,
        "rollback_margin": 0.1,
        "test_alpha": 0.05,
        "max_deletes_per_version": 3,
        "max_removed_fraction": 0.25,
        "merge_distance": 0.15,
        "max_experiences": 100,
        "max_prompt_tokens": 2000,
        "trace_ttl_seconds": 604800,
        "retention_seconds": 2592000,
        "group_merge_wait_seconds": 86400,
        "group_merge_factor": 1.5,
    }
    assert shown["embedding_model"] is None

    changed = run_grpod(
        ["domain", "set", "support", "--group-size", "3", "--max-experiences", "40", "--max-prompt-tokens", "900"],
        env,
    )
    assert changed.returncode == 0, changed.stderr
    now = json.loads(run_grpod(["domain", "show", "support", "--json"], env).stdout)["settings"]
    assert (now["group_size"], now["max_experiences"], now["max_prompt_tokens"]) == (3, 40, 900)
    assert now["merge_distance"] == 0.15  # what was not given stays

    reembedded = run_grpod(["domain", "reembed", "support", "--json"], env, timeout=300)
    assert reembedded.returncode == 0, reembedded.stderr
    summary = json.loads(reembedded.stdout)
    assert summary["traces"] == 5 and summary["embedding_model"] == "all-MiniLM-L6-v2"
    assert summary["embedding_dimension"] == 384 and summary["ready_groups"] == 1

    groups = json.loads(run_grpod(["groups", "support", "--json"], env).stdout)
    assert {"id", "size", "rewarded", "spread", "ready", "trace_ids"} <= set(groups[0])
    by_members = {frozenset(g["trace_ids"]): g for g in groups}
    keys = by_members[frozenset({"t0", "t1", "t2"})]
    assert (keys["size"], keys["rewarded"], keys["spread"], keys["ready"]) == (3, 3, 1.0, True)
    assert by_members[frozenset({"t3", "t4"})]["ready"] is False
    table = run_grpod(["groups", "support"], {**env, "COLUMNS": "200"}).stdout
    assert "rotate api key please" in table


def test_bad_domain_settings_change_nothing(tmp_path: Path, database_url: str) -> None:
    env = grpod_env(tmp_path / "home", database_url=database_url)
    (tmp_path / "one.jsonl").write_bytes(raw(trace("t1")) + b"\n")
    run_grpod(["ingest", str(tmp_path / "one.jsonl")], env)
    for args, message in [
        (["--threshold", "3"], "group_threshold must be a cosine distance between 0 and 2"),
        (["--group-size", "1"], "group_size must be a whole number from 2 to 1000"),
        (["--reward-combination", "median"], "reward_combination must be one of mean, min, max, latest"),
        (["--max-experiences", "0"], "max_experiences must be a whole number from 1 to 100,000, not 0"),
        (["--merge-distance", "1.5"], "merge_distance must be a cosine distance of at least 0 and below 1"),
        (["--trace-ttl", "0"], "trace_ttl_seconds must be seconds from 1 to"),
    ]:
        result = run_grpod(["domain", "set", "support", *args], env)
        assert result.returncode == 2
        assert message in result.stderr and result.stderr.strip().endswith("nothing was changed.")
    assert json.loads(run_grpod(["domain", "show", "support", "--json"], env).stdout)["settings"]["group_size"] == 5
    unknown = run_grpod(["groups", "nowhere"], env)
    assert unknown.returncode == 2
    assert unknown.stderr.strip() == "grpod: there is no domain 'nowhere'; `grpod domains` lists them."
