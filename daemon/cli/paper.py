"""`grpod train` and `grpod eval`: the paper's protocol on a labelled set (cold start, and measuring
whether a library helps)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from grpod.daemon.cli.app import JsonOption, app, command_settings, migrated_database, print_json
from grpod.schema.errors import OperatorError

if TYPE_CHECKING:
    from grpod.workers.training import Problem, Step, StepReport

Domain = Annotated[str, typer.Option("--domain", help="The domain whose library learns (or is measured).")]
Dataset = Annotated[
    Path, typer.Option("--dataset", metavar="FILE.jsonl", help='One {"id", "question", "answer"} per line.')
]
VerifierOption = Annotated[
    str, typer.Option("--verifier", help="math (math-verify on the final \\boxed{}), exact, or module:function.")
]
Temperature = Annotated[float, typer.Option(min=0.0, max=2.0, help="The policy's sampling temperature.")]
MaxTokens = Annotated[int, typer.Option(min=16, max=200_000, help="At most this many tokens per rollout.")]
Concurrency = Annotated[int, typer.Option(min=1, max=1024, help="Rollouts in flight at once.")]


def _problems(dataset: Path) -> list[Problem]:
    from grpod.workers.training import read_problems

    try:
        with dataset.open(encoding="utf-8") as lines:
            return read_problems(lines, str(dataset))
    except OSError as error:
        raise OperatorError(f"cannot read the dataset {dataset}: {error.strerror or error}.") from None
    except UnicodeDecodeError:
        raise OperatorError(f"the dataset {dataset} is not UTF-8 text.") from None


class _Progress:
    """Progress bars on stderr, and the step's table after each step."""

    def __init__(self, console: Console, table_console: Console) -> None:
        self.console, self.tables = console, table_console
        self.bars = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self.task: TaskID | None = None
        self.total_cost: float | None = 0.0

    def step_started(self, step: Step, rollouts: int, stored: int) -> None:
        self.bars.start()
        self.task = self.bars.add_task(f"step {step.number} (epoch {step.epoch}): rollouts", total=rollouts)
        self.bars.update(self.task, completed=stored)

    def rollout_done(self) -> None:
        if self.task is not None:
            self.bars.advance(self.task)

    def distilling(self, question: int, of: int) -> None:
        if self.task is not None:
            self.bars.update(self.task, description=f"distilling group {question} of {of}")

    def step_done(self, report: StepReport) -> None:
        if self.task is not None:
            self.bars.remove_task(self.task)
            self.task = None
        self.bars.stop()
        if report.cost is None or self.total_cost is None:
            self.total_cost = None
        else:
            self.total_cost += report.cost
        self.tables.print(_step_table(report, self.total_cost))


def _step_table(report: StepReport, total_cost: float | None) -> Table:
    table = Table(
        "rollout accuracy",
        "groups with signal",
        "operations",
        "version",
        "LLM calls (policy + distiller)",
        "tokens in / out",
        "cost so far",
        title=f"step {report.step} (epoch {report.epoch}): {report.questions} questions",
    )
    policy, distiller = report.policy, report.distiller
    version = "unchanged" if report.version is None else f"{report.version} ({report.label or 'no label'})"
    failed = f" ({report.failed_distillations} failed)" if report.failed_distillations else ""
    table.add_row(
        f"{report.accuracy:.1%} ({report.correct}/{report.rollouts})",
        f"{report.groups_with_signal}/{report.questions}{failed}",
        str(report.operations),
        version,
        f"{policy.calls} + {distiller.calls}",
        f"{policy.tokens_in + distiller.tokens_in} / {policy.tokens_out + distiller.tokens_out}",
        "-" if total_cost is None else f"${total_cost:.4f}",
    )
    return table


@app.command()
def train(
    domain: Domain,
    dataset: Dataset,
    group_size: Annotated[int, typer.Option(min=2, max=64, help="G: rollouts per question, one group.")] = 5,
    epochs: Annotated[int, typer.Option(min=1, max=100, help="Passes over the set.")] = 3,
    batch_size: Annotated[int, typer.Option(min=1, max=10_000, help="Questions per step (one version).")] = 25,
    temperature: Temperature = 0.7,
    verifier: VerifierOption = "math",
    max_tokens: MaxTokens = 4096,
    concurrency: Concurrency = 8,
    new_run: Annotated[
        bool, typer.Option("--new-run", help="Train again even if this run finished (else it is resumed).")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Learn a domain's library from a labelled set with the paper's protocol: G rollouts per
    question, one group per question, the batch's groups distilled, one version per step. A run
    stopped midway resumes when started again with the same set and settings."""
    from grpod.daemon.database import connect
    from grpod.daemon.ports import policy_from_settings, prices, process_embedder, process_llm
    from grpod.workers.llm import LLMError
    from grpod.workers.training_run import Ports, TrainSettings
    from grpod.workers.training_run import train as run_training
    from grpod.workers.verifiers import load_verifier

    settings = command_settings()
    problems = _problems(dataset)
    check = load_verifier(verifier)
    wanted = TrainSettings(group_size, epochs, batch_size, temperature, verifier, max_tokens, concurrency)
    policy = policy_from_settings(settings, concurrency)
    ports = Ports(
        policy=policy,
        distiller=process_llm,
        embedder=process_embedder,
        verifier=check,
        limits=settings.limits(),
        payload_limit=settings.rejected_payload_bytes,
        prices=prices(settings),
    )
    out = Console(stderr=as_json)
    progress = _Progress(Console(stderr=True), out)
    with connect(
        migrated_database(settings), autocommit=True, connect_timeout=settings.database_connect_timeout
    ) as conn:
        try:
            run = run_training(conn, ports, domain, problems, dataset.name, wanted, progress, new_run=new_run)
        except LLMError as error:
            progress.bars.stop()
            raise OperatorError(
                f"the policy ({policy.model}) failed: {error} Run the same command again to resume; "
                "the rollouts done so far are kept."
            ) from None
        from grpod.workers import library_store

        current = library_store.current_version(conn, domain)
    totals = _totals(run.reports)
    if as_json:
        print_json(
            {
                "run_id": run.run_id,
                "domain": domain,
                "dataset": dataset.name,
                "finished_before": run.finished_before,
                "steps": [report.to_json() for report in run.reports],
                "library_version": current,
                **totals,
            }
        )
        return
    if run.finished_before:
        for report in run.reports:
            out.print(_step_table(report, None))
        out.print(f"run {run.run_id} had finished: nothing to do (--new-run trains again).")
    cost = "" if totals["cost"] is None else f", ${totals['cost']:.4f}"
    out.print(
        f"{escape(domain)}: {len(run.reports)} step(s) of run {run.run_id}; library version {current} now; "
        f"{totals['policy']['calls']} policy and {totals['distiller']['calls']} distiller calls{cost}"
    )


def _totals(reports: list[StepReport]) -> dict[str, Any]:
    from grpod.workers.training import Usage

    policy = sum((r.policy for r in reports), Usage())
    distiller = sum((r.distiller for r in reports), Usage())
    costs = [r.cost for r in reports]
    cost = None if not costs or any(c is None for c in costs) else sum(c or 0.0 for c in costs)
    return {"policy": policy.__dict__, "distiller": distiller.__dict__, "cost": cost}


@app.command("eval")
def evaluate(
    domain: Annotated[str | None, typer.Option("--domain", help="The domain whose library is measured.")] = None,
    dataset: Annotated[
        Path | None, typer.Option("--dataset", metavar="FILE.jsonl", help='One {"id", "question", "answer"} per line.')
    ] = None,
    k: Annotated[int, typer.Option("-k", min=1, max=1024, help="Rollouts per question and arm.")] = 4,
    version: Annotated[int | None, typer.Option(min=1, help="This version (default: production).")] = None,
    no_library: Annotated[bool, typer.Option("--no-library", help="The first arm runs with no library.")] = False,
    against: Annotated[
        str | None,
        typer.Option(help="The second arm: a version, none or production (default: none, or production)."),
    ] = None,
    temperature: Temperature = 0.7,
    verifier: VerifierOption = "math",
    max_tokens: MaxTokens = 4096,
    concurrency: Concurrency = 8,
    list_: Annotated[bool, typer.Option("--list", help="List the stored evaluations instead.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Measure a library on a labelled set: Mean@k (with its 95% interval) and Pass@k of two arms
    side by side in one run (the library against none, or two versions), their difference, and
    the calls and tokens of each. The result is stored (`grpod eval --list`)."""
    from grpod.daemon.database import connect
    from grpod.daemon.ports import policy_from_settings
    from grpod.workers import library_store, training_store
    from grpod.workers.evaluation import parse_against, plan_arms
    from grpod.workers.evaluation_run import evaluate as run_evaluation
    from grpod.workers.llm import LLMError
    from grpod.workers.verifiers import load_verifier

    settings = command_settings()
    if list_:
        with connect(migrated_database(settings), connect_timeout=settings.database_connect_timeout) as conn:
            rows = training_store.evaluations(conn, domain)
        _print_evaluations(rows, as_json)
        return
    if domain is None or dataset is None:
        raise OperatorError("give --domain and --dataset (or --list).")
    if no_library and version is not None:
        raise OperatorError("give --version N or --no-library, not both.")
    try:
        second = parse_against(against)
    except ValueError as error:
        raise OperatorError(f"{error}.") from None
    problems = _problems(dataset)
    check = load_verifier(verifier)
    policy = policy_from_settings(settings, concurrency)
    with connect(
        migrated_database(settings), autocommit=True, connect_timeout=settings.database_connect_timeout
    ) as conn:
        library_store.library_state(conn, domain)  # an unknown domain is one sentence
        production = library_store.labels(conn, domain).get("production")
        arms = plan_arms(production, version, no_library, second)
        if arms[0].version == arms[1].version:
            raise OperatorError(
                f"both arms would run with {arms[0].name}; choose another with --version, --no-library or --against."
            )
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=True,
        ) as bars:
            task = bars.add_task(f"{arms[0].name} against {arms[1].name}", total=2 * k * len(problems))
            try:
                result = run_evaluation(
                    conn,
                    policy,
                    check,
                    domain,
                    problems,
                    dataset.name,
                    arms,
                    k=k,
                    temperature=temperature,
                    max_tokens=max_tokens,
                    concurrency=concurrency,
                    on_rollout=lambda: bars.advance(task),
                )
            except LLMError as error:
                raise OperatorError(f"the policy ({policy.model}) failed: {error}") from None
    if as_json:
        print_json(result)
        return
    _print_evaluation(result)


def _print_evaluation(result: dict[str, Any]) -> None:
    k = result["k"]
    table = Table(
        "arm",
        f"Mean@{k}",
        "95% interval",
        f"Pass@{k}",
        "LLM calls",
        "tokens in / out",
        title=f"evaluation {result['id']}: {result['domain']} on {result['dataset']} "
        f"({result['arms'][0]['questions']} questions)",
    )
    for arm in result["arms"]:
        band = arm["mean_at_k_interval"]
        table.add_row(
            arm["arm"],
            f"{arm['mean_at_k']:.3f}",
            "-" if band is None else f"{band[0]:.3f} to {band[1]:.3f}",
            f"{arm['pass_at_k']:.3f}",
            str(arm["llm_calls"]),
            f"{arm['tokens_in']} / {arm['tokens_out']}",
        )
    difference = result["difference"]
    band = difference["interval"]
    table.add_row(
        "difference",
        f"{difference['mean_at_k']:+.3f}",
        "-" if band is None else f"{band[0]:+.3f} to {band[1]:+.3f}",
        f"{difference['pass_at_k']:+.3f}",
        "",
        "",
    )
    Console().print(table)


def _print_evaluations(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        print_json(rows)
        return
    table = Table("id", "when", "domain", "dataset", "k", "arms (Mean@k)", "difference", title="evaluations")
    for row in rows:
        arms = " vs ".join(f"{arm['arm']} {arm['mean_at_k']:.3f}" for arm in row["arms"])
        table.add_row(
            str(row["id"]),
            row["created_at"][:19].replace("T", " "),
            escape(row["domain"]),
            escape(row["dataset"]),
            str(row["k"]),
            arms,
            f"{row['difference']['mean_at_k']:+.3f}",
        )
    Console().print(table)
