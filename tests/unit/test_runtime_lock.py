from __future__ import annotations

import os
from pathlib import Path

import pytest

from grpod.daemon.embedded import RuntimeLock, ensure_home
from grpod.daemon.runtime import RESTART_BUDGET, RESTART_WINDOW, Child
from grpod.schema.errors import ConfigError


def test_a_second_holder_gets_a_clear_error(tmp_path: Path) -> None:
    first = RuntimeLock(tmp_path / "up.lock")
    first.acquire()
    second = RuntimeLock(tmp_path / "up.lock")
    with pytest.raises(ConfigError, match=rf"already running on GRPOD_HOME={tmp_path} \(pid {os.getpid()}\)"):
        second.acquire()
    first.release()
    second.acquire()  # free again once released
    second.release()


def test_home_that_cannot_be_written_names_the_setting(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"GRPOD_HOME=.*a-file/home is not a writable folder"):
        ensure_home(blocker / "home")


def test_home_is_created(tmp_path: Path) -> None:
    assert ensure_home(tmp_path / "new" / "home").is_dir()


def test_a_child_that_keeps_dying_exhausts_its_restart_budget() -> None:
    child = Child("worker", ["true"])
    now = 1000.0
    for attempt in range(RESTART_BUDGET):
        assert child.may_restart(now + attempt)
        child.restarts.append(now + attempt)
    assert not child.may_restart(now + RESTART_BUDGET)
    # Old restarts fall out of the window.
    assert child.may_restart(now + RESTART_WINDOW + RESTART_BUDGET + 1)
