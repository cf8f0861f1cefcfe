"""Paper mode as a user runs it: `grpod train` on a tiny labelled set with a scripted
OpenAI-compatible endpoint as the policy. With the bundled model as the distiller, it is killed
midway and resumes without asking again for the rollouts it had (what the bundled model writes is
not checked). With a scripted distiller, the library changes, and `grpod eval` measures it against
none, with Mean@k, Pass@k, their intervals and the difference."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import psycopg
import pytest

from ..scripted_llm import ScriptedEndpoint, Stall
from .helpers import GRPOD, grpod_env, run_grpod

PROBLEMS = [
    {"id": "sum", "question": "What is 17 + 25?", "answer": "42"},
    {"id": "frac", "question": "What is half of 3/4? Give a fraction.", "answer": "\\frac{3}{8}"},
]
TRUTH = {"What is 17 + 25?": "42", "What is half of 3/4? Give a fraction.": "\\frac{3}{8}"}


class Policy:
    """Answers each rollout right or wrong by turns, so that every question's group has a signal;
    it can tell whether the experiences were in the prompt."""

    def __init__(self) -> None:
        self.answered = 0
        self.with_library = 0

    def __call__(self, messages: Sequence[Mapping[str, str]]) -> str:
        prompt = messages[0]["content"]
        (question,) = [q for q in TRUTH if q in prompt]
        self.answered += 1
        if "helpful instructions and experiences" in prompt:
            self.with_library += 1
        right = self.answered % 2 == 1
        return f"Working it out step by step.\nThe answer is \\boxed{{{TRUTH[question] if right else '7'}}}."


def _env(tmp_path: Path, database_url: str, endpoint: ScriptedEndpoint) -> dict[str, str]:
    return grpod_env(
        tmp_path / "home",
        database_url=database_url,
        policy_base_url=endpoint.url,
        policy_model="scripted-policy",
        llm_timeout="5",
        llm_max_retries="0",
    )


def _rollouts(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT count(*) FROM traces WHERE training_run IS NOT NULL").fetchone()
    assert row is not None
    return int(row[0])


TRAIN = ["train", "--domain", "math", "--group-size", "3", "--epochs", "1", "--batch-size", "2", "--concurrency", "1"]


def test_train_stops_resumes_without_asking_again_and_the_library_learned_is_evaluated(
    tmp_path: Path, database_url: str
) -> None:
    dataset = tmp_path / "tiny.jsonl"
    dataset.write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS))
    args = [*TRAIN, "--dataset", str(dataset)]

    # The first run gets three answers, then a policy that never answers; it is killed there.
    first = Policy()
    with ScriptedEndpoint({"rollout": [first, first, first, Stall(600)]}) as stalling:
        process = subprocess.Popen(
            [*GRPOD, *args], env=_env(tmp_path, database_url, stalling), stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 300
        while _rollouts(database_url) < 3:
            assert process.poll() is None, process.communicate()[1].decode()[-2000:]
            assert time.monotonic() < deadline, "no rollout was stored within 300 s"
            time.sleep(0.2)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    assert _rollouts(database_url) == 3

    # Started again, it asks only for the three rollouts it lacks, then distills and publishes.
    second = Policy()
    second.answered = 1  # it goes on where the first left off: wrong, right, wrong
    with ScriptedEndpoint({"rollout": second}) as endpoint:
        env = _env(tmp_path, database_url, endpoint)
        result = run_grpod([*args, "--json"], env, timeout=900)
        assert result.returncode == 0, result.stderr[-3000:]
        assert endpoint.calls.count("rollout") == 3
    report = json.loads(result.stdout)
    (step,) = report["steps"]
    assert (step["step"], step["epoch"], step["questions"], step["rollouts"]) == (1, 1, 2, 6)
    assert step["correct"] == 3 and step["accuracy"] == 0.5
    assert step["groups_with_signal"] == 2 and step["failed_distillations"] == 0
    assert step["policy"]["calls"] == 6 and step["policy"]["tokens_in"] > 0
    assert step["distiller"]["calls"] >= 2 * 3 + 2  # three summaries and an advantage per group
    assert step["cost"] is None  # no prices set
    # What the bundled model writes is not checked: its rules may be dropped (it often repeats
    # itself), and then the step publishes nothing; either way the report says so.
    assert (step["version"] is None) == (step["operations"] == 0)
    assert report["library_version"] == (step["version"] or 0)
    with psycopg.connect(database_url) as conn:
        stored = conn.execute(
            "SELECT t.trace_id, t.library_version, t.group_id, r.value, r.source, r.ground_truth, "
            "t.used_by_distillation IS NOT NULL FROM traces t JOIN rewards r USING (trace_id) ORDER BY t.trace_id"
        ).fetchall()
        distillations = conn.execute("SELECT group_id, status, version FROM distillations").fetchall()
    assert len(stored) == 6
    assert all(re.fullmatch(r"train-\d+-e1-(sum|frac)-r[123]", row[0]) for row in stored)
    assert {row[1] for row in stored} == {0} and {row[2] for row in stored} == {None}  # no group of the grouping stage
    assert {row[4] for row in stored} == {"verifier:math"} and all(row[6] for row in stored)
    assert {row[5] for row in stored} == {"42", "\\frac{3}{8}"}
    assert sorted(d[1] for d in distillations) == ["applied", "applied"]  # applied by the step's window
    assert {d[0] for d in distillations} == {None} and {d[2] for d in distillations} == {step["version"]}


class Taught(Policy):
    """Right whenever the experiences are in its prompt, else right and wrong by turns."""

    def __call__(self, messages: Sequence[Mapping[str, str]]) -> str:
        answer = super().__call__(messages)
        if "helpful instructions and experiences" not in messages[0]["content"]:
            return answer
        (question,) = [q for q in TRUTH if q in messages[0]["content"]]
        return f"Following the experiences.\nThe answer is \\boxed{{{TRUTH[question]}}}."


DISTILLER = {
    "summary": "The attempt added the numbers; the wrong one miscounted the carry.",
    "advantage": '{"experiences": ["When adding, check the carry of each column before answering."]}',
    "operations": '{"operations": []}',
    "consolidation": '{"operations": []}',
}


def test_the_library_learned_changes_and_is_measured_against_none_with_its_interval(
    tmp_path: Path, database_url: str
) -> None:
    dataset = tmp_path / "tiny.jsonl"
    dataset.write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS))
    policy = Taught()
    with ScriptedEndpoint({"rollout": policy, **DISTILLER}) as endpoint:
        env = _env(tmp_path, database_url, endpoint) | {
            "GRPOD_LLM_BASE_URL": endpoint.url,
            "GRPOD_LLM_MODEL": "scripted-distiller",
            "GRPOD_LLM_PRICE_INPUT": "0.28",
            "GRPOD_LLM_PRICE_OUTPUT": "0.42",
        }
        # A cold start: the domain is made with its objective before any trace.
        made = run_grpod(["domain", "set", "math", "--create", "--agent-objective", "Solve arithmetic."], env)
        assert made.returncode == 0, made.stderr
        args = [*TRAIN, "--dataset", str(dataset), "--epochs", "2"]
        result = run_grpod([*args, "--json"], env, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        report = json.loads(result.stdout)
        first, second = report["steps"]
        # Step 1 learns from the empty library; step 2's rollouts run with what step 1 published.
        assert first["version"] == 1 and first["label"] == "production" and first["operations"] == 1
        assert second["accuracy"] == 1.0 and second["groups_with_signal"] == 0 and second["version"] is None
        assert first["distiller"]["calls"] == 2 * 3 + 2 + 1  # summaries, advantages, the window's consolidation
        assert first["cost"] == pytest.approx(
            (first["policy"]["tokens_in"] + first["distiller"]["tokens_in"]) * 0.28 / 1e6
            + (first["policy"]["tokens_out"] + first["distiller"]["tokens_out"]) * 0.42 / 1e6
        )
        shown = json.loads(run_grpod(["library", "show", "math", "--json"], env).stdout)
        assert [e["text"] for e in shown["experiences"]] == [
            "When adding, check the carry of each column before answering."
        ]
        # The same command again: the run had finished; nothing is asked.
        asked = len(endpoint.calls)
        again = run_grpod([*args, "--json"], env)
        assert again.returncode == 0 and json.loads(again.stdout)["finished_before"] is True
        assert len(endpoint.calls) == asked

        measured = run_grpod(
            ["eval", "--domain", "math", "--dataset", str(dataset), "-k", "2", "--concurrency", "1", "--json"], env
        )
        assert measured.returncode == 0, measured.stderr[-2000:]
    evaluation = json.loads(measured.stdout)
    taught, plain = evaluation["arms"]
    assert (taught["arm"], plain["arm"]) == ("version 1", "no library")
    assert (taught["mean_at_k"], taught["pass_at_k"], taught["mean_at_k_interval"]) == (1.0, 1.0, [1.0, 1.0])
    assert plain["mean_at_k"] == 0.5 and plain["pass_at_k"] == 1.0
    for arm in (taught, plain):
        assert arm["k"] == 2 and arm["questions"] == 2 and arm["llm_calls"] == 4 and arm["tokens_in"] > 0
    assert evaluation["difference"]["mean_at_k"] == 0.5 and evaluation["difference"]["interval"] == [0.5, 0.5]
    listed = json.loads(run_grpod(["eval", "--list", "--json"], env).stdout)
    assert [(row["id"], row["difference"]["mean_at_k"]) for row in listed] == [(evaluation["id"], 0.5)]
    assert run_grpod(["eval", "--domain", "math", "--dataset", str(dataset), "--version", "9"], env).returncode == 2
    # A bad set is one sentence naming its line, no traceback.
    (tmp_path / "bad.jsonl").write_text('{"question": "q", "answer": "1"}\n{"question": 3}\n')
    bad = run_grpod([*TRAIN, "--dataset", str(tmp_path / "bad.jsonl")], env)
    assert bad.returncode == 2 and "bad.jsonl line 2 has no question" in bad.stderr and "Traceback" not in bad.stderr
