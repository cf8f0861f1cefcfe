from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from grpod.schema.errors import SettingError
from grpod.workers.grouping import (
    DomainSettings,
    Member,
    SourceReward,
    cluster,
    cluster_quality,
    combine_rewards,
    joins_nearest,
    moved_centroid,
    readiness,
    validated_settings,
)

SETTINGS = DomainSettings(group_threshold=0.3, group_size=3, reward_spread=0.0, reward_combination="mean")


def _member(trace_id: str, *values: float, used: bool = False) -> Member:
    return Member(trace_id, tuple(SourceReward(f"s{i}", v, float(i)) for i, v in enumerate(values)), used)


def test_rewards_combine_as_configured() -> None:
    rewards = [SourceReward("thumbs", 1.0, 10.0), SourceReward("tests", 0.2, 30.0), SourceReward("grader", 0.6, 20.0)]
    assert combine_rewards(rewards, "mean") == pytest.approx(0.6)
    assert combine_rewards(rewards, "min") == 0.2
    assert combine_rewards(rewards, "max") == 1.0
    assert combine_rewards(rewards, "latest") == 0.2
    assert combine_rewards([], "mean") is None


def test_a_group_with_mixed_binary_rewards_is_ready() -> None:
    verdict = readiness([_member("a", 1), _member("b", 0), _member("c", 1)], SETTINGS)
    assert verdict.ready and verdict.rewarded == 3 and verdict.spread == 1.0


@pytest.mark.parametrize("value", [0.0, 1.0, 0.5])
def test_all_equal_rewards_carry_no_signal(value: float) -> None:
    verdict = readiness([_member(str(i), value) for i in range(6)], SETTINGS)
    assert not verdict.ready
    assert "differ by 0" in verdict.reason


def test_too_few_rewarded_traces() -> None:
    verdict = readiness([_member("a", 1), _member("b", 0), _member("c")], SETTINGS)
    assert not verdict.ready and verdict.rewarded == 2 and verdict.size == 3
    assert verdict.reason == "2 of 3 rewarded traces"


def test_traces_used_by_an_earlier_distillation_do_not_count() -> None:
    members = [_member("a", 1, used=True), _member("b", 0, used=True), _member("c", 1), _member("d", 0)]
    assert not readiness(members, SETTINGS).ready
    assert readiness([*members, _member("e", 1)], SETTINGS).ready


def test_continuous_rewards_must_differ_by_more_than_the_spread() -> None:
    strict = DomainSettings(group_size=3, reward_spread=0.2)
    assert not readiness([_member("a", 0.5), _member("b", 0.6), _member("c", 0.55)], strict).ready
    assert readiness([_member("a", 0.5), _member("b", 0.9), _member("c", 0.55)], strict).ready


def test_several_sources_are_combined_before_the_spread() -> None:
    # a: mean(1, 0) = 0.5; b and c: 0.5 -> no spread with "mean", spread with "max".
    members = [_member("a", 1, 0), _member("b", 0.5), _member("c", 0.5)]
    assert not readiness(members, SETTINGS).ready
    assert readiness(members, DomainSettings(group_size=3, reward_combination="max")).ready


def test_joining_and_moving_the_centroid() -> None:
    assert joins_nearest(0.2, 0.3) and joins_nearest(0.3, 0.3)
    assert not joins_nearest(0.31, 0.3) and not joins_nearest(None, 0.3)
    centroid = moved_centroid(np.array([1.0, 0.0], dtype=np.float32), 3, np.array([0.0, 1.0], dtype=np.float32))
    assert centroid.tolist() == pytest.approx([0.75, 0.25])


def test_cluster_separates_directions_and_keeps_near_ones_together() -> None:
    def unit(angle: float) -> np.ndarray:
        return np.array([math.cos(angle), math.sin(angle)], dtype=np.float32)

    vectors = [unit(0.0), unit(0.05), unit(math.pi / 2), unit(0.1), unit(math.pi / 2 + 0.05)]
    labels = cluster(vectors, threshold=0.05)
    assert labels == [0, 0, 1, 0, 1]
    quality = cluster_quality(labels, ["x", "x", "y", "x", "y"])
    assert (quality.purity, quality.completeness, quality.groups) == (1.0, 1.0, 2)


def test_cluster_quality_penalises_splits_and_merges() -> None:
    split = cluster_quality([0, 1, 2, 3], ["x", "x", "y", "y"])
    assert split.purity == 1.0 and split.completeness == 0.5
    merged = cluster_quality([0, 0, 0, 0], ["x", "x", "y", "y"])
    assert merged.purity == 0.5 and merged.completeness == 1.0


@given(st.floats(0.0, 1.0), st.integers(2, 20))
def test_readiness_never_fires_on_equal_rewards(value: float, count: int) -> None:
    members = [_member(str(i), value) for i in range(count)]
    assert not readiness(members, DomainSettings(group_size=2)).ready


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0.0, 5, 0.0, "mean"), "group_threshold"),
        ((2.0, 5, 0.0, "mean"), "group_threshold"),
        ((0.3, 1, 0.0, "mean"), "group_size"),
        ((0.3, 5.5, 0.0, "mean"), "group_size"),
        ((0.3, 5, -1.0, "mean"), "reward_spread"),
        ((0.3, 5, float("nan"), "mean"), "reward_spread"),
        ((0.3, 5, 0.0, "median"), "reward_combination"),
    ],
)
def test_settings_are_validated(args: tuple[object, object, object, object], message: str) -> None:
    with pytest.raises(SettingError, match=message):
        validated_settings(*args)


def test_settings_round_trip_and_defaults() -> None:
    assert DomainSettings.from_json({}) == DomainSettings()
    custom = DomainSettings(0.25, 8, 0.1, "min")
    assert DomainSettings.from_json(custom.to_json()) == custom
