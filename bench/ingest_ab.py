"""Ingest's storage path at another commit against today's, in the same run.

``store_isolating_failures`` (what ``IngestConsumer.store`` calls for each batch) of commit
``--against`` (its ``workers/ingest.py`` and ``schema/queries/ingest.sql``, read with ``git show``)
and of the working tree store the same ``--events`` events (bench/ingest.py's generator, batches of
500) into fresh databases of today's schema, in one embedded PostgreSQL, the two arms interleaved
(their order swapped every round) over ``--rounds`` rounds; medians of events/s and their ratio.
The default, 9a4a072, is the commit before the awaiting list (migration 0019) and the kept counts
(migration 0020): what those cost ingest.

    .venv/bin/python bench/ingest_ab.py
    .venv/bin/python bench/ingest_ab.py --against HEAD~3 --rounds 9
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
import psycopg

sys.path.insert(0, str(Path(__file__).parent))

from embedded_postgres import Postgres
from ingest import build_workload

from grpod.daemon.settings import Settings
from grpod.schema.sql import parse_queries
from grpod.workers import ingest as today

ROOT = Path(__file__).resolve().parents[1]
BATCH = 500
Store = Callable[..., today.BatchOutcome]


def store_at(revision: str, folder: Path) -> Store:
    """``store_isolating_failures`` as it was at ``revision``, with that revision's queries."""

    def show(path: str) -> str:
        return subprocess.run(
            ["git", "show", f"{revision}:{path}"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout

    source = folder / "ingest_then.py"
    source.write_text(show("workers/ingest.py"))
    queries = parse_queries(show("schema/queries/ingest.sql"), f"{revision}:schema/queries/ingest.sql")
    spec = importlib.util.spec_from_file_location("ingest_then", source)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["ingest_then"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    setattr(module, "load_queries", lambda *_: queries)  # noqa: B010 (a module made at run time)
    store: Store = module.store_isolating_failures
    return store


def rate(postgres: Postgres, store: Store, events: Sequence[bytes]) -> float:
    limits = Settings().limits()
    batches = [[today.Incoming(e, "bench") for e in events[i : i + BATCH]] for i in range(0, len(events), BATCH)]
    with postgres.fresh_database() as url, psycopg.connect(url, autocommit=True) as conn:
        seconds = 0.0
        for batch in batches:
            started = time.perf_counter()
            outcome = store(conn, batch, limits, 4096)
            seconds += time.perf_counter() - started
            if outcome.accepted != len(batch):
                raise SystemExit(f"accepted {outcome.accepted} of {len(batch)}: {dict(outcome.rejected)}")
    return len(events) / seconds


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", default="9a4a072", help="the commit to compare with")
    parser.add_argument("--events", type=int, default=6000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    rates: dict[str, list[float]] = {args.against: [], "today": []}
    with tempfile.TemporaryDirectory() as folder:
        arms: dict[str, Any] = {
            args.against: store_at(args.against, Path(folder)),
            "today": today.store_isolating_failures,
        }
        postgres = Postgres(Path(folder))
        try:
            for number in range(args.rounds):
                events = [orjson.dumps(e) for e in build_workload(args.events, 1000 + number).events]
                order = list(arms) if number % 2 else list(reversed(arms))
                for arm in order:
                    rates[arm].append(rate(postgres, arms[arm], events))
                print(f"round {number + 1}: " + ", ".join(f"{arm} {rates[arm][-1]:,.0f}/s" for arm in arms), flush=True)
        finally:
            postgres.close()
    medians = {arm: statistics.median(values) for arm, values in rates.items()}
    print(
        f"median events/s: {args.against} {medians[args.against]:,.0f}, today {medians['today']:,.0f}; "
        f"today/{args.against} {medians['today'] / medians[args.against]:.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
