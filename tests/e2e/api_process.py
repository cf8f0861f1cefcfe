"""`grpod api` as a process for a test: started on a free port, answered over HTTP with a token."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..ports import free_port
from .helpers import GRPOD, grpod_env, run_grpod


class Api:
    def __init__(self, url: str, env: dict[str, str], process: subprocess.Popen[bytes]) -> None:
        self.url, self.env, self.process = url, env, process

    def call(
        self, method: str, path: str, token: str | None = None, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], Any]:
        data = json.dumps(body).encode() if body is not None and not isinstance(body, bytes) else body
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=dict(headers or {}))
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                raw = answer.read()
                return answer.status, dict(answer.headers), json.loads(raw) if raw else None
        except urllib.error.HTTPError as error:
            raw = error.read()
            return error.code, dict(error.headers), json.loads(raw) if raw else None

    def token(self, name: str, *args: str) -> str:
        made = run_grpod(["token", "create", name, *args, "--json"], self.env)
        assert made.returncode == 0, made.stderr
        created = json.loads(made.stdout)
        assert created["name"] == name and created["token"].startswith("grpod_")
        return str(created["token"])


def api_env(tmp_path: Path, database_url: str) -> dict[str, str]:
    """The environment of a `grpod api` on a port of its own, its database migrated."""
    env = grpod_env(tmp_path / "home", database_url=database_url, api_port=str(free_port()))
    assert run_grpod(["migrate"], env).returncode == 0
    return env


@contextmanager
def serve_api(env: dict[str, str], log_path: Path) -> Iterator[Api]:
    """`grpod api` running with ``env`` until the block ends, its output in ``log_path``."""
    log = log_path.open("wb")
    process = subprocess.Popen([*GRPOD, "api"], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{env['GRPOD_API_PORT']}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2):
                break
        except OSError:
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "grpod api did not answer within 60 s"
            time.sleep(0.2)
    try:
        yield Api(url, env, process)
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
