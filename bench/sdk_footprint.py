"""What an agent pays for the SDK: installed size and import time, against the whole of grpod.

Measured in one run:

- **installed size**: a fresh virtual environment with ``pip install ./sdk`` (grpod-sdk alone, as
  an agent installs it), and the same with ``pip install ./sdk[postgres]``, against this
  checkout's ``.venv`` (grpod with its ``local`` extra: Celery, psycopg, the PostgreSQL server
  binaries, torch, llama.cpp); the size of each environment's site-packages;
- **import time**: ``import grpod.sdk`` in the SDK's environment, against ``import
  grpod.daemon.tasks`` (what a worker imports) in ``.venv``, and against a bare interpreter start
  in each; ``--runs`` fresh processes each, median.

Run from the repository root (it needs the package index or pip's cache for the SDK's five
dependencies)::

    .venv/bin/python bench/sdk_footprint.py
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).parents[1]


def site_packages_bytes(venv: Path) -> int:
    (site,) = (venv / "lib").glob("python3*/site-packages")
    return sum(path.stat().st_size for path in site.rglob("*") if path.is_file() and not path.is_symlink())


def fresh_venv(where: Path, requirement: str) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True)
    subprocess.run(
        [str(where / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", requirement],
        check=True,
    )
    return where


def median_seconds(python: Path, code: str, runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([str(python), "-c", code], check=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    full = ROOT / ".venv"
    with tempfile.TemporaryDirectory(prefix="grpod-sdk-bench-") as folder:
        source = Path(folder) / "src"
        for name in ("sdk", "schema"):
            shutil.copytree(
                ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info")
            )
        sdk = fresh_venv(Path(folder) / "sdk", str(source / "sdk"))
        sdk_postgres = fresh_venv(Path(folder) / "sdk-postgres", f"{source / 'sdk'}[postgres]")
        empty = Path(folder) / "empty"
        subprocess.run([sys.executable, "-m", "venv", str(empty)], check=True)
        base = site_packages_bytes(empty)  # pip itself, in every environment
        sizes = {
            "grpod-sdk": site_packages_bytes(sdk) - base,
            "grpod-sdk[postgres]": site_packages_bytes(sdk_postgres) - base,
            "grpod[local] (.venv)": site_packages_bytes(full) - base,
        }
        python_sdk, python_full = sdk / "bin" / "python", full / "bin" / "python"
        start_sdk = median_seconds(python_sdk, "pass", args.runs)
        start_full = median_seconds(python_full, "pass", args.runs)
        import_sdk = median_seconds(python_sdk, "import grpod.sdk", args.runs) - start_sdk
        import_worker = median_seconds(python_full, "import grpod.daemon.tasks", args.runs) - start_full

    print("| installation | site-packages | against grpod[local] |")
    print("| --- | ---: | ---: |")
    whole = sizes["grpod[local] (.venv)"]
    for name, size in sizes.items():
        print(f"| {name} | {size / 2**20:.1f} MiB | {size / whole:.1%} |")
    print()
    print(f"| import (median of {args.runs} fresh processes, less the interpreter's start) | time |")
    print("| --- | ---: |")
    print(f"| `import grpod.sdk` in grpod-sdk's environment | {import_sdk * 1000:.0f} ms |")
    print(f"| `import grpod.daemon.tasks` (a worker) in grpod[local]'s | {import_worker * 1000:.0f} ms |")
    print(f"| ratio | {import_worker / import_sdk:.1f}x |")


if __name__ == "__main__":
    main()
