"""``history_blocks`` (and ``chunk_stage``) rows as PostgreSQL's binary COPY stream, built with
C-speed list operations.

asyncpg's ``copy_records_to_table`` encodes an array element by element and asks for each
whether it is itself a sequence (an ``isinstance`` against ``collections.abc`` ABCs): ~0.4 us a
point, a sixth of the consumer's CPU once history went into blocks. Here a block's values become
big-endian doubles with ``array.array`` and are interleaved with their 4-byte lengths by strided
slice assignments: a handful of C calls per block, whatever its size.

Format: https://www.postgresql.org/docs/current/sql-copy.html (binary) and ``array_recv``.
"""

from __future__ import annotations

import struct
import sys
from array import array
from typing import Any

HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
TRAILER = struct.pack(">h", -1)
INT8_OID, FLOAT8_OID = 20, 701
COLUMNS = ["run_pk", "key", "first_step", "last_step", "n", "rank", "steps", "vals"]
_ROW_START = struct.Struct(">hiqi")  # field count; run_pk (length, value); key's length
_ROW_MIDDLE = struct.Struct(">iqiqiiii")  # first_step, last_step, n, rank: each length and value
_ARRAY_HEAD = struct.Struct(">iiiiii")  # field length; ndim, has nulls, element oid, size, lower bound
_NULL = struct.pack(">i", -1)
_SWAP = sys.byteorder == "little"


def _array(values: list[Any], typecode: str, oid: int) -> bytes:
    """A one-dimensional array of 8-byte elements without NULLs, as a COPY field (length first)."""
    n = len(values)
    raw = array(typecode, values)
    if _SWAP:
        raw.byteswap()
    data = raw.tobytes()
    body = bytearray(12 * n)  # each element: int32 length 8, then its 8 bytes
    body[3::12] = b"\x08" * n
    for j in range(8):
        body[4 + j::12] = data[j::8]
    return _ARRAY_HEAD.pack(20 + 12 * n, 1, 0, oid, n, 1) + bytes(body)


def encode(rows: list[tuple[Any, ...]]) -> bytes:
    """The COPY stream of ``(run_pk, key, first_step, last_step, n, rank, steps, vals)`` rows:
    steps a list of ints or None, vals a list of floats (no None; NaN and infinities are fine)."""
    parts = [HEADER]
    for run_pk, key, first, last, n, rank, steps, vals in rows:
        key_bytes = key.encode()
        parts.append(_ROW_START.pack(8, 8, run_pk, len(key_bytes)))
        parts.append(key_bytes)
        parts.append(_ROW_MIDDLE.pack(8, first, 8, last, 4, n, 4, rank))
        parts.append(_NULL if steps is None else _array(steps, "q", INT8_OID))
        parts.append(_array(vals, "d", FLOAT8_OID))
    parts.append(TRAILER)
    return b"".join(parts)


CHUNK_COLUMNS = ["run_pk", "key", "chunk", "fresh", "n", "first_step", "last_step", "lo", "hi"]
_PAIR = ">iiiIiiidid"  # a float8[] of two: length 44, ndim, has nulls, oid, size, lower bound, 2 x (8, value)
_CHUNK_REST = struct.Struct(">iqi?iiiqiq" + _PAIR[1:] + _PAIR[1:])


def encode_chunks(rows: list[tuple[Any, ...]]) -> bytes:
    """The COPY stream of ``chunk_stage`` rows ``(run_pk, key, chunk, fresh, n, first_step,
    last_step, [lo, lo order], [hi, hi order])`` (asyncpg's encoder took the array path, with an
    ``isinstance`` against the ABCs per element, for the two pairs of every row)."""
    parts = [HEADER]
    start, rest = _ROW_START.pack, _CHUNK_REST.pack
    for run_pk, key, chunk, fresh, n, first, last, (lo, lo_order), (hi, hi_order) in rows:
        key_bytes = key.encode()
        parts.append(start(9, 8, run_pk, len(key_bytes)))
        parts.append(key_bytes)
        parts.append(rest(8, chunk, 1, fresh, 4, n, 8, first, 8, last,
                          44, 1, 0, FLOAT8_OID, 2, 1, 8, lo, 8, lo_order,
                          44, 1, 0, FLOAT8_OID, 2, 1, 8, hi, 8, hi_order))
    parts.append(TRAILER)
    return b"".join(parts)
