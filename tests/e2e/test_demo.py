"""`grpod demo` as a new user runs it: one command, the embedded default, under ten minutes."""

from __future__ import annotations

import json
import time
from pathlib import Path

from .helpers import grpod_env, run_grpod


def test_the_demo_runs_the_whole_loop_on_the_embedded_default(tmp_path: Path) -> None:
    env = grpod_env(tmp_path / "home")
    started = time.monotonic()

    result = run_grpod(["demo", "--json"], env, timeout=900)

    seconds = time.monotonic() - started
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert seconds < 600, f"the demo took {seconds:.0f} s"
    assert report["rejected"] == 0
    assert report["traces"] >= 48 and report["rewards"] >= report["traces"]
    assert report["groups"] >= 8  # 4 topics in each of 2 domains
    assert report["distillations"] >= 8
    calls = report["llm_calls"]
    assert calls["summary"] >= 5 * report["distillations"] and calls["advantage"] >= report["distillations"]
    assert report["tokens_in"] > 0 and report["tokens_out"] > 0
    assert report["model"] == "SmolLM2-135M-Instruct"
    assert set(report["versions"]) == {"support", "sql"}
    # Version 1 of both domains; version 2 of support learned from the topics agents met later.
    assert report["versions"]["sql"][:1] == [1] and report["versions"]["support"][:2] == [1, 2]
    for domain, library in report["libraries"].items():
        assert library["domain"] == domain
        for experience in library["experiences"]:
            assert {"id", "text", "provenance"} <= set(experience)
    # ... then rolled back by the judge, with the statistics it decided on.
    rollback = report["rollback"]
    assert rollback is not None and rollback["domain"] == "support"
    assert (rollback["from"], rollback["to"]) == (2, 1)
    assert report["libraries"]["support"]["version"] == 1
    assert rollback["tested"]["traces"] >= 20 and rollback["tested"]["mean"] < rollback["reference"]["mean"]
    # The progress went to stderr; the home holds the demo's own database, apart from the user's.
    assert (tmp_path / "home" / "demo" / "pgdata").is_dir()
