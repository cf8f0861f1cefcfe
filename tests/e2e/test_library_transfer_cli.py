"""`grpod library export` and `grpod library import` as an operator runs them, as processes against
the real PostgreSQL: a file (or a pipe) from one domain becomes another's candidate."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import psycopg

from grpod.workers.operations import Operation

from ..integration.stored import publish
from ..integration.test_library import make_domain
from .helpers import GRPOD, grpod_env, run_grpod

KEYS = "When asked about API keys, search the documentation first."
UNSURE = "When unsure what the user wants, ask one short question."
PLAN = "When billing questions come in, check the customer's plan first."


def _domains(tmp_path: Path, database_url: str) -> dict[str, str]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        make_domain(conn)
        make_domain(conn, "billing")
        publish(conn, "support", [Operation("ADD", KEYS), Operation("ADD", UNSURE)])
        publish(conn, "billing", [Operation("ADD", PLAN), Operation("ADD", KEYS)])
    return grpod_env(tmp_path / "home", database_url=database_url)


def ok(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = run_grpod(args, env)
    assert result.returncode == 0, (args, result.stderr)
    return result


def test_export_to_a_file_or_stdout_then_import_makes_a_candidate(tmp_path: Path, database_url: str) -> None:
    env = _domains(tmp_path, database_url)
    shared = tmp_path / "support.json"

    said = ok(["library", "export", "support", "--output", str(shared)], env).stdout
    assert said.startswith(
        f"support: version 1 (2 experience(s), learned with SmolLM2-135M-Instruct) written to {shared}"
    )
    document = json.loads(shared.read_text(encoding="utf-8"))
    assert (document["format"], document["domain"], document["version"]) == ("grpod-library", "support", 1)
    assert (document["models"], document["models_source"]) == (["SmolLM2-135M-Instruct"], "configured")
    assert [e["text"] for e in document["experiences"]] == [KEYS, UNSURE]
    printed = json.loads(ok(["library", "export", "support", "--version", "1"], env).stdout)
    assert {k: v for k, v in printed.items() if k != "exported_at"} == {
        k: v for k, v in document.items() if k != "exported_at"
    }

    # Another deployment's model: a warning on stderr, not a refusal.
    elsewhere = env | {"GRPOD_LLM_BASE_URL": "http://127.0.0.1:9/v1", "GRPOD_LLM_MODEL": "deepseek-chat"}
    imported = ok(
        ["library", "import", "billing", str(shared), "--reason", "share support's rules", "--json"], elsewhere
    )
    (warning,) = imported.stderr.strip().splitlines()
    assert warning.startswith("grpod: warning: the experiences of support version 1 were learned with SmolLM2")
    report = json.loads(imported.stdout)
    assert (report["version"], report["parent"], report["label"]) == (2, 1, "candidate")
    assert report["added"] == [{"id": 3, "text": UNSURE, "from": 2}]
    assert report["skipped"] == [{"from": 1, "text": KEYS, "same_as": 2}]

    shown = json.loads(ok(["library", "show", "billing", "--label", "candidate", "--json"], env).stdout)
    (provenance,) = next(e for e in shown["experiences"] if e["id"] == 3)["provenance"]
    assert provenance["imported_from"] == {
        "domain": "support",
        "version": 1,
        "models": ["SmolLM2-135M-Instruct"],
        "id": 2,
    }
    assert json.loads(ok(["library", "show", "billing", "--json"], env).stdout)["version"] == 1  # production
    history = json.loads(ok(["library", "history", "billing", "--json"], env).stdout)
    assert (history[0]["created_by"], history[0]["reason"]) == ("import", "share support's rules")

    # The same file again, piped this time: nothing new, no version, and it says so.
    piped = subprocess.run(
        [*GRPOD, "library", "import", "billing", "-", "--reason", "again"],
        input=shared.read_text(encoding="utf-8"),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert piped.returncode == 0 and piped.stderr == "", piped.stderr
    assert piped.stdout.startswith("billing: no new version: none of the 2 experiences of support version 1 is new")
    assert [row["version"] for row in json.loads(ok(["library", "history", "billing", "--json"], env).stdout)] == [
        2,
        1,
    ]

    # Text output of an import that adds something.
    with psycopg.connect(database_url, autocommit=True) as conn:
        make_domain(conn, "fresh")
    text = ok(["library", "import", "fresh", str(shared), "--reason", "seed"], env).stdout
    assert text.splitlines() == [
        "fresh: version 1 (candidate) from 0: 2 experience(s) imported from support version 1, 0 already there",
        f"+ [1] {KEYS}",
        f"+ [2] {UNSURE}",
    ]


def test_bad_input_is_one_sentence_and_changes_nothing(tmp_path: Path, database_url: str) -> None:
    env = _domains(tmp_path, database_url)
    good = tmp_path / "support.json"
    ok(["library", "export", "support", "--output", str(good)], env)
    document = json.loads(good.read_text(encoding="utf-8"))

    def written(name: str, content: str) -> str:
        path = tmp_path / name
        path.write_text(content, encoding="utf-8")
        return str(path)

    empty = written("empty.json", json.dumps(document | {"experiences": [{"id": 1, "text": " "}]}))
    long = written("long.json", json.dumps(document | {"experiences": [{"id": 1, "text": "When A, do B. " * 200}]}))
    before = ok(["library", "log", "billing", "--json"], env).stdout
    for args, message in [
        (["library", "import", "billing", str(tmp_path / "missing.json"), "--reason", "x"], "grpod: cannot read"),
        (
            ["library", "import", "billing", written("bad.json", "{"), "--reason", "x"],
            "grpod: " + str(tmp_path / "bad.json") + " is not JSON",
        ),
        (
            ["library", "import", "billing", written("other.json", '{"memories": []}'), "--reason", "x"],
            "grpod: " + str(tmp_path / "other.json") + ' is not a grpod library export: it has no "format"',
        ),
        (["library", "import", "billing", empty, "--reason", "x"], f"grpod: experience [1] of {empty} has an empty"),
        (
            ["library", "import", "billing", long, "--reason", "x"],
            f"grpod: experience [1] of {long} is 2800 characters",
        ),
        (["library", "import", "nowhere", str(good), "--reason", "x"], "grpod: there is no domain 'nowhere'"),
        (["library", "import", "billing", str(good), "--reason", ""], "grpod: --reason must say why"),
        (["library", "export", "support", "--version", "9"], "grpod: domain 'support' has no library version 9"),
        (["library", "export", "nowhere"], "grpod: there is no domain 'nowhere'"),
        (
            ["library", "export", "support", "--output", str(tmp_path / "no" / "such" / "dir.json")],
            f"grpod: cannot write {tmp_path / 'no' / 'such' / 'dir.json'}: No such file or directory.",
        ),
    ]:
        result = run_grpod(args, env)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert result.stderr.startswith(message), result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
        assert result.stdout == ""
    assert ok(["library", "log", "billing", "--json"], env).stdout == before
    assert not (tmp_path / "no").exists()
