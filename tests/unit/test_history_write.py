"""The consumer's history bookkeeping in Python, against brute force (no database).

``_new_points`` and ``_sort_points`` decide, per (run, key), which points are new (COPYed as
blocks or rows) and which go through the upsert; ``_roll_up`` computes the chunk roll-up of new
points with list operations. Each must agree with the plain point-by-point rules they stand for.
"""

from __future__ import annotations

import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from consumers.postgres import _new_points, _roll_up, _sort_points
from projections.db import CHUNK_STEPS
from projections.fold import HistoryColumn

NUMBERS = st.one_of(st.floats(), st.sampled_from([0.0, -0.0, 1.0, -1.0, math.inf, -math.inf, math.nan]),
                    st.integers(-3, 3))
VALUES = st.one_of(NUMBERS, NUMBERS, NUMBERS, st.none(), st.sampled_from(["x", True, [1, 2]]))


def order(value: float) -> tuple[int, float]:
    """PostgreSQL's float8 order: -inf < numbers < +inf < NaN (NaN equal to NaN)."""
    return (1, 0.0) if math.isnan(value) else (0, value)


def roll_up_truth(steps: list[int], values: list[float | None]) -> dict[int, tuple[Any, ...]]:
    """Per chunk: count, first and last step, lowest and highest (value, step), ties to the lowest step."""
    chunks: dict[int, list[tuple[int, float]]] = {}
    for step, value in zip(steps, values):
        if value is not None:
            chunks.setdefault(step // CHUNK_STEPS, []).append((step, value))
    out = {}
    for chunk, points in chunks.items():
        lo = min(points, key=lambda p: (order(p[1]), p[0]))
        hi = max(points, key=lambda p: (order(p[1]), -p[0]))
        out[chunk] = (len(points), points[0][0], points[-1][0], repr([lo[1], float(lo[0])]),
                      repr([hi[1], -float(hi[0])]))
    return out


@settings(max_examples=300)
@given(st.lists(st.tuples(st.integers(0, 3), NUMBERS.map(float) | st.none()), max_size=400), st.integers(0, 250))
def test_the_roll_up_of_new_points_is_the_point_by_point_one(gaps_and_values, start) -> None:
    steps, step = [], start
    for gap, _ in gaps_and_values:
        step += gap + 1
        steps.append(step)
    values = [v for _, v in gaps_and_values]
    got = {row[2]: (row[4], row[5], row[6], repr(row[7]), repr(row[8])) for row in _roll_up(1, "k", steps, values)}
    assert got == roll_up_truth(steps, values)
    assert all(row[:2] == (1, "k") and row[3] is True for row in _roll_up(1, "k", steps, values))


def test_a_chunk_of_ties_keeps_the_lowest_step_for_both_extremes() -> None:
    rows = _roll_up(1, "k", [5, 6, 7, 105], [2.0, 2.0, 2.0, math.nan])
    assert [(r[2], r[4], r[7], r[8]) for r in rows][0] == (0, 3, [2.0, 5.0], [2.0, -5.0])
    assert math.isnan(rows[1][7][0]) and rows[1][4] == 1


@st.composite
def columns(draw: st.DrawFn) -> list[HistoryColumn]:
    """What one batch's folds give for one key: columns of a few ranks, steps that may repeat."""
    out = []
    for _ in range(draw(st.integers(1, 4))):
        n = draw(st.integers(1, 12))
        values = draw(st.lists(VALUES, min_size=n, max_size=n))
        plain = all(type(v) is float and v == v for v in values) and draw(st.booleans())  # as the fold may say
        out.append(HistoryColumn("k", draw(st.sampled_from([0, 0, 0, 1, 2])),
                                 draw(st.lists(st.integers(0, 30), min_size=n, max_size=n)), values, plain))
    return out


@given(st.lists(st.tuples(st.integers(0, 150), st.floats(allow_nan=False)), min_size=1, max_size=300))
def test_a_plain_column_rolls_up_as_when_its_values_are_checked(gaps_and_values) -> None:
    steps, step = [], -1
    for gap, _ in gaps_and_values:
        step += gap + 1
        steps.append(step)
    values = [v for _, v in gaps_and_values]
    assert repr(_roll_up(1, "k", steps, values, True)) == repr(_roll_up(1, "k", steps, values))


def split_truth(cols: list[HistoryColumn], last: int | None) -> tuple[dict[int, Any], dict[int, Any]]:
    """Point by point: at a step the lowest rank wins, then the later write; numbers and nulls
    past ``last`` are new, the rest goes to the upsert."""
    kept: dict[int, tuple[Any, int]] = {}
    for c in cols:
        for step, value in zip(c.steps, c.values):
            if step not in kept or c.rank <= kept[step][1]:
                kept[step] = (value, c.rank)
    new, upsert = {}, {}
    for step, (value, rank) in kept.items():
        number = type(value) in (int, float)
        if (number or value is None) and (last is None or step > last):
            new[step] = (None if value is None else float(value), rank)
        else:
            upsert[step] = (float(value) if number else None, None if number or value is None else value, rank)
    return new, upsert


@settings(max_examples=300)
@given(columns(), st.one_of(st.none(), st.integers(-1, 31)))
def test_new_and_upserted_points_follow_the_point_by_point_rules(cols, last) -> None:
    import orjson

    staged: list[tuple[Any, ...]] = []
    fast = _new_points(cols, last)
    steps, values, rank = fast if fast is not None else _sort_points(7, "k", cols, last, staged)
    ranks = [rank] * len(steps) if type(rank) is int else rank
    assert steps == sorted(set(steps))
    new, upsert = split_truth(cols, last)
    assert repr({s: (v, r) for s, v, r in zip(steps, values, ranks)}) == repr(dict(sorted(new.items())))
    got = {row[2]: (row[3], None if row[4] is None else orjson.loads(row[4]), row[5]) for row in staged}
    assert len(got) == len(staged)  # a step once
    assert repr(dict(sorted(got.items()))) == repr(dict(sorted(upsert.items())))  # repr: NaN equals NaN
    assert all(row[:2] == (7, "k") for row in staged)
    if fast is not None:  # the list-operations path only takes what needs no upsert
        assert not upsert and type(rank) is int
