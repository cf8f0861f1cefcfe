"""Paper mode, measured: the calls and tokens of a `grpod train` step against the formula, and a
plumbing check with the bundled model (not a quality result).

``--scripted`` (the default) runs `grpod train` and `grpod eval` as a user does, in an embedded
database, with scripted OpenAI-compatible endpoints on loopback as both the policy and the
distiller (the real adapter, prompts, parsing and ledger run around them). The policy answers right
and wrong by turns, so every question's group has a signal; the distiller proposes one ADD per group.
It prints, per step, the calls the formula predicts and the calls made, and the tokens per call.

``--bundled`` runs the same commands with the bundled SmolLM2-135M as policy and distiller on a few
AIME problems (``../shared/data/aime``): a check that the whole path runs on the embedded
default. SmolLM2 cannot solve AIME problems, so its groups have no signal and its library does not
change; the figures say so and are no measure of quality.

    .venv/bin/python bench/paper_mode.py
    .venv/bin/python bench/paper_mode.py --bundled --problems 6 --eval-problems 4
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.scripted_llm import GOOD_SUMMARY, ScriptedEndpoint

RESULTS = Path(__file__).parent / "results"
AIME = Path(__file__).resolve().parents[2] / "shared" / "data" / "aime"
GRPOD = [sys.executable, "-m", "grpod.daemon"]
# Example prices per million tokens (DeepSeek's list prices for deepseek-chat, cache miss, late 2025).
PRICE_IN, PRICE_OUT = 0.28, 0.42


def _env(home: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRPOD_")}
    env |= {"GRPOD_HOME": str(home), "GRPOD_LOG_FORMAT": "json", "GRPOD_LOG_LEVEL": "WARNING"}
    env |= {f"GRPOD_{k.upper()}": v for k, v in settings.items()}
    return env


def _grpod(args: Sequence[str], env: Mapping[str, str], timeout: float = 3600) -> dict[str, Any]:
    started = time.monotonic()
    done = subprocess.run([*GRPOD, *args], env=dict(env), capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise SystemExit(f"grpod {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    result["_seconds"] = time.monotonic() - started
    return result


class Policy:
    """Right and wrong by turns, with a worked answer of about 120 tokens."""

    def __init__(self) -> None:
        self.answered = 0

    def __call__(self, messages: Sequence[Mapping[str, str]]) -> str:
        self.answered += 1
        prompt = messages[0]["content"]
        truth = prompt.split("ANSWER=")[1].split()[0] if "ANSWER=" in prompt else "0"
        work = " ".join(f"Step {i}: combine the terms and simplify the expression carefully." for i in range(1, 8))
        return f"{work}\nSo the answer is \\boxed{{{truth if self.answered % 2 else int(truth) + 1}}}."


def _advantage(messages: Sequence[Mapping[str, str]]) -> str:
    # One rule per group, named after the question, so that the groups' ADDs do not merge.
    user = messages[-1]["content"]
    tag = user.split("Query: ", 1)[-1].split("\n", 1)[0][:40] if "Query: " in user else "the problem"
    return json.dumps({"experiences": [f"When solving {tag}, check the arithmetic of the last step."]})


def scripted(questions: int, group_size: int, epochs: int, batch_size: int) -> dict[str, Any]:
    problems = [
        {"id": f"p{i}", "question": f"Problem {i}: what is {i} * 7? (ANSWER={i * 7} )", "answer": str(i * 7)}
        for i in range(1, questions + 1)
    ]
    script = {
        "rollout": Policy(),
        "summary": GOOD_SUMMARY,
        "advantage": _advantage,
        "operations": '{"operations": []}',
        "consolidation": '{"operations": []}',
    }
    with tempfile.TemporaryDirectory() as folder, ScriptedEndpoint(script) as endpoint:  # type: ignore[arg-type]
        home = Path(folder)
        dataset = home / "set.jsonl"
        dataset.write_text("".join(json.dumps(p) + "\n" for p in problems))
        env = _env(
            home / "grpod",
            llm_base_url=endpoint.url,
            llm_model="scripted-distiller",
            policy_model="scripted-policy",
            llm_price_input=str(PRICE_IN),
            llm_price_output=str(PRICE_OUT),
        )
        run = _grpod(
            [
                "train",
                "--domain",
                "bench",
                "--dataset",
                str(dataset),
                "--group-size",
                str(group_size),
                "--epochs",
                str(epochs),
                "--batch-size",
                str(batch_size),
                "--json",
            ],
            env,
        )
        calls = list(endpoint.calls)
        evaluation = _grpod(["eval", "--domain", "bench", "--dataset", str(dataset), "-k", "4", "--json"], env)
    rows = []
    for step in run["steps"]:
        b, s, by = step["questions"], step["groups_with_signal"], step["distiller_calls"]
        policy, distiller = step["policy"], step["distiller"]
        rows.append(
            {
                "step": step["step"],
                "questions": b,
                "groups_with_signal": s,
                "policy_calls": policy["calls"],
                "policy_calls_formula": b * group_size,
                "summary_calls": by.get("summary", 0),
                "summary_calls_formula": s * group_size,
                "advantage_calls": by.get("advantage", 0),
                "advantage_calls_formula": s,
                "operations_calls": by.get("operations", 0),  # o: groups with a near experience
                "consolidation_calls": by.get("consolidation", 0),  # w: 1 when 2+ groups proposed changes
                "distiller_calls": distiller["calls"],
                "policy_tokens_in_per_call": policy["tokens_in"] / max(1, policy["calls"]),
                "policy_tokens_out_per_call": policy["tokens_out"] / max(1, policy["calls"]),
                "distiller_tokens_in_per_call": distiller["tokens_in"] / max(1, distiller["calls"]),
                "distiller_tokens_out_per_call": distiller["tokens_out"] / max(1, distiller["calls"]),
                "cost": step["cost"],
                "version": step["version"],
            }
        )
    return {
        "questions": questions,
        "group_size": group_size,
        "epochs": epochs,
        "batch_size": batch_size,
        "steps": rows,
        "calls_by_purpose": {purpose: calls.count(purpose) for purpose in sorted(set(calls))},
        "train_seconds": run["_seconds"],
        "eval": {arm["arm"]: arm["mean_at_k"] for arm in evaluation["arms"]},
        "eval_calls": sum(arm["llm_calls"] for arm in evaluation["arms"]),
        "prices": {"input": PRICE_IN, "output": PRICE_OUT},
    }


# When the bundled model learns nothing, the eval path runs on this one-line library instead.
HAND_WRITTEN = {
    "format": "grpod-library",
    "format_version": 1,
    "domain": "hand-written",
    "version": 1,
    "models": ["none: written by hand"],
    "experiences": [{"id": 1, "text": "Write only the final number, as \\boxed{N}, on the last line."}],
}


def _arithmetic(count: int, offset: int) -> list[dict[str, str]]:
    """Two-digit sums: problems the bundled model gets right some of the time, so that its groups
    can carry a signal (AIME problems give it none)."""
    return [
        {"id": f"s{i}", "question": f"What is {10 + 3 * i} + {21 + 7 * i}?", "answer": str(31 + 10 * i)}
        for i in range(offset, offset + count)
    ]


def bundled(problems: int, eval_problems: int, group_size: int, max_tokens: int) -> dict[str, Any]:
    aime_train = [json.loads(line) for line in (AIME / "aime_2020_2023.jsonl").read_text().splitlines()][:problems]
    aime_eval = [json.loads(line) for line in (AIME / "aime_2024.jsonl").read_text().splitlines()][:eval_problems]
    sets = {
        "aime": (aime_train, aime_eval),
        "arithmetic": (_arithmetic(problems, 0), _arithmetic(eval_problems, problems)),
    }
    found: dict[str, Any] = {"problems": problems, "group_size": group_size, "max_tokens": max_tokens}
    for name, (train_set, eval_set) in sets.items():
        with tempfile.TemporaryDirectory() as folder:
            home = Path(folder)
            (home / "train.jsonl").write_text("".join(json.dumps(p) + "\n" for p in train_set))
            (home / "eval.jsonl").write_text("".join(json.dumps(p) + "\n" for p in eval_set))
            env = _env(home / "grpod")
            common = ["--max-tokens", str(max_tokens), "--concurrency", "1"]
            run = _grpod(
                [
                    "train",
                    "--domain",
                    name,
                    "--dataset",
                    str(home / "train.jsonl"),
                    "--group-size",
                    str(group_size),
                    "--epochs",
                    "1",
                    "--batch-size",
                    str(problems),
                    *common,
                    "--json",
                ],
                env,
            )
            version, imported = run["library_version"], False
            if not version:  # nothing learned: measure a one-line library of ours, to run the eval path
                (home / "library.json").write_text(json.dumps(HAND_WRITTEN))
                subprocess.run(
                    [*GRPOD, "library", "import", name, str(home / "library.json"), "--reason", "plumbing check"],
                    env=env,
                    capture_output=True,
                    text=True,
                    check=True,
                )
                version, imported = 1, True
            evaluation = _grpod(
                [
                    "eval",
                    "--domain",
                    name,
                    "--dataset",
                    str(home / "eval.jsonl"),
                    "-k",
                    "2",
                    "--version",
                    str(version),
                    "--against",
                    "none",
                    *common,
                    "--json",
                ],
                env,
            )
        (step,) = run["steps"]
        found[name] = {
            "rollout_accuracy": step["accuracy"],
            "groups_with_signal": step["groups_with_signal"],
            "library_version": run["library_version"],
            "operations": step["operations"],
            "policy_calls": step["policy"]["calls"],
            "distiller_calls": step["distiller"]["calls"],
            "train_seconds": round(run["_seconds"], 1),
            "eval": {
                "library": "hand-written, imported" if imported else "learned",
                "mean_at_2": {a["arm"]: a["mean_at_k"] for a in evaluation["arms"]},
                "pass_at_2": {a["arm"]: a["pass_at_k"] for a in evaluation["arms"]},
                "difference": evaluation["difference"],
                "policy_calls": sum(a["llm_calls"] for a in evaluation["arms"]),
                "seconds": round(evaluation["_seconds"], 1),
            },
        }
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundled", action="store_true", help="the plumbing check with the bundled model")
    parser.add_argument("--questions", type=int, default=8)
    parser.add_argument("--group-size", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--problems", type=int, default=6, help="--bundled: AIME training problems")
    parser.add_argument("--eval-problems", type=int, default=4, help="--bundled: AIME 2024 problems")
    parser.add_argument("--max-tokens", type=int, default=256, help="--bundled: tokens per rollout")
    args = parser.parse_args()
    console = Console(width=200)
    RESULTS.mkdir(exist_ok=True)
    if args.bundled:
        result = bundled(args.problems, args.eval_problems, args.group_size, args.max_tokens)
        (RESULTS / "paper_mode_bundled.json").write_text(json.dumps(result, indent=2) + "\n")
        console.print_json(data=result)
        return
    result = scripted(args.questions, args.group_size, args.epochs, args.batch_size)
    (RESULTS / "paper_mode.json").write_text(json.dumps(result, indent=2) + "\n")
    table = Table(
        "step",
        "B, s",
        "policy B·G",
        "summaries s·G",
        "advantages s",
        "operations o",
        "window w",
        "distiller total",
        "policy tokens in/out per call",
        "distiller tokens in/out per call",
        "cost",
        title="calls per step: the formula's terms (in brackets) and the calls made (scripted endpoints)",
    )
    for row in result["steps"]:
        table.add_row(
            str(row["step"]),
            f"{row['questions']}, {row['groups_with_signal']}",
            f"{row['policy_calls']} ({row['policy_calls_formula']})",
            f"{row['summary_calls']} ({row['summary_calls_formula']})",
            f"{row['advantage_calls']} ({row['advantage_calls_formula']})",
            str(row["operations_calls"]),
            str(row["consolidation_calls"]),
            str(row["distiller_calls"]),
            f"{row['policy_tokens_in_per_call']:.0f} / {row['policy_tokens_out_per_call']:.0f}",
            f"{row['distiller_tokens_in_per_call']:.0f} / {row['distiller_tokens_out_per_call']:.0f}",
            "-" if row["cost"] is None else f"${row['cost']:.5f}",
        )
    console.print(table)
    console.print(f"calls by purpose: {result['calls_by_purpose']}; train {result['train_seconds']:.1f} s")
    console.print(f"eval (k=4, scripted right/wrong by turns): {result['eval']}, {result['eval_calls']} calls")


if __name__ == "__main__":
    main()
