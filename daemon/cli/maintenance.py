"""`grpod maintenance`: the maintenance sweep now, by hand (beat runs it every GRPOD_MAINTENANCE_SECONDS)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from grpod.daemon.cli.app import JsonOption, app, command_settings, migrated_database, print_json
from grpod.daemon.settings import Settings
from grpod.schema.errors import ConfigError

SHOWN_IDS = 8


@app.command()
def maintenance(as_json: JsonOption = False) -> None:
    """Sweep now: stalled distillations and lost ready groups, trace expiry, retention, pruning.

    The ready groups it finds are sent to the distillation stage through the configured broker (a
    running worker takes them); `grpod distill DOMAIN` distills them in this process instead.
    Exit 1 when a step failed (the others ran).
    """
    from grpod.daemon.database import connect
    from grpod.workers import maintenance_sweep

    settings = command_settings()
    deployment = maintenance_sweep.DeploymentUpkeep(
        rejected_retention_seconds=settings.rejected_retention_seconds,
        heartbeat_retention_seconds=settings.heartbeat_retention_seconds,
    )
    with connect(
        migrated_database(settings), autocommit=True, connect_timeout=settings.database_connect_timeout
    ) as conn:
        report = maintenance_sweep.sweep(conn, deployment)
    sent = _send_to_distill(settings, report.groups_to_distill)
    if as_json:
        print_json({**report.to_json(), "sent_groups": sent})
    else:
        _print_report(report.to_json(), sent, settings)
    raise typer.Exit(1 if report.failed else 0)


def _send_to_distill(settings: Settings, group_ids: Sequence[int]) -> list[int]:
    """Hand the groups to the distillation stage as beat's sweep does (idempotent: a group
    distilled meanwhile makes its task do nothing)."""
    if not group_ids:
        return []
    from kombu.exceptions import OperationalError

    from grpod.daemon.celery_app import create_app
    from grpod.schema.urls import redact

    celery = create_app(settings)
    try:
        for group_id in group_ids:
            celery.send_task("grpod.distill.group", args=[group_id])
    except (OSError, OperationalError) as error:
        raise ConfigError(
            f"GRPOD_BROKER_URL={redact(settings.effective_broker_url())} cannot be reached ({error}); the sweep's "
            f"changes are stored, and beat's distillation sweep sends the ready groups ({len(group_ids)}) once it can."
        ) from None
    finally:
        celery.close()
    return list(group_ids)


def _cell(value: Any) -> str:
    if isinstance(value, list):
        shown = ", ".join(str(item) for item in value[:SHOWN_IDS]) + (", ..." if len(value) > SHOWN_IDS else "")
        return f"{len(value)} ({shown})" if value else "0"
    return str(value)


def _print_report(report: dict[str, Any], sent: list[int], settings: Settings) -> None:
    from grpod.schema.urls import redact

    console = Console()
    by_step: dict[str, dict[str, dict[str, Any]]] = {}
    failed: dict[str, str] = {}
    for domain, steps in report["domains"].items():
        if "error" in steps:
            failed[domain] = steps["error"]
            continue
        for step, found in steps.items():
            by_step.setdefault(step, {})[domain] = found
    for step, domains in by_step.items():
        keys = list(next(iter(domains.values())))
        table = Table("domain", *(key.replace("_", " ") for key in keys), title=step.replace("_", " "))
        for domain, found in domains.items():
            table.add_row(escape(domain), *(_cell(found.get(key)) for key in keys))
        console.print(table)
    if not report["domains"]:
        console.print("no domains yet")
    for step, found in report["deployment"].items():
        if "error" in found:
            failed[f"({step})"] = found["error"]
            continue
        table = Table(*(key.replace("_", " ") for key in found), title=f"{step.replace('_', ' ')} (deployment)")
        table.add_row(*(_cell(value) for value in found.values()))
        console.print(table)
    for where, error in failed.items():
        console.print(f"failed: {escape(where)}: {escape(error)} (rolled back; the next sweep tries again)")
    if sent:
        console.print(
            f"sent {len(sent)} ready group{'' if len(sent) == 1 else 's'} to the distillation stage "
            f"on {redact(settings.effective_broker_url())}"
        )
