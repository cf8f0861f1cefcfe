"""`grpod up` as a process: embedded database, migrations, worker, beat and the HTTP API, clean stop."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

from ..ports import free_port
from .helpers import GRPOD, grpod_env, json_lines, run_grpod, wait_for_domains


def _wait_for_processes(env: dict[str, str], roles: set[str], timeout: float) -> dict[str, object]:
    """Wait until each role has a heartbeat from a process started after this call."""
    since = datetime.now(UTC)
    deadline = time.monotonic() + timeout
    report: dict[str, object] = {}
    while time.monotonic() < deadline:
        result = run_grpod(["status", "--json"], env, timeout=60)
        if result.returncode == 0:
            report = json.loads(result.stdout)
            seen = {
                p["role"]
                for p in report["processes"]  # type: ignore[attr-defined]
                if datetime.fromisoformat(p["started_at"]) >= since.replace(microsecond=0)
            }
            if roles <= seen:
                return report
        time.sleep(1)
    raise AssertionError(f"no heartbeat from {roles} within {timeout}s; last status: {report}")


def _answers(url: str, timeout: float) -> object:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                return json.loads(answer.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_up_runs_worker_and_beat_refuses_a_second_copy_and_stops_cleanly(tmp_path: Path) -> None:
    home = tmp_path / "home"
    port = free_port()
    env = grpod_env(home, heartbeat_seconds="1", worker_concurrency="1", shutdown_timeout="20", api_port=str(port))
    log_path = tmp_path / "up.log"
    with log_path.open("w") as log:
        started = time.monotonic()
        up = subprocess.Popen([*GRPOD, "up"], env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            report = _wait_for_processes(env, {"worker", "beat"}, timeout=120)
            time_to_heartbeat = time.monotonic() - started
            assert report["database_mode"] == "embedded"
            assert report["broker_mode"] == "embedded"
            assert report["schema_version"] >= 2  # type: ignore[operator]
            assert _answers(f"http://127.0.0.1:{port}/readyz", timeout=60) == {"ok": True}  # the HTTP API too
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ui", timeout=10) as page:  # and the dashboard
                assert "/ui/login?next=%2Fui" in page.url  # sent to sign in
                assert 'name="token"' in page.read().decode()

            second = run_grpod(["up"], env, timeout=60)
            assert second.returncode == 2
            assert second.stderr.strip().startswith(f"grpod: grpod is already running on GRPOD_HOME={home}")
            assert "Traceback" not in second.stderr
            assert len(second.stderr.strip().splitlines()) == 1

            stop_requested = time.monotonic()
            up.send_signal(signal.SIGTERM)
            assert up.wait(timeout=30) == 0
            stop_seconds = time.monotonic() - stop_requested
        finally:
            if up.poll() is None:
                up.kill()
    lines = json_lines(log_path.read_text())
    up_line = next(line for line in lines if line.get("event") == "grpod is up")
    assert up_line["pgdata"] == str(home / "pgdata")
    assert up_line["broker_folder"] == str(home / "broker")
    assert "child started" in {line.get("event") for line in lines}
    assert not (home / "pgdata" / "postmaster.pid").exists(), "the embedded database must be stopped"
    assert stop_seconds < 25
    print(f"first heartbeat after {time_to_heartbeat:.1f}s; stopped in {stop_seconds:.1f}s")


def test_up_can_start_again_after_a_stop(tmp_path: Path) -> None:
    env = grpod_env(tmp_path / "home", heartbeat_seconds="1", worker_concurrency="1")
    for _ in range(2):
        up = subprocess.Popen([*GRPOD, "up"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_for_processes(env, {"worker"}, timeout=120)
            up.send_signal(signal.SIGINT)  # Ctrl-C
            assert up.wait(timeout=30) == 0
        finally:
            if up.poll() is None:
                up.kill()


def test_events_recorded_by_the_sdk_reach_the_database_through_grpod_up(tmp_path: Path) -> None:
    from grpod.daemon.settings import Settings
    from grpod.sdk import Client

    home = tmp_path / "home"
    env = grpod_env(home, heartbeat_seconds="1", worker_concurrency="1")
    up = subprocess.Popen([*GRPOD, "up"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_processes(env, {"worker"}, timeout=120)
        with Client(Settings(home=home)) as client:
            trace_id = client.record_trace(
                domain="support", query="How do I rotate my API key?", trajectory=[], answer="Settings"
            )
            client.record_reward(trace_id, 1.0, source="user_thumbs")
        assert wait_for_domains(env, rewarded=1) == [{"domain": "support", "traces": 1, "rewarded_traces": 1}]
        # The ingest consumer hands the trace to the grouping stage: it gets a group without any sweep.
        groups: list[dict[str, object]] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not groups:
            listed = run_grpod(["groups", "support", "--json"], env)
            groups = json.loads(listed.stdout) if listed.returncode == 0 else []
            time.sleep(1)
        assert [g["trace_ids"] for g in groups] == [[trace_id]]
        up.send_signal(signal.SIGTERM)
        assert up.wait(timeout=30) == 0
    finally:
        if up.poll() is None:
            up.kill()
