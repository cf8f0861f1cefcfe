"""The dashboard's library timeline, the decisions: where each version's mean reward and its 95%
interval fall on an SVG chart. Plain data in, plain data out; the template only draws it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

WIDTH = 760
HEIGHT = 240
LEFT, RIGHT, TOP, BOTTOM = 56, 48, 16, 36  # room for the axes' labels
TICKS = 5
MAX_NAMED = 16  # version numbers under the axis; beyond, every k-th and the labelled ones


@dataclass(frozen=True)
class Point:
    version: int
    x: float
    labels: tuple[str, ...]
    traces: int
    mean: float | None  # None: no rewarded trace ran with this version
    low: float | None
    high: float | None
    y: float | None
    low_y: float | None
    high_y: float | None
    named: bool  # its version number is written under the axis (not every one fits)


@dataclass(frozen=True)
class Timeline:
    width: int
    height: int
    points: tuple[Point, ...]
    bands: tuple[str, ...]  # SVG polygons, one per run of neighbouring versions with an interval
    line: str  # SVG polyline through the means of the versions that have rewarded traces
    ticks: tuple[tuple[float, str], ...]  # (y, the reward it marks)
    baseline: float  # the y of the x axis


def _bounds(values: Sequence[float]) -> tuple[float, float]:
    if not values:
        return 0.0, 1.0
    low, high = min(values), max(values)
    if high - low < 1e-9:
        return low - 0.5, high + 0.5
    pad = (high - low) * 0.05
    return low - pad, high + pad


def timeline(history: Sequence[Mapping[str, Any]], width: int = WIDTH, height: int = HEIGHT) -> Timeline:
    """The chart of ``history`` (rows as ``library_admin.history`` gives them, in any order)."""
    rows = sorted(history, key=lambda row: int(row["version"]))
    rewards = [row["reward"] for row in rows]
    seen = [v for r in rewards for v in (r["mean"], *(r.get("interval") or ())) if v is not None]
    low, high = _bounds(seen)
    plot_w, plot_h = width - LEFT - RIGHT, height - TOP - BOTTOM
    step = plot_w / max(1, len(rows) - 1)

    def y_of(value: float | None) -> float | None:
        return None if value is None else round(TOP + (high - value) / (high - low) * plot_h, 2)

    every = max(1, -(-len(rows) // MAX_NAMED))
    points = []
    for i, (row, reward) in enumerate(zip(rows, rewards, strict=True)):
        interval = reward.get("interval")
        lo, hi = (interval[0], interval[1]) if interval else (None, None)
        x = LEFT + (plot_w / 2 if len(rows) == 1 else i * step)
        points.append(
            Point(
                version=int(row["version"]),
                x=round(x, 2),
                labels=tuple(row.get("labels", ())),
                traces=int(reward["traces"]),
                mean=reward["mean"],
                low=lo,
                high=hi,
                y=y_of(reward["mean"]),
                low_y=y_of(lo),
                high_y=y_of(hi),
                named=bool(row.get("labels")) or i % every == 0 or i == len(rows) - 1,
            )
        )
    bands, run = [], []
    for point in [*points, None]:
        if point is not None and point.low_y is not None:
            run.append(point)
            continue
        if len(run) > 1:  # a lone interval is drawn as its error bar only
            upper = [f"{p.x},{p.high_y}" for p in run]
            lower = [f"{p.x},{p.low_y}" for p in reversed(run)]
            bands.append(" ".join(upper + lower))
        run = []
    line = " ".join(f"{p.x},{p.y}" for p in points if p.y is not None)
    ticks = tuple(
        (round(TOP + plot_h * k / (TICKS - 1), 2), f"{high - (high - low) * k / (TICKS - 1):.3g}") for k in range(TICKS)
    )
    return Timeline(width, height, tuple(points), tuple(bands), line, ticks, float(TOP + plot_h))
