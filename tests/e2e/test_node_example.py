"""The Node.js example (examples/node/, no dependencies) against `grpod up`: it publishes a trace and
its reward over HTTP, reads the library and revalidates it with its ETag; the trace reaches the
database through up's ingest consumer."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import urllib.request
from pathlib import Path

from ..ports import free_port
from .helpers import GRPOD, grpod_env, run_grpod, wait_for_domains
from .test_up import _answers

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "node" / "grpod_example.mjs"


def test_the_node_example_publishes_and_reads_through_grpod_up(tmp_path: Path) -> None:
    node = shutil.which("node")
    assert node is not None, "Node.js is needed for the example (CI installs it)"
    port = free_port()
    env = grpod_env(tmp_path / "home", heartbeat_seconds="1", worker_concurrency="1", api_port=str(port))
    up = subprocess.Popen([*GRPOD, "up"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        api = f"http://127.0.0.1:{port}"
        assert _answers(f"{api}/readyz", timeout=180) == {"ok": True}
        tokens = {}
        for name, scope in (("node-publisher", "publish"), ("node-reader", "read")):
            made = run_grpod(["token", "create", name, "--domain", "support", "--scope", scope, "--json"], env)
            assert made.returncode == 0, made.stderr
            tokens[scope] = json.loads(made.stdout)["token"]
        ran = subprocess.run(
            [node, str(EXAMPLE), "support"],
            env={
                "PATH": env["PATH"],
                "GRPOD_API_URL": api,
                "GRPOD_PUBLISH_TOKEN": tokens["publish"],
                "GRPOD_READ_TOKEN": tokens["read"],
            },
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert ran.returncode == 0, ran.stderr
        seen = json.loads(ran.stdout)
        assert (seen["accepted"], seen["version"], seen["experiences"], seen["revalidated"]) == (2, 0, 0, 304)
        assert tokens["publish"] not in ran.stdout + ran.stderr
        assert wait_for_domains(env, rewarded=1) == [{"domain": "support", "traces": 1, "rewarded_traces": 1}]
        with urllib.request.urlopen(f"{api}/healthz", timeout=5) as answer:
            assert answer.status == 200
        up.send_signal(signal.SIGTERM)
        assert up.wait(timeout=30) == 0
    finally:
        if up.poll() is None:
            up.kill()
