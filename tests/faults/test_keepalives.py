"""Worker connections ask the server to probe them, so that a host that died without closing its
connections has its sessions (and their advisory locks) ended in about a minute, not two hours."""

from __future__ import annotations

from pathlib import Path

from grpod.daemon.resources import open_pool
from grpod.daemon.settings import Settings

from .tcp_postgres import TcpPostgres


def _keepalives(url: str, settings: Settings) -> tuple[str, ...]:
    with open_pool(url, settings) as pool, pool.connection() as conn:
        row = conn.execute(
            "SELECT current_setting('tcp_keepalives_idle'), current_setting('tcp_keepalives_interval'), "
            "current_setting('tcp_keepalives_count'), current_setting('tcp_user_timeout')"
        ).fetchone()
    assert row is not None
    return tuple(str(value) for value in row)


def test_pooled_connections_over_tcp_are_probed_by_the_server(tcp_postgres: TcpPostgres) -> None:
    url = tcp_postgres.url()
    assert _keepalives(url, Settings(database_url=url)) == ("30", "10", "3", "60000")
    assert _keepalives(url, Settings(database_url=url, database_keepalive_seconds=90)) == ("90", "30", "3", "180000")
    # 0 leaves the operating system's default (Linux: two hours idle, then 9 probes 75 s apart).
    system = tuple(
        Path(f"/proc/sys/net/ipv4/tcp_keepalive_{name}").read_text().strip() for name in ("time", "intvl", "probes")
    )
    assert _keepalives(url, Settings(database_url=url, database_keepalive_seconds=0)) == (*system, "0")
