"""`grpod verify` as a user runs it: exit code 0 for a correct answer, 1 for a wrong one, and one
sentence with exit code 2 for a verifier that cannot be loaded. No database is involved."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .helpers import grpod_env, run_grpod

REPOSITORY = Path(__file__).resolve().parents[2]


def _env(home: Path) -> dict[str, str]:
    # tests.verifier_plugin importable wherever pytest runs from; a database URL that cannot be
    # reached shows the command never connects to one
    env = grpod_env(home, database_url="postgresql://nobody@127.0.0.1:1/none")
    env["PYTHONPATH"] = str(REPOSITORY)
    return env


def test_a_correct_answer_exits_0(tmp_path: Path) -> None:
    result = run_grpod(["verify", r"so the answer is \boxed{\frac{1}{2}}", "0.5"], _env(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        r"correct: \boxed{} gives \frac{1}{2}, equal to the ground truth 0.5",
        r"extracted answer: \frac{1}{2}",
    ]
    assert result.stderr == ""  # math-verify's notice that its timeouts are off is not shown


def test_a_wrong_answer_exits_1(tmp_path: Path) -> None:
    result = run_grpod(["verify", r"\boxed{34}", "33"], _env(tmp_path))
    assert result.returncode == 1
    assert result.stdout.startswith(r"incorrect: \boxed{} gives 34, not equal to the ground truth 33")


def test_no_boxed_answer_exits_1(tmp_path: Path) -> None:
    result = run_grpod(["verify", "33", "33"], _env(tmp_path))
    assert result.returncode == 1
    assert result.stdout.splitlines() == [r"incorrect: no \boxed{} answer in the text", "no answer extracted"]


def test_json_is_one_object_with_the_three_keys(tmp_path: Path) -> None:
    result = run_grpod(["verify", "--json", r"\boxed{033}", "33"], _env(tmp_path))
    assert result.returncode == 0
    assert json.loads(result.stdout) == {
        "correct": True,
        "extracted": "033",
        "reason": r"\boxed{} gives 033, equal to the ground truth 33",
    }
    wrong = run_grpod(["verify", "--json", "no box here", "33"], _env(tmp_path))
    assert wrong.returncode == 1
    assert json.loads(wrong.stdout) == {
        "correct": False,
        "extracted": None,
        "reason": r"no \boxed{} answer in the text",
    }


def test_exact_and_a_plugin_verifier(tmp_path: Path) -> None:
    env = _env(tmp_path)
    assert run_grpod(["verify", "--verifier", "exact", r"\boxed{Paris.}", "paris"], env).returncode == 0
    plugged = run_grpod(["verify", "--verifier", "tests.verifier_plugin:graded", "--json", "so 33", "33"], env)
    assert plugged.returncode == 0, plugged.stderr
    assert json.loads(plugged.stdout) == {"correct": True, "extracted": "33", "reason": "read 33 from the answer"}


def test_a_plugin_from_the_working_directory(tmp_path: Path) -> None:
    # the installed `grpod` script, whose sys.path has its own folder first, not the working directory
    (tmp_path / "my_checks.py").write_text("def is_33(answer, ground_truth):\n    return answer.strip() == '33'\n")
    grpod = Path(sys.executable).parent / "grpod"
    result = subprocess.run(
        [str(grpod), "verify", "--verifier", "my_checks:is_33", "33", "x"],
        cwd=tmp_path,
        env=grpod_env(tmp_path / "home"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("correct: my_checks:is_33 says correct")


def test_a_bad_verifier_is_one_sentence_and_exit_2(tmp_path: Path) -> None:
    for spec, sentence in [
        ("tests.verifier_plugin:nope", "--verifier tests.verifier_plugin:nope: module tests.verifier_plugin has no"),
        ("no_such_package:check", "--verifier no_such_package:check: no module named no_such_package"),
        ("sometimes", "--verifier sometimes: not math, exact or module:function"),
    ]:
        result = run_grpod(["verify", "--verifier", spec, r"\boxed{1}", "1"], _env(tmp_path))
        assert result.returncode == 2, result
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert result.stderr.startswith(f"grpod: {sentence}"), result.stderr
        assert result.stdout == ""
