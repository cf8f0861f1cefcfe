"""`grpod up`: the embedded database, migrations, and a worker and beat as child processes.

The supervisor owns the children: it restarts one that dies (with backoff,
within a budget), forwards SIGINT/SIGTERM as a stop, kills what has not
stopped after ``shutdown_timeout``, then lets the database stop.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import FrameType

from grpod.daemon.database import redact
from grpod.daemon.embedded import RuntimeLock, embedded_database, ensure_home
from grpod.daemon.logs import get_logger
from grpod.daemon.migrations import migrate
from grpod.daemon.settings import Settings

log = get_logger(__name__)

RESTART_BUDGET = 5  # restarts of one child within RESTART_WINDOW before giving up
RESTART_WINDOW = 60.0
POLL_SECONDS = 0.2
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM if the supervisor dies (Linux)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:  # not Linux: the supervisor's own stop path still applies
        pass


@dataclass
class Child:
    role: str
    argv: Sequence[str]
    process: subprocess.Popen[bytes] | None = None
    restarts: list[float] = field(default_factory=list)

    def start(self, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            list(self.argv),
            env=env,
            # Own session: a terminal's Ctrl-C reaches only the supervisor,
            # which stops the children in order.
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        log.info("child started", role=self.role, pid=self.process.pid)

    def exited(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def terminate(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            log.warning("child did not stop in time; killing it", role=self.role, pid=self.process.pid)
            self.process.kill()
            self.process.wait()

    def may_restart(self, now: float) -> bool:
        self.restarts = [moment for moment in self.restarts if now - moment < RESTART_WINDOW]
        return len(self.restarts) < RESTART_BUDGET


def child_commands(settings: Settings) -> list[Child]:
    python = sys.executable
    children = [
        Child("worker", [python, "-m", "grpod.daemon", "worker"]),
        Child("beat", [python, "-m", "grpod.daemon", "beat"]),
    ]
    if settings.api_port:  # GRPOD_API_PORT=0: no HTTP API from this `grpod up`
        children.append(Child("api", [python, "-m", "grpod.daemon", "api"]))
    return children


class Supervisor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.children = child_commands(settings)
        self._stop = threading.Event()

    def request_stop(self, signum: int, _frame: FrameType | None) -> None:
        log.info("stop requested", signal=signal.Signals(signum).name)
        self._stop.set()

    def run(self) -> int:
        settings = self.settings
        home = ensure_home(settings.home)
        lock = RuntimeLock(home / "up.lock")
        lock.acquire()
        database = None
        try:
            if settings.database_url is None:
                database = embedded_database(settings)
                database_url = database.url
            else:
                database_url = settings.database_url
            report = migrate(database_url, connect_timeout=settings.database_connect_timeout)
            broker_url = settings.effective_broker_url()
            log.info(
                "grpod is up",
                home=str(home),
                database=redact(database_url),
                database_mode="embedded" if database else "external",
                pgdata=str(database.pgdata) if database else None,
                schema_version=report.current_version,
                broker=redact(broker_url),
                broker_folder=str(settings.broker_folder) if settings.embedded_broker else None,
                beat_schedule=str(settings.beat_schedule_file),
            )
            env = dict(os.environ)
            env.update({"GRPOD_DATABASE_URL": database_url, "GRPOD_HOME": str(home)})
            return self._supervise(env)
        finally:
            if database is not None:
                database.release()
                log.info("embedded database released", pgdata=str(database.pgdata))
            lock.release()

    def _supervise(self, env: dict[str, str]) -> int:
        previous = {sig: signal.signal(sig, self.request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        exit_code = 0
        try:
            for child in self.children:
                child.start(env)
            while not self._stop.wait(POLL_SECONDS):
                for child in self.children:
                    code = child.exited()
                    if code is None:
                        continue
                    now = time.monotonic()
                    if not child.may_restart(now):
                        log.error("child keeps dying; stopping grpod", role=child.role, exit_code=code)
                        exit_code = 1
                        self._stop.set()
                        break
                    child.restarts.append(now)
                    delay = min(2 ** len(child.restarts) * 0.25, 10.0)
                    log.warning("child exited; restarting", role=child.role, exit_code=code, delay=delay)
                    if self._stop.wait(delay):
                        break
                    child.start(env)
        finally:
            self._stop_children()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return exit_code

    def _stop_children(self) -> None:
        for child in self.children:
            child.terminate()
        deadline = time.monotonic() + self.settings.shutdown_timeout
        for child in self.children:
            if child.process is None:
                continue
            try:
                child.process.wait(timeout=max(deadline - time.monotonic(), 0.01))
            except subprocess.TimeoutExpired:
                child.kill()
            log.info("child stopped", role=child.role, exit_code=child.process.returncode)
