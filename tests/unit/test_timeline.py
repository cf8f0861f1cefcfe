"""The dashboard's timeline: each version's mean reward and 95% interval placed on the chart."""

from __future__ import annotations

from typing import Any

from grpod.daemon.api.timeline import BOTTOM, HEIGHT, LEFT, RIGHT, TOP, WIDTH, timeline


def _row(version: int, mean: float | None, interval: tuple[float, float] | None, labels: tuple[str, ...] = ()) -> Any:
    traces = 0 if mean is None else (1 if interval is None else 10)
    return {
        "version": version,
        "labels": list(labels),
        "reward": {"traces": traces, "mean": mean, "interval": list(interval) if interval else None},
    }


def test_versions_run_left_to_right_oldest_first_and_higher_rewards_sit_higher() -> None:
    chart = timeline([_row(2, 0.4, (0.3, 0.5), ("production",)), _row(1, 0.8, (0.7, 0.9))])
    first, second = chart.points
    assert (first.version, second.version) == (1, 2)
    assert first.x == LEFT and second.x == WIDTH - RIGHT
    assert first.y is not None and second.y is not None and first.y < second.y  # SVG's y grows downwards
    assert second.labels == ("production",)
    # The axis spans the intervals with a margin: nothing is drawn outside the plot.
    for point in chart.points:
        assert point.high_y is not None and point.low_y is not None
        assert TOP <= point.high_y < point.y < point.low_y <= HEIGHT - BOTTOM  # type: ignore[operator]
    assert chart.baseline == HEIGHT - BOTTOM
    marks = [float(text) for _, text in chart.ticks]
    assert marks == sorted(marks, reverse=True) and marks[0] > 0.9 and marks[-1] < 0.3


def test_one_band_per_run_of_neighbouring_intervals_and_none_through_a_gap() -> None:
    rows = [
        _row(1, 0.5, (0.4, 0.6)),
        _row(2, 0.6, (0.5, 0.7)),
        _row(3, None, None),  # no rewarded trace: no dot, and the band breaks
        _row(4, 0.7, (0.6, 0.8)),
        _row(5, 0.65, None),  # one rewarded trace: a dot, no interval
        _row(6, 0.6, (0.5, 0.7)),
        _row(7, 0.62, (0.55, 0.69)),
    ]
    chart = timeline(rows)
    assert len(chart.bands) == 2  # versions 1-2 and 6-7; version 4's lone interval is its error bar
    assert all(len(band.split()) == 4 for band in chart.bands)  # two points up, two back
    assert chart.points[2].y is None and chart.points[4].low_y is None
    assert len(chart.line.split()) == 6  # every version with a mean


def test_a_single_version_or_equal_rewards_still_make_a_readable_chart() -> None:
    (only,) = timeline([_row(1, 1.0, (1.0, 1.0))]).points
    assert only.x == LEFT + (WIDTH - LEFT - RIGHT) / 2
    assert only.y is not None and TOP < only.y < HEIGHT - BOTTOM  # the axis opens around a flat reward
    empty = timeline([])
    assert empty.points == () and empty.bands == () and empty.line == ""


def test_a_long_history_names_some_versions_under_the_axis_and_every_labelled_one() -> None:
    rows = [_row(v, 0.5, None, ("production",) if v == 37 else ()) for v in range(1, 101)]
    named = [p.version for p in timeline(rows).points if p.named]
    assert 37 in named and named[0] == 1 and named[-1] == 100
    assert len(named) <= 18  # 16 evenly spaced, the labelled one and the newest
    assert all(p.named for p in timeline(rows[:10]).points)
