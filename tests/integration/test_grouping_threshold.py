"""The default grouping threshold, measured on the labelled paraphrase set with the real model.

tests/data/paraphrases.jsonl: 385 queries written for this purpose, 32 intents, 4 domains, with
deliberately close pairs (find vs delete duplicates, derivative vs integral, cancel vs change a
flight). A floor below the measured figures (see the README) catches a regression.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from grpod.workers.embeddings import LocalEmbedder
from grpod.workers.grouping import DomainSettings, evaluate_threshold

DATA = Path(__file__).parents[1] / "data" / "paraphrases.jsonl"
SEEDS = range(5)


def test_the_labelled_set_is_large_and_varied_enough() -> None:
    rows = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines()]
    assert len(rows) >= 300
    assert len({row["intent"] for row in rows}) >= 20
    assert len({row["domain"] for row in rows}) >= 3
    assert min(Counter(row["intent"] for row in rows).values()) >= 10
    assert len({row["query"] for row in rows}) == len(rows)


def test_the_default_threshold_groups_paraphrases_purely() -> None:
    rows = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines()]
    vectors = list(LocalEmbedder().embed([row["query"] for row in rows]))
    threshold = DomainSettings().group_threshold
    quality = evaluate_threshold(vectors, [r["domain"] for r in rows], [r["intent"] for r in rows], threshold, SEEDS)
    assert quality.purity >= 0.88, quality
    assert quality.completeness >= 0.62, quality
    # Tighter mixes fewer intents but splits more; looser the other way round: the default sits between.
    tighter = evaluate_threshold(
        vectors, [r["domain"] for r in rows], [r["intent"] for r in rows], threshold - 0.1, SEEDS
    )
    looser = evaluate_threshold(
        vectors, [r["domain"] for r in rows], [r["intent"] for r in rows], threshold + 0.1, SEEDS
    )
    assert tighter.purity >= quality.purity >= looser.purity
    assert tighter.completeness <= quality.completeness <= looser.completeness
