"""`pip install .` must carry the SQL and JSON Schemas: build the wheel and list it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_the_wheel_ships_migrations_queries_and_the_command(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for folder in ("daemon", "workers", "schema"):
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--wheel",
            "--no-isolation",
            "--outdir",
            str(tmp_path / "dist"),
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = (tmp_path / "dist").glob("grpod-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(archive.read(n).decode() for n in names if n.endswith("entry_points.txt"))

    shipped_sql = {
        f"grpod/schema/{folder}/{entry.name}"
        for folder in ("migrations", "queries")
        for entry in resources.files("grpod.schema").joinpath(folder).iterdir()
        if entry.name.endswith(".sql")
    }
    assert "grpod/schema/migrations/0001_vector_and_migrations.sql" in shipped_sql
    assert shipped_sql <= names, f"missing from the wheel: {shipped_sql - names}"
    shipped_json = {
        f"grpod/schema/events/{entry.name}"
        for entry in resources.files("grpod.schema").joinpath("events").iterdir()
        if entry.name.endswith(".json")
    }
    assert shipped_json <= names, f"missing from the wheel: {shipped_json - names}"
    prompts = {f"grpod/workers/prompts/{step}.md" for step in ("summary", "advantage", "operations", "consolidation")}
    assert prompts <= names, f"missing from the wheel: {prompts - names}"
    for module in (
        "grpod/daemon/cli.py",
        "grpod/daemon/py.typed",
        "grpod/workers/tasks.py",
        "grpod/workers/py.typed",
    ):
        assert module in names
    assert not any(name.startswith(("tests/", "bench/")) for name in names)
    assert "grpod = grpod.daemon.cli:main" in entry_points
