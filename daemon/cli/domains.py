"""`grpod domains`, `grpod groups DOMAIN`, `grpod domain show|set|reembed`: domains, their groups and settings."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from grpod.daemon.cli.app import JsonOption, app, command_settings, migrated_database, print_json
from grpod.schema.errors import OperatorError


def print_domains(console: Console, domains: list[dict[str, Any]]) -> None:
    table = Table("domain", "traces", "rewarded traces", title="domains")
    for row in domains:
        table.add_row(escape(row["domain"]), str(row["traces"]), str(row["rewarded_traces"]))
    console.print(table)


@app.command()
def domains(as_json: JsonOption = False) -> None:
    """The domains, with their traces and rewarded traces."""
    from grpod.daemon.database import connect
    from grpod.daemon.status import domain_counts

    settings = command_settings()
    with connect(migrated_database(settings), connect_timeout=settings.database_connect_timeout) as conn:
        rows = domain_counts(conn)
    if as_json:
        print_json(rows)
        return
    print_domains(Console(), rows)


@app.command()
def groups(
    domain: Annotated[str, typer.Argument(help="The domain whose groups to list.")],
    limit: Annotated[int, typer.Option(min=1, help="At most this many, largest first.")] = 50,
    as_json: JsonOption = False,
) -> None:
    """A domain's groups of similar queries: size, rewarded traces, reward spread, readiness, samples."""
    from grpod.daemon.database import connect
    from grpod.workers.grouping_store import list_groups, prepare

    settings = command_settings()
    with connect(
        migrated_database(settings), autocommit=True, connect_timeout=settings.database_connect_timeout
    ) as conn:
        prepare(conn)
        rows = list_groups(conn, domain, limit)
    if as_json:
        print_json(rows)
        return
    table = Table("id", "size", "rewarded", "spread", "ready", "sample queries", title=f"groups of {domain}")
    for row in rows:
        table.add_row(
            str(row["id"]),
            str(row["size"]),
            str(row["rewarded"]),
            f"{row['spread']:.3g}",
            "yes" if row["ready"] else escape(row["why_not_ready"] or "no"),
            escape(" | ".join(sample[:60] for sample in row["samples"])),
        )
    Console().print(table)


domain_app = typer.Typer(help="One domain's settings: show, set, re-embed.", no_args_is_help=True)
app.add_typer(domain_app, name="domain")


def _domain_settings(conn: Any, name: str) -> tuple[Any, Any, Any]:
    """A domain's grouping, learning and publishing settings, from one read of its stored settings."""
    from grpod.workers.distillation import LearningSettings
    from grpod.workers.grouping import DomainSettings
    from grpod.workers.library_store import library_state
    from grpod.workers.promotion import PublishSettings

    stored = library_state(conn, name).settings
    return DomainSettings.from_json(stored), LearningSettings.from_json(stored), PublishSettings.from_json(stored)


def _domain_report(conn: Any, name: str) -> dict[str, Any]:
    from grpod.workers.grouping_store import domain_state
    from grpod.workers.library_store import library_state
    from grpod.workers.upkeep_settings import UpkeepSettings

    state = domain_state(conn, name)
    _, learning, publishing = _domain_settings(conn, name)
    upkeep = UpkeepSettings.from_json(library_state(conn, name).settings)
    return {
        "domain": name,
        "settings": state.settings.to_json() | learning.to_json() | publishing.to_json() | upkeep.to_json(),
        "embedding_model": state.embedding_model,
        "embedding_dimension": state.embedding_dimension,
    }


@domain_app.command("show")
def domain_show(
    name: Annotated[str, typer.Argument(metavar="DOMAIN")],
    as_json: JsonOption = False,
) -> None:
    """A domain's settings and the embedding model of its vectors."""
    from grpod.daemon.database import connect

    settings = command_settings()
    with connect(migrated_database(settings), connect_timeout=settings.database_connect_timeout) as conn:
        report = _domain_report(conn, name)
    if as_json:
        print_json(report)
        return
    for key, value in report["settings"].items():
        typer.echo(f"{key:20} {value}")
    typer.echo(f"{'embedding_model':20} {report['embedding_model'] or '(none yet)'} ({report['embedding_dimension']})")


@domain_app.command("set")
def domain_set(
    name: Annotated[str, typer.Argument(metavar="DOMAIN")],
    threshold: Annotated[float | None, typer.Option(help="Cosine distance within which a query joins a group.")] = None,
    group_size: Annotated[int | None, typer.Option(help="G: rewarded traces a group needs.")] = None,
    reward_spread: Annotated[float | None, typer.Option(help="Rewards must differ by more than this.")] = None,
    reward_combination: Annotated[
        str | None, typer.Option(help="How several sources' rewards combine: mean, min, max, latest.")
    ] = None,
    agent_objective: Annotated[str | None, typer.Option(help="What the domain's agent is for (in prompts).")] = None,
    learning_objective: Annotated[
        str | None, typer.Option(help="What a good experience for this domain looks like (in prompts).")
    ] = None,
    max_new_experiences: Annotated[int | None, typer.Option(help="K: new experiences one group may propose.")] = None,
    experience_max_words: Annotated[int | None, typer.Option(help="Word limit of an experience.")] = None,
    update_window_seconds: Annotated[
        float | None, typer.Option(help="Distillations wait this long to be published together.")
    ] = None,
    update_window_groups: Annotated[
        int | None, typer.Option(help="... or until this many distillations are waiting.")
    ] = None,
    close_distance: Annotated[
        float | None,
        typer.Option(help="A new experience this close to an existing one goes to the operations step."),
    ] = None,
    context_tokens: Annotated[
        int | None,
        typer.Option(help="Tokens of the library one distillation prompt shows: the experiences nearest the group."),
    ] = None,
    publish_policy: Annotated[
        str | None, typer.Option(help="auto: new versions become production; gated: candidate first.")
    ] = None,
    promotion_min_traces: Annotated[int | None, typer.Option(help="Rewarded traces per look of the gate.")] = None,
    promotion_margin: Annotated[
        float | None, typer.Option(help="A candidate may be this much worse than production.")
    ] = None,
    auto_rollback: Annotated[
        bool | None, typer.Option("--auto-rollback/--no-auto-rollback", help="Roll back regressions.")
    ] = None,
    rollback_min_traces: Annotated[int | None, typer.Option(help="Rewarded traces per look of rollback.")] = None,
    rollback_margin: Annotated[float | None, typer.Option(help="Roll back when worse by more than this.")] = None,
    test_alpha: Annotated[float | None, typer.Option(help="Error budget of promotion and rollback tests.")] = None,
    max_deletes_per_version: Annotated[
        int | None, typer.Option(help="Guard: experiences one version may remove at most.")
    ] = None,
    max_removed_fraction: Annotated[
        float | None, typer.Option(help="Guard: share of its parent's experiences one version may remove.")
    ] = None,
    merge_distance: Annotated[
        float | None, typer.Option(help="Consolidation: experiences this close are near-duplicates, merged.")
    ] = None,
    max_experiences: Annotated[
        int | None, typer.Option(help="Budget: a consolidation retires the least useful beyond this many.")
    ] = None,
    max_prompt_tokens: Annotated[
        int | None, typer.Option(help="Budget: ... and beyond this many tokens of the rendered prompt block.")
    ] = None,
    trace_ttl: Annotated[
        int | None, typer.Option(help="Seconds: a trace still without a reward after this is expired.")
    ] = None,
    retention: Annotated[
        int | None, typer.Option(help="Seconds: then learned-from trajectories and LLM request bodies go.")
    ] = None,
    group_merge_wait: Annotated[
        int | None, typer.Option(help="Seconds: a group short of G this long joins its nearest group.")
    ] = None,
    group_merge_factor: Annotated[
        float | None, typer.Option(help="... if that group is within group_threshold times this.")
    ] = None,
    create: Annotated[
        bool,
        typer.Option("--create", help="Make the domain if it has no trace yet (a cold start: `grpod train`)."),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Change a domain's grouping and learning settings (validated; the embedding model changes with `reembed`)."""
    from grpod.daemon.database import connect
    from grpod.schema.errors import SettingError
    from grpod.workers import distillation, promotion
    from grpod.workers.grouping import validated_settings
    from grpod.workers.grouping_store import set_settings
    from grpod.workers.library_store import library_state
    from grpod.workers.upkeep_settings import UpkeepSettings, validated_upkeep_settings

    settings = command_settings()
    with connect(migrated_database(settings), connect_timeout=settings.database_connect_timeout) as conn:
        if create:
            from grpod.schema.events import DOMAIN_PATTERN
            from grpod.workers.grouping_store import ensure_domain

            if not DOMAIN_PATTERN.fullmatch(name):
                raise OperatorError(f"domain {name!r} must match {DOMAIN_PATTERN.pattern} (lower case, digits, _ . -).")
            ensure_domain(conn, name)
        current, learning, current_publishing = _domain_settings(conn, name)
        current_upkeep = UpkeepSettings.from_json(library_state(conn, name).settings)
        given = {
            "agent_objective": agent_objective,
            "learning_objective": learning_objective,
            "max_new_experiences": max_new_experiences,
            "experience_max_words": experience_max_words,
            "update_window_seconds": update_window_seconds,
            "update_window_groups": update_window_groups,
            "close_distance": close_distance,
            "context_tokens": context_tokens,
        }
        publishing = {
            "publish_policy": publish_policy,
            "promotion_min_traces": promotion_min_traces,
            "promotion_margin": promotion_margin,
            "auto_rollback": auto_rollback,
            "rollback_min_traces": rollback_min_traces,
            "rollback_margin": rollback_margin,
            "test_alpha": test_alpha,
            "max_deletes_per_version": max_deletes_per_version,
            "max_removed_fraction": max_removed_fraction,
        }
        upkeep = {
            "merge_distance": merge_distance,
            "max_experiences": max_experiences,
            "max_prompt_tokens": max_prompt_tokens,
            "trace_ttl_seconds": trace_ttl,
            "retention_seconds": retention,
            "group_merge_wait_seconds": group_merge_wait,
            "group_merge_factor": group_merge_factor,
        }
        try:
            wanted = validated_settings(
                current.group_threshold if threshold is None else threshold,
                current.group_size if group_size is None else group_size,
                current.reward_spread if reward_spread is None else reward_spread,
                current.reward_combination if reward_combination is None else reward_combination,
            )
            wanted_learning = distillation.validated_learning_settings(
                **(learning.to_json() | {key: value for key, value in given.items() if value is not None})
            )
            wanted_publishing = promotion.validated_publish_settings(
                **(current_publishing.to_json() | {k: v for k, v in publishing.items() if v is not None})
            )
            wanted_upkeep = validated_upkeep_settings(
                **(current_upkeep.to_json() | {k: v for k, v in upkeep.items() if v is not None})
            )
        except SettingError as error:
            raise OperatorError(f"{error}; nothing was changed.") from None
        set_settings(
            conn, name, wanted, wanted_learning.to_json() | wanted_publishing.to_json() | wanted_upkeep.to_json()
        )
        conn.commit()
        report = _domain_report(conn, name)
    if as_json:
        print_json(report)
        return
    typer.echo(f"domain {name}: " + ", ".join(f"{k}={v}" for k, v in report["settings"].items()))


@domain_app.command("reembed")
def domain_reembed(
    name: Annotated[str, typer.Argument(metavar="DOMAIN")],
    as_json: JsonOption = False,
) -> None:
    """Embed and group all of a domain's traces again with the configured model (GRPOD_EMBEDDINGS)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from grpod.daemon.database import connect
    from grpod.daemon.ports import process_embedder
    from grpod.workers.grouping_store import reembed

    settings = command_settings()
    embedder = process_embedder()
    progress = Progress(
        TextColumn("re-embedding"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=as_json,
    )
    with (
        progress,
        connect(
            migrated_database(settings), autocommit=True, connect_timeout=settings.database_connect_timeout
        ) as conn,
    ):
        task = progress.add_task("reembed", total=None)

        def advance(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        run = reembed(conn, embedder, name, advance)
        report = _domain_report(conn, name)
    summary = {**report, "traces": run.placed, "groups": run.new_groups, "ready_groups": len(run.ready)}
    if as_json:
        print_json(summary)
        return
    typer.echo(
        f"domain {name}: {run.placed} traces in {run.new_groups} groups with {report['embedding_model']} "
        f"({report['embedding_dimension']} dimensions); {len(run.ready)} groups ready"
    )
