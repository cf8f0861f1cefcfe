"""Debian's PgBouncer in front of a TcpPostgres, as a process of the test's own on a free port.

PgBouncer refuses to run as root, so, like the PostgreSQL binaries of ``tcp_postgres``, it runs as
the system user ``pgserver`` there; its ini file and log live in a folder that user can read.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Literal

from ..ports import free_port
from .tcp_postgres import SYSTEM_USER

PoolMode = Literal["session", "transaction", "statement"]
DEBIAN_BINARY = Path("/usr/sbin/pgbouncer")  # Debian puts it in sbin, often not on a user's PATH


def pgbouncer_binary() -> Path | None:
    found = shutil.which("pgbouncer")
    if found is not None:
        return Path(found)
    return DEBIAN_BINARY if DEBIAN_BINARY.exists() else None


class PgBouncer:
    """One PgBouncer with one pool for ``database`` on the PostgreSQL at 127.0.0.1:``server_port``."""

    def __init__(self, binary: Path, server_port: int, database: str, pool_mode: PoolMode) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="grpod-pgbouncer-"))
        self.root.chmod(0o755)
        self.port = free_port()
        self.database = database
        ini = self.root / "pgbouncer.ini"
        # auth_type=any: no client authentication, every client logs in as the pool's user=postgres
        # (the TcpPostgres trusts it); a password in a client's URL is simply never asked for.
        ini.write_text(
            "[databases]\n"
            f"{database} = host=127.0.0.1 port={server_port} dbname={database} user=postgres\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = any\n"
            f"pool_mode = {pool_mode}\n"
            "default_pool_size = 10\n"
            f"logfile = {self.root / 'pgbouncer.log'}\n",
            encoding="utf-8",
        )
        as_user = os.geteuid() == 0
        if as_user:
            shutil.chown(self.root, SYSTEM_USER)
            shutil.chown(ini, SYSTEM_USER)
        self.process = subprocess.Popen(
            [str(binary), str(ini)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            user=SYSTEM_USER if as_user else None,
            cwd=self.root,
        )
        self._wait_until_listening()

    def _wait_until_listening(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"pgbouncer exited with {self.process.returncode}: {self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            except OSError:
                time.sleep(0.1)
                continue
            return
        raise RuntimeError(f"pgbouncer did not listen on port {self.port} within {timeout} s: {self.log()}")

    def log(self) -> str:
        path = self.root / "pgbouncer.log"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    def url(self, user: str = "postgres", password: str | None = None) -> str:
        credentials = f"{user}:{password}" if password is not None else user
        return f"postgresql://{credentials}@127.0.0.1:{self.port}/{self.database}"

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)
