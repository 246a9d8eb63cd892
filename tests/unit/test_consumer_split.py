"""consumers.app: a batch cut into groups of whole partitions, and into slices by bytes (pure)."""

from __future__ import annotations

from collections import namedtuple

from hypothesis import given
from hypothesis import strategies as st

from consumers.app import byte_slices, split_partitions

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


Val = namedtuple("Val", "offset value")


@given(st.lists(st.integers(0, 50), max_size=60), st.integers(1, 100))
def test_byte_slices_keep_order_and_stay_under_the_limit_unless_one_record_is_bigger(sizes: list[int],
                                                                                   limit: int) -> None:
    raw = [Val(i, b"x" * n) for i, n in enumerate(sizes)]
    out = byte_slices(raw, limit)  # type: ignore[arg-type]
    assert [r for part in out for r in part] == raw  # everything, once, in order
    assert all(part for part in out)
    for part in out:
        assert sum(len(r.value) for r in part) <= limit or len(part) == 1
    for a, b in zip(out, out[1:]):  # greedy: a slice ends only where the next record would not fit
        assert sum(len(r.value) for r in a) + len(b[0].value) > limit
