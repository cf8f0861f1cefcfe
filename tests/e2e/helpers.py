"""Running `grpod` as a user would: a separate process with its own environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

GRPOD = [sys.executable, "-m", "grpod.daemon"]


def grpod_env(home: Path, **settings: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("GRPOD_")}
    env["GRPOD_HOME"] = str(home)
    env["GRPOD_LOG_FORMAT"] = "json"
    env.update({f"GRPOD_{name.upper()}": value for name, value in settings.items()})
    # A `grpod up` of a test serves no HTTP API unless the test gives it a port of its own.
    env.setdefault("GRPOD_API_PORT", "0")
    return env


def run_grpod(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*GRPOD, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False)


def json_lines(text: str) -> list[dict[str, Any]]:
    lines = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return lines


def wait_for_domains(env: dict[str, str], rewarded: int, timeout: float = 60) -> list[dict[str, object]]:
    """`grpod domains --json` once its first domain has ``rewarded`` rewarded traces (or the timeout)."""
    deadline = time.monotonic() + timeout
    domains: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        domains = json.loads(run_grpod(["domains", "--json"], env).stdout)
        if domains and domains[0]["rewarded_traces"] == rewarded:
            break
        time.sleep(0.5)
    return domains
