"""The removal guard over plain data: how much of its parent one version may remove."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from grpod.workers.library import removal_refusal
from grpod.workers.operations import Operation


def deletes(*ids: int) -> list[Operation]:
    return [Operation("DELETE", experience_id=i) for i in ids]


def library(size: int) -> dict[int, str]:
    return {i: f"When {i}, do {i}." for i in range(1, size + 1)}


def test_a_version_may_remove_a_bounded_number_and_share_of_its_parent() -> None:
    twenty = library(20)
    assert removal_refusal(twenty, deletes(1, 2, 3), 3, 0.25) is None
    four = removal_refusal(twenty, deletes(1, 2, 3, 4), 3, 0.25)
    assert four is not None and "max_deletes_per_version (3)" in four
    eight = library(8)
    assert removal_refusal(eight, deletes(1, 2), 3, 0.25) is None  # 25% of 8 is 2
    three = removal_refusal(eight, deletes(1, 2, 3), 3, 0.25)
    assert three is not None and "max_removed_fraction (0.25) allows (2)" in three


def test_one_removal_is_always_allowed_and_unknown_or_repeated_ids_do_not_count() -> None:
    assert removal_refusal(library(1), deletes(1), 3, 0.25) is None  # rounded down to 0, but at least one
    assert removal_refusal(library(3), deletes(1, 1, 1, 99, 98), 3, 0.1) is None
    assert (
        removal_refusal(library(3), [Operation("UPDATE", "When x, do y.", 1), Operation("ADD", "When a, do b.")], 0, 0)
        is None
    )
    refused = removal_refusal(library(3), deletes(1, 2), 3, 0.1)
    assert refused is not None and "removes 2 of its parent's 3" in refused


def test_deleting_everything_it_is_shown_never_passes_the_defaults() -> None:
    for size in range(2, 60):
        assert removal_refusal(library(size), deletes(*range(1, size + 1)), 3, 0.25) is not None


@given(st.integers(min_value=1, max_value=200), st.data())
def test_what_passes_removes_within_both_bounds(size: int, data: st.DataObject) -> None:
    removed = data.draw(st.sets(st.integers(min_value=1, max_value=size)))
    max_deletes = data.draw(st.integers(min_value=0, max_value=10))
    fraction = data.draw(st.floats(min_value=0, max_value=1))
    passed = removal_refusal(library(size), deletes(*removed), max_deletes, fraction) is None
    within = not removed or (len(removed) <= max_deletes and len(removed) <= max(1, int(fraction * size)))
    assert passed == within
