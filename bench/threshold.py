"""Choose the default grouping threshold: purity and completeness of the groups formed from the
labelled paraphrase set (tests/data/paraphrases.jsonl) with the local model, per threshold.

Purity: the share of queries whose group's most common intent is their own (mixing intents is
the costly error: a group's winners and losers must have attempted the same task). Completeness:
the share of queries in the group that holds most of their intent (splitting only delays
readiness). Median over 5 shuffled arrival orders; F0.5 weighs purity twice as much.

    .venv/bin/python bench/threshold.py
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from grpod.workers.embeddings import LocalEmbedder
from grpod.workers.grouping import DomainSettings, evaluate_threshold

DATA = Path(__file__).parents[1] / "tests" / "data" / "paraphrases.jsonl"


def main() -> None:
    rows = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines()]
    vectors = list(LocalEmbedder().embed([row["query"] for row in rows]))
    domains, intents = [r["domain"] for r in rows], [r["intent"] for r in rows]
    table = Table(title=f"{len(rows)} queries, {len(set(intents))} intents, {len(set(domains))} domains")
    for column in ("threshold", "purity", "completeness", "F0.5", "groups"):
        table.add_column(column, justify="right")
    default = DomainSettings().group_threshold
    for step in range(8):
        threshold = round(0.30 + 0.05 * step, 2)
        quality = evaluate_threshold(vectors, domains, intents, threshold, range(5))
        p, c = quality.purity, quality.completeness
        f05 = 1.25 * p * c / (0.25 * p + c) if p + c else 0.0
        marker = " (default)" if abs(threshold - default) < 1e-9 else ""
        table.add_row(f"{threshold:.2f}{marker}", f"{p:.3f}", f"{c:.3f}", f"{f05:.3f}", str(quality.groups))
    Console().print(table)


if __name__ == "__main__":
    main()
