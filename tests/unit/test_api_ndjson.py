"""api.queries.column_objects: a scan's rows built from orjson lists, byte for byte what orjson
writes for each row (NDJSON lines, or the items of a JSON array)."""

from __future__ import annotations

import orjson
from hypothesis import given
from hypothesis import strategies as st

from api.queries import column_objects

points = st.lists(st.tuples(st.integers(0, 2**63 - 1),
                            st.none() | st.floats(allow_nan=False, allow_infinity=False)), max_size=50)


@given(st.text(min_size=1, max_size=20), points)
def test_lines_are_what_orjson_writes_for_each_row(key, pts):
    steps, vals = [s for s, _ in pts], [v for _, v in pts]
    rows = [{"_step": s, key: v} for s, v in pts]
    assert column_objects(key, steps, vals, b"\n") + (b"\n" if pts else b"") == b"".join(
        orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in rows)
    assert b"[" + column_objects(key, steps, vals, b",") + b"]" == orjson.dumps(rows)


def test_a_key_that_looks_like_json_is_escaped():
    got = column_objects('a"},{"b', [1, 2], [0.5, None], b"\n")
    assert [orjson.loads(line) for line in got.splitlines()] == [{"_step": 1, 'a"},{"b': 0.5},
                                                                 {"_step": 2, 'a"},{"b': None}]
