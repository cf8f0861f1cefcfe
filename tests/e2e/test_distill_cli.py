"""`grpod distill` as an operator runs it: in its own process, with the bundled model, no worker."""

from __future__ import annotations

import json
from pathlib import Path

from ..factories import KEY_QUERIES, KEY_REWARDS, agent_trace, raw, reward
from .helpers import grpod_env, run_grpod


def test_distill_a_domain_then_replay_it_from_the_ledger(tmp_path: Path, database_url: str) -> None:
    env = grpod_env(tmp_path / "home", database_url=database_url)
    events = [
        raw(agent_trace(f"t{i}", q, good=v > 0.5))
        for i, (q, v) in enumerate(zip(KEY_QUERIES, KEY_REWARDS, strict=True))
    ]
    events += [raw(reward(f"t{i}", v, critique="wrong menu" if v < 0.5 else None)) for i, v in enumerate(KEY_REWARDS)]
    (tmp_path / "events.jsonl").write_bytes(b"\n".join(events) + b"\n")
    assert run_grpod(["ingest", str(tmp_path / "events.jsonl")], env).returncode == 0
    # The traces are not grouped yet: `grpod distill` groups them first.
    assert json.loads(run_grpod(["groups", "support", "--json"], env).stdout) == []

    result = run_grpod(["distill", "support", "--json"], env, timeout=600)

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert isinstance(report["id"], int)
    assert report["grouped"] == {"embedded": 5, "new_groups": 1}
    purposes = [call["purpose"] for call in report["llm_calls"]]
    assert purposes.count("summary") >= 5 and "advantage" in purposes
    for call in report["llm_calls"]:
        assert call["tokens_in"] > 0 and call["tokens_out"] >= 0
    (distillation,) = report["distillations"]
    assert distillation["status"] == "distilled" and distillation["id"] == report["id"]
    for operation in report["operations"]:
        assert operation["operation"] == "ADD" and operation["text"] and operation["sources"] == [report["id"]]
    published = report["published"]
    assert published["distillation_ids"] == [report["id"]]
    assert published["version"] == (1 if report["operations"] else None)

    replayed = run_grpod(["distill", "--replay", str(report["id"]), "--json"], env, timeout=120)

    assert replayed.returncode == 0, replayed.stderr
    again = json.loads(replayed.stdout)
    assert again["same"] is True and again["operations"] == report["operations"]
    assert all(call["replayed"] for call in again["llm_calls"])
    assert len(again["llm_calls"]) == len(report["llm_calls"])

    status = json.loads(run_grpod(["status", "--json"], env).stdout)
    assert status["distillations"] == {
        "running": 0,
        "failed": 0,
        "distilled": 0,
        "applied": 1,
        "refused": 0,
        "superseded": 0,
    }
    assert status["llm_calls"]["calls"] == len(report["llm_calls"])
    assert status["llm_calls"]["tokens_in"] == sum(call["tokens_in"] for call in report["llm_calls"])
    assert status["library_versions"] == (1 if report["operations"] else 0)

    # Nothing is ready any more: a second run says so and changes nothing.
    second = run_grpod(["distill", "support"], env, timeout=300)
    assert second.returncode == 0, second.stderr
    assert "no group is ready to distill" in second.stdout


def test_distill_refuses_what_it_cannot_do_in_one_sentence(tmp_path: Path, database_url: str) -> None:
    env = grpod_env(tmp_path / "home", database_url=database_url)
    (tmp_path / "one.jsonl").write_bytes(raw(agent_trace("t1", "How do I rotate my API key?", good=True)) + b"\n")
    assert run_grpod(["ingest", str(tmp_path / "one.jsonl")], env).returncode == 0
    for args, message in [
        (["distill", "nowhere"], "grpod: there is no domain 'nowhere'; `grpod domains` lists them."),
        (["distill"], "grpod: give either a DOMAIN to distill or --replay ID, not both or neither."),
        (
            ["distill", "--replay", "77"],
            "grpod: there is no distillation 77; each run of `grpod distill DOMAIN` prints the ids of its "
            "distillations.",
        ),
        (["distill", "support", "--group", "999"], "grpod: domain 'support' has no group 999;"),
        (
            ["domain", "set", "support", "--max-new-experiences", "0"],
            "grpod: max_new_experiences must be a whole number from 1 to 10, not 0; nothing was changed.",
        ),
    ]:
        result = run_grpod(args, env, timeout=300)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.strip().startswith(message), result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    nothing = run_grpod(["distill", "support"], env, timeout=300)  # groups the trace; nothing is ready
    assert nothing.returncode == 0, nothing.stderr
    assert "grouped 1 waiting traces (1 new groups)" in nothing.stdout
    assert "no group is ready to distill" in nothing.stdout
    groups = json.loads(run_grpod(["groups", "support", "--json"], env).stdout)
    (group,) = groups
    not_ready = run_grpod(["distill", "support", "--group", str(group["id"])], env, timeout=300)
    assert not_ready.returncode == 2
    assert f"grpod: group {group['id']} of 'support' cannot be distilled: 0 of 5 rewarded traces." in not_ready.stderr

    gated = run_grpod(["domain", "set", "support", "--publish-policy", "gated", "--no-auto-rollback", "--json"], env)
    assert gated.returncode == 0, gated.stderr
    assert json.loads(gated.stdout)["settings"]["publish_policy"] == "gated"
    assert json.loads(gated.stdout)["settings"]["auto_rollback"] is False
    bad_policy = run_grpod(["domain", "set", "support", "--publish-policy", "sometimes"], env)
    assert bad_policy.returncode == 2
    assert "publish_policy must be auto or gated, not 'sometimes'; nothing was changed." in bad_policy.stderr

    changed = run_grpod(
        ["domain", "set", "support", "--max-new-experiences", "3", "--agent-objective", "Help.", "--json"], env
    )
    assert changed.returncode == 0, changed.stderr
    settings = json.loads(changed.stdout)["settings"]
    assert settings["max_new_experiences"] == 3 and settings["agent_objective"] == "Help."
    assert settings["group_size"] == 5  # the other settings stay
