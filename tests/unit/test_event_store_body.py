"""How event_store.body keeps an event's bytes (projections.db.store_body / stored_body)."""

from __future__ import annotations

import cramjam
from hypothesis import given
from hypothesis import strategies as st

from projections.db import LZ4_MAGIC, STORE_COMPRESS_MIN, ZSTD_MAGIC, store_body, stored_body


@given(st.binary(max_size=3 * STORE_COMPRESS_MIN) | st.text(max_size=5000).map(str.encode))
def test_a_body_reads_back_as_it_was_stored(data: bytes) -> None:
    if data[:4] in (LZ4_MAGIC, ZSTD_MAGIC):
        return  # not JSON: an event body never starts with either
    kept = store_body(data)
    assert stored_body(kept) == data
    assert (kept == data) == (len(data) < STORE_COMPRESS_MIN)  # small bodies stay as they came


def test_a_packed_log_body_shrinks_and_json_is_never_taken_for_compressed() -> None:
    body = b'{"type":"run.log","payload":{"more":[' + b",".join(
        b'{"step":%d,"values":{"loss":%d.25}}' % (i, i) for i in range(200)) + b"]}}"
    kept = store_body(body)
    assert kept[:4] == LZ4_MAGIC and len(kept) * 3 < len(body)
    assert stored_body(body) == body  # an uncompressed (older, or small) body is returned as is


def test_bodies_stored_zstd_compressed_before_lz4_still_read_back() -> None:
    body = b'{"type":"run.log","payload":{"step":1,"values":{"loss":0.5}}}' * 100
    assert stored_body(bytes(cramjam.zstd.compress(body, level=1))) == body
