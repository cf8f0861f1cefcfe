"""The embedded broker's spool: how its files are named, and what a name counts.

The spool is a folder of files of JSON lines, one file per published batch; the SDK writes them
(``grpod.sdk.publish``) and the ingest consumer claims them (``grpod.workers.event_source``). A
file's name carries how often its events were delivered: ``<time>-<random>.<deliveries>.jsonl``.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from pathlib import Path

SPOOL_SUFFIX = ".jsonl"


def spool_name(attempts: int) -> str:
    return f"{time.time_ns():020d}-{uuid.uuid4().hex}.{attempts}{SPOOL_SUFFIX}"


def attempts_of(name: str) -> int:
    parts = name.split(".")
    return int(parts[-2]) if len(parts) >= 3 and parts[-2].isdigit() else 0


def with_attempts(name: str, attempts: int) -> str:
    return f"{name.rsplit('.', 2)[0]}.{attempts}{SPOOL_SUFFIX}"


def spool_files(folder: Path) -> list[str]:
    return sorted(entry.name for entry in os.scandir(folder) if entry.name.endswith(SPOOL_SUFFIX))


def spool_depth(folder: Path) -> int:
    """Events waiting in a spool folder (the lines of its waiting files)."""
    total = 0
    for name in spool_files(folder):
        with contextlib.suppress(FileNotFoundError):
            total += sum(1 for line in (folder / name).read_bytes().split(b"\n") if line)
    return total


def spool_folder(home: Path) -> Path:
    """Where the embedded broker keeps events waiting to be ingested, under ``GRPOD_HOME``."""
    return home / "broker" / "events"
