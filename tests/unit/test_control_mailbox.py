"""Two deployments on one broker and one host: each worker's remote-control mailbox is its own.

Celery's default names the exclusive mailbox queue ``celery@<host>.celery.pidbox`` whatever the
queue prefix, so a second deployment's worker on the same host died declaring it (RESOURCE_LOCKED,
seen by bench/soak.py while a test's worker ran), and a broadcast reached both deployments.
"""

from __future__ import annotations

from pathlib import Path

from grpod.daemon.celery_app import create_app
from grpod.daemon.settings import Settings

RABBIT = "amqp://guest:guest@rabbit:5672//"


def test_the_mailbox_of_a_worker_is_under_its_deployments_prefix(tmp_path: Path) -> None:
    mailboxes = [
        create_app(Settings(home=tmp_path, queue_prefix=prefix), broker_url=RABBIT).control.mailbox
        for prefix in ("grpod", "soak-1")
    ]
    assert [m.exchange.name for m in mailboxes] == ["grpod.pidbox", "soak-1.pidbox"]
    assert [m.get_queue("celery@host").name for m in mailboxes] == [
        "celery@host.grpod.pidbox",
        "celery@host.soak-1.pidbox",
    ]
