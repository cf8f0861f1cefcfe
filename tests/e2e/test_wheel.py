"""`pip install .` must carry the SQL and JSON Schemas: build the wheel and list it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).parents[2]


def _wheel(source: Path, outdir: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(outdir), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = outdir.glob("*.whl")
    return wheel


def _names(wheel: Path) -> tuple[set[str], str]:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = next(archive.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
        entry_points = next((archive.read(n).decode() for n in names if n.endswith("entry_points.txt")), "")
    return names, metadata + entry_points


def test_the_wheels_ship_migrations_queries_prompts_and_the_command(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for folder in ("daemon", "workers", "schema", "sdk"):
        shutil.copytree(
            ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info")
        )
    names, described = _names(_wheel(source, tmp_path / "grpod"))
    sdk_names, sdk_described = _names(_wheel(source / "sdk", tmp_path / "grpod-sdk"))

    # The contracts ship with the SDK's distribution, which grpod depends on.
    shipped_sql = {
        f"grpod/schema/{folder}/{entry.name}"
        for folder in ("migrations", "queries")
        for entry in resources.files("grpod.schema").joinpath(folder).iterdir()
        if entry.name.endswith(".sql")
    }
    assert "grpod/schema/migrations/0001_vector_and_migrations.sql" in shipped_sql
    assert shipped_sql <= sdk_names, f"missing from the wheel: {shipped_sql - sdk_names}"
    shipped_json = {
        f"grpod/schema/events/{entry.name}"
        for entry in resources.files("grpod.schema").joinpath("events").iterdir()
        if entry.name.endswith(".json")
    }
    assert shipped_json <= sdk_names, f"missing from the wheel: {shipped_json - sdk_names}"
    assert {"grpod/sdk/__init__.py", "grpod/sdk/py.typed", "grpod/schema/py.typed"} <= sdk_names
    assert not any(name.startswith(("grpod/daemon/", "grpod/workers/")) for name in sdk_names)
    assert "Name: grpod-sdk" in sdk_described and "Requires-Dist: celery" not in sdk_described

    prompts = {f"grpod/workers/prompts/{step}.md" for step in ("summary", "advantage", "operations", "consolidation")}
    assert prompts <= names, f"missing from the wheel: {prompts - names}"
    for module in (
        "grpod/daemon/cli/__init__.py",
        "grpod/daemon/py.typed",
        "grpod/daemon/tasks.py",
        "grpod/workers/py.typed",
    ):
        assert module in names
    assert not any(name.startswith(("tests/", "bench/", "grpod/schema/", "grpod/sdk/")) for name in names)
    assert "Requires-Dist: grpod-sdk[postgres]==0.1.0" in described
    assert "grpod = grpod.daemon.cli:main" in described
