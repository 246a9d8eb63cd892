"""api.queries.ndjson_column: a scan's NDJSON lines built from orjson lists, byte for byte what
orjson writes for each row."""

from __future__ import annotations

import orjson
from hypothesis import given
from hypothesis import strategies as st

from api.queries import ndjson_column

points = st.lists(st.tuples(st.integers(0, 2**63 - 1),
                            st.none() | st.floats(allow_nan=False, allow_infinity=False)), max_size=50)


@given(st.text(min_size=1, max_size=20), points)
def test_lines_are_what_orjson_writes_for_each_row(key, pts):
    steps, vals = [s for s, _ in pts], [v for _, v in pts]
    expected = b"".join(orjson.dumps({"_step": s, key: v}, option=orjson.OPT_APPEND_NEWLINE) for s, v in pts)
    assert ndjson_column(key, steps, vals) == expected


def test_a_key_that_looks_like_json_is_escaped():
    got = ndjson_column('a"},{"b', [1, 2], [0.5, None])
    assert [orjson.loads(line) for line in got.splitlines()] == [{"_step": 1, 'a"},{"b': 0.5},
                                                                 {"_step": 2, 'a"},{"b': None}]
