"""consumers.app.split_partitions: a batch cut into groups of whole partitions (pure)."""

from __future__ import annotations

from collections import namedtuple

from hypothesis import given
from hypothesis import strategies as st

from consumers.app import split_partitions

Rec = namedtuple("Rec", "partition offset")


@given(st.lists(st.integers(0, 5), max_size=60), st.integers(1, 4))
def test_groups_hold_whole_partitions_in_order_and_nothing_else(partitions: list[int], groups: int) -> None:
    raw = [Rec(p, i) for i, p in enumerate(partitions)]
    out = split_partitions(raw, groups)  # type: ignore[arg-type]
    assert len(out) == min(groups, len(set(partitions)))
    assert all(out)  # no empty group
    assert sorted(r.offset for g in out for r in g) == list(range(len(raw)))
    owners = {r.partition: i for i, g in enumerate(out) for r in g}
    assert all(owners[r.partition] == i for i, g in enumerate(out) for r in g)  # a partition in one group
    for g in out:
        for p in {r.partition for r in g}:
            offsets = [r.offset for r in g if r.partition == p]
            assert offsets == sorted(offsets)


def test_partitions_are_balanced_by_record_count() -> None:
    raw = [Rec(0, i) for i in range(10)] + [Rec(1, i) for i in range(6)] + [Rec(2, i) for i in range(5)]
    sizes = sorted(len(g) for g in split_partitions(raw, 2))  # type: ignore[arg-type]
    assert sizes == [10, 11]
