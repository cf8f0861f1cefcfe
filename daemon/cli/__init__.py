"""The `grpod` command line, one module per area; importing this registers every command."""

from __future__ import annotations

from grpod.daemon.cli import (
    consolidate,
    distill,
    domains,
    ingest,
    library,
    maintenance,
    paper,
    runtime,
    tokens,
    verify,
)
from grpod.daemon.cli.app import app, main

__all__ = [
    "app",
    "consolidate",
    "distill",
    "domains",
    "ingest",
    "library",
    "main",
    "maintenance",
    "paper",
    "runtime",
    "tokens",
    "verify",
]
