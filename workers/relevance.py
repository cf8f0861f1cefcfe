"""Which experiences of a library a distillation prompt shows: the ones nearest to what the step is
about, within a token budget, so that a prompt's size does not grow with the library.

Plain functions over vectors (rows of unit length, as every embedder gives them); no IO.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import numpy as np
import numpy.typing as npt

from grpod.schema.library import line_tokens

Vectors = npt.NDArray[np.float32]


def ranked_by_relevance(anchors: Vectors, ids: Sequence[int], vectors: Vectors) -> list[int]:
    """The experience ids, nearest first to any of ``anchors`` (cosine similarity, the highest over the
    anchors); ties go to the older (lower) id."""
    if len(ids) == 0:
        return []
    if len(anchors) == 0:
        return sorted(ids)
    similarity = (np.asarray(vectors, dtype=np.float32) @ np.asarray(anchors, dtype=np.float32).T).max(axis=1)
    return [ids[i] for i in sorted(range(len(ids)), key=lambda i: (-float(similarity[i]), ids[i]))]


def within_budget(
    ranked: Sequence[int], library: Mapping[int, str], budget_tokens: int, must: Collection[int] = ()
) -> dict[int, str]:
    """The experiences to show: those in ``must`` (a step may only change what it sees), then the
    ranked ones while their lines fit ``budget_tokens``. A line that does not fit is skipped and a
    shorter one after it may still fit."""
    shown = {i: library[i] for i in must if i in library}
    used = sum(line_tokens(i, text) for i, text in shown.items())
    for experience_id in ranked:
        if experience_id in shown:
            continue
        cost = line_tokens(experience_id, library[experience_id])
        if used + cost > budget_tokens:
            continue
        shown[experience_id] = library[experience_id]
        used += cost
    return dict(sorted(shown.items()))
