"""Merging groups that never reach their size: the decision, over plain data."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from hypothesis import given, settings
from hypothesis import strategies as st

from grpod.workers.grouping import Merge, MergeCandidate, Vector, merged_into, plan_merges

DAY = 86_400.0
G = 5


def _at(degrees: float, cohesion: float = 1.0) -> Vector:
    """A centroid in the plane: its direction, and its length (a mean of unit vectors is shorter
    the more its members spread)."""
    radians = math.radians(degrees)
    return np.array([math.cos(radians), math.sin(radians), 0.0], dtype=np.float32) * np.float32(cohesion)


def _group(
    group_id: int,
    degrees: float,
    size: int,
    *,
    idle: float = 2 * DAY,
    cohesion: float = 1.0,
    absorbable: bool = True,
    busy: bool = False,
) -> MergeCandidate:
    return MergeCandidate(group_id, _at(degrees, cohesion), size, idle, absorbable=absorbable, busy=busy)


def _plan(groups: list[MergeCandidate], *, wait: float = DAY, factor: float = 1.5) -> list[Merge]:
    return plan_merges(groups, threshold=0.5, group_size=G, wait_seconds=wait, factor=factor)


def _distance(degrees: float) -> float:
    return 1.0 - math.cos(math.radians(degrees))


def test_groups_within_the_threshold_merge_into_the_larger() -> None:
    # 55 degrees apart: a cosine distance of 0.43, within 0.5; both are large enough to wait for nothing.
    (merge,) = _plan([_group(1, 0, 6), _group(2, 55, 9)])
    assert (merge.survivor, merge.absorbed, merge.rule) == (2, 1, "close")
    assert math.isclose(merge.distance, _distance(55), rel_tol=1e-6)
    assert merge.to_json() == {"survivor": 2, "absorbed": 1, "distance": merge.distance, "rule": "close"}


def test_groups_beyond_the_threshold_stay_apart_when_neither_is_small() -> None:
    assert _plan([_group(1, 0, 6), _group(2, 65, 9)]) == []  # 0.58


def test_of_equal_sizes_the_older_survives() -> None:
    (merge,) = _plan([_group(8, 0, 6), _group(3, 40, 6)])
    assert (merge.survivor, merge.absorbed) == (3, 8)


def test_members_are_compared_with_the_other_centroid_not_the_centroids_with_each_other() -> None:
    # Centroids 55 degrees apart (0.43), but the joining group's members spread (its mean is 0.8
    # long): on average they sit 1 - 0.8 * cos(55) = 0.54 from the other centroid, beyond 0.5.
    # (Group 1 has history: it takes others in but joins none.)
    assert _plan([_group(1, 0, 9, absorbable=False), _group(2, 55, 6, cohesion=0.8)]) == []
    # Members that sit close together (0.95) are within it: 1 - 0.95 * cos(55) = 0.46.
    (merge,) = _plan([_group(1, 0, 9, absorbable=False), _group(2, 55, 6, cohesion=0.95)])
    assert (merge.survivor, merge.absorbed) == (1, 2)
    assert math.isclose(merge.distance, 1 - 0.95 * math.cos(math.radians(55)), rel_tol=1e-5)


def test_a_small_group_that_waited_joins_its_nearest_within_the_relaxed_threshold() -> None:
    # 70 degrees: 0.66, beyond 0.5 but within 0.5 * 1.5 = 0.75.
    (merge,) = _plan([_group(1, 0, 12), _group(2, 70, 2)])
    assert (merge.survivor, merge.absorbed, merge.rule) == (1, 2, "waited")
    assert math.isclose(merge.distance, _distance(70), rel_tol=1e-6)


def test_a_small_group_never_joins_beyond_the_relaxed_threshold() -> None:
    assert _plan([_group(1, 0, 12), _group(2, 78, 2)]) == []  # 0.79
    assert _plan([_group(1, 0, 12), _group(2, 70, 2)], factor=1.25) == []  # 0.66 beyond 0.625


def test_a_young_small_group_waits() -> None:
    assert _plan([_group(1, 0, 12), _group(2, 70, 2, idle=DAY - 1)]) == []
    assert len(_plan([_group(1, 0, 12), _group(2, 70, 2, idle=DAY - 1)], wait=0)) == 1


def test_a_group_of_g_or_more_is_not_small() -> None:
    assert _plan([_group(1, 0, 12), _group(2, 70, G)]) == []
    assert len(_plan([_group(1, 0, 12), _group(2, 70, G - 1)])) == 1


def test_a_group_whose_traces_expired_is_small_whatever_its_size() -> None:
    expired = MergeCandidate(2, _at(70), 2 * G, 2 * DAY, counting=G - 1)
    assert [(m.survivor, m.absorbed) for m in _plan([_group(1, 0, 12), expired])] == [(1, 2)]


def test_a_waiting_group_joins_its_nearest_even_a_young_one_and_the_larger_id_stays() -> None:
    (merge,) = _plan([_group(1, 0, 3), _group(2, 70, 1, idle=0.0)])
    assert (merge.survivor, merge.absorbed, merge.rule) == (1, 2, "waited")


def test_a_group_with_history_survives_and_two_with_history_never_merge() -> None:
    (merge,) = _plan([_group(1, 0, 2, absorbable=False), _group(2, 30, 9)])
    assert (merge.survivor, merge.absorbed) == (1, 2)
    assert _plan([_group(1, 0, 2, absorbable=False), _group(2, 30, 9, absorbable=False)]) == []


def test_a_busy_group_is_not_touched_and_a_group_nearest_to_it_waits() -> None:
    # Group 2 is nearest to the busy group (20 degrees) and within the threshold of group 3 too
    # (45 degrees): it waits rather than join its second nearest. (3 has history: it joins none.)
    groups = [_group(1, 0, 3, busy=True), _group(2, 20, 2), _group(3, 65, 9, absorbable=False)]
    assert _plan(groups) == [] and _plan(groups, wait=0) == []
    assert _plan([_group(1, 0, 3, busy=True), _group(2, 20, 9)]) == []
    # Without the running distillation: 2 joins 1, then the merged group joins 3.
    groups[0] = _group(1, 0, 3)
    assert [(m.survivor, m.absorbed) for m in _plan(groups)] == [(1, 2), (3, 1)]


def test_a_merged_group_is_judged_by_its_recomputed_centroid_so_chains_do_not_drift() -> None:
    # 1 and 2 are 55 degrees apart (0.43) and merge; 3 is 57 degrees from 2 (0.46) but far from the
    # merged whole, which lies near 1: it does not join by way of 2.
    groups = [_group(1, 0, 6), _group(2, 55, 1), _group(3, 112, 6)]
    assert [(m.survivor, m.absorbed) for m in _plan(groups)] == [(1, 2)]


def test_the_closest_pair_merges_first_and_a_merged_group_can_take_more() -> None:
    groups = [_group(1, 0, 10), _group(2, 30, 1), _group(3, -25, 1), _group(4, 180, 10)]
    merges = _plan(groups)
    assert [(m.survivor, m.absorbed) for m in merges] == [(1, 3), (1, 2)]


def test_a_group_that_grew_in_a_pass_makes_no_relaxed_join_in_the_same_pass() -> None:
    # 1 and 2 (small, 4 degrees apart) merge; the merged group is then 69 degrees (0.65) from the
    # big group 3, within the relaxed threshold, but it has just grown: it waits for the next pass.
    groups = [_group(1, 72, 1), _group(2, 68, 2), _group(3, 0, 12)]
    assert [(m.survivor, m.absorbed, m.rule) for m in _plan(groups, wait=0)] == [(2, 1, "close")]
    after = [_group(2, 69.3, 3), _group(3, 0, 12)]
    assert [(m.survivor, m.absorbed, m.rule) for m in _plan(after, wait=0)] == [(3, 2, "waited")]


def test_the_order_of_the_groups_does_not_matter() -> None:
    rng = random.Random(7)
    groups = [_group(i, rng.uniform(0, 360), rng.randint(1, 8), idle=rng.uniform(0, 2 * DAY)) for i in range(1, 40)]
    expected = _plan(groups)
    assert expected  # the set is dense enough to merge something
    for _ in range(5):
        rng.shuffle(groups)
        assert _plan(groups) == expected


def test_merged_into_follows_merges_of_merged_groups() -> None:
    merges = [Merge(2, 1, 0.1, "close"), Merge(3, 2, 0.2, "close"), Merge(5, 4, 0.3, "waited")]
    assert merged_into(merges) == {1: 3, 2: 3, 4: 5}
    assert merged_into([]) == {}


def test_fewer_than_two_groups_merge_nothing() -> None:
    assert _plan([]) == [] and _plan([_group(1, 0, 1)]) == []


@st.composite
def _domains(draw: st.DrawFn) -> list[MergeCandidate]:
    count = draw(st.integers(0, 14))
    return [
        MergeCandidate(
            group_id,
            np.array(draw(st.lists(st.floats(-1, 1), min_size=3, max_size=3)), dtype=np.float32) + np.float32(0.01),
            draw(st.integers(1, 9)),
            draw(st.sampled_from([0.0, DAY - 1, DAY, 3 * DAY])),
            absorbable=draw(st.booleans()),
            busy=draw(st.integers(0, 5)) == 0,
        )
        for group_id in range(1, count + 1)
    ]


@settings(max_examples=300, deadline=None)
@given(_domains(), st.randoms(use_true_random=False))
def test_merges_keep_their_promises(groups: list[MergeCandidate], rng: random.Random) -> None:
    merges = _plan(groups)
    by_id = {group.id: group for group in groups}
    gone: set[int] = set()
    grew: set[int] = set()
    for merge in merges:
        survivor, absorbed = by_id[merge.survivor], by_id[merge.absorbed]
        assert not {merge.survivor, merge.absorbed} & gone  # an absorbed group takes no further part
        assert absorbed.absorbable and not absorbed.busy and not survivor.busy
        assert merge.distance <= (0.5 if merge.rule == "close" else 0.75) + 1e-9
        if merge.rule == "waited":  # one of them small, waited, and not grown in this pass
            assert any(g.size < G and g.idle_seconds >= DAY and g.id not in grew for g in (survivor, absorbed))
        gone.add(merge.absorbed)
        grew.add(merge.survivor)
    shuffled = list(groups)
    rng.shuffle(shuffled)
    assert _plan(shuffled) == merges


@dataclass
class _Plain:
    sum: npt.NDArray[np.float64]
    size: int
    counting: int
    grew: bool = False


def _by_definition(
    groups: list[MergeCandidate], *, threshold: float, group_size: int, wait_seconds: float, factor: float
) -> list[tuple[int, int, str, float]]:
    """The rule as the docstring states it, recomputing everything before each merge (slow, plain)."""
    state = {
        g.id: _Plain(
            np.asarray(g.centroid, dtype=np.float64) * g.size, g.size, g.size if g.counting is None else g.counting
        )
        for g in groups
    }
    info = {g.id: g for g in groups}

    def similarity(i: int, j: int) -> float:
        a, b = state[i].sum, state[j].sum
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))

    merges: list[tuple[int, int, str, float]] = []
    while True:
        best: tuple[tuple[float, int, int], int, int, str] | None = None
        for i in sorted(state):
            others = [j for j in sorted(state) if j != i]
            if not info[i].absorbable or info[i].busy or not others:
                continue
            j = max(others, key=lambda j: (similarity(i, j), -j))
            if info[j].busy:
                continue
            distance = 1 - float(np.linalg.norm(state[i].sum)) / state[i].size * similarity(i, j)
            small = state[i].counting < group_size and info[i].idle_seconds >= wait_seconds and not state[i].grew
            rule = "close" if distance <= threshold else "waited" if small and distance <= threshold * factor else None
            if rule is not None and (best is None or (distance, min(i, j), max(i, j)) < best[0]):
                best = ((distance, min(i, j), max(i, j)), i, j, rule)
        if best is None:
            return merges
        (distance, _, _), i, j, rule = best
        keep_j = not info[j].absorbable or (state[j].size, -j) > (state[i].size, -i)
        survivor, gone = (j, i) if keep_j else (i, j)
        merges.append((survivor, gone, rule, distance))
        absorbed = state.pop(gone)
        kept = state[survivor]
        state[survivor] = _Plain(
            kept.sum + absorbed.sum, kept.size + absorbed.size, kept.counting + absorbed.counting, True
        )


def test_the_plan_is_the_rule_applied_one_merge_at_a_time() -> None:
    # The plan keeps nearest groups up to date incrementally; it must agree with recomputing all.
    for seed in range(30):
        rng = np.random.default_rng(seed)
        count = int(rng.integers(2, 40))
        topics = rng.normal(size=(4, 16))[rng.integers(0, 4, count)]
        directions = topics + rng.normal(scale=rng.uniform(0.5, 1.5), size=(count, 16))
        groups = [
            MergeCandidate(
                group_id,
                (directions[group_id - 1] / np.linalg.norm(directions[group_id - 1]) * rng.uniform(0.6, 1)).astype(
                    np.float32
                ),
                int(rng.integers(1, 8)),
                float(rng.choice([0.0, 2 * DAY])),
                absorbable=bool(rng.random() < 0.85),
                busy=bool(rng.random() < 0.1),
            )
            for group_id in range(1, count + 1)
        ]
        planned = plan_merges(groups, threshold=0.5, group_size=G, wait_seconds=DAY, factor=1.5)
        expected = _by_definition(groups, threshold=0.5, group_size=G, wait_seconds=DAY, factor=1.5)
        assert [(m.survivor, m.absorbed, m.rule) for m in planned] == [e[:3] for e in expected], seed
        assert all(math.isclose(m.distance, e[3], abs_tol=1e-9) for m, e in zip(planned, expected, strict=True))
