"""PostgreSQL connection setup shared by everything that reads or writes the read models."""

from __future__ import annotations

import asyncpg
import cramjam
import orjson

from events.values import tag_nonfinite, untag_nonfinite

# Steps per history chunk (sql/0010_history_chunks.sql): the consumer keeps the roll-up, the API
# samples from it. Changing it needs a migration that rebuilds history_chunks.
CHUNK_STEPS = 100

# Points per history block (sql/0011_history_blocks.sql): the most, and the fewest a write
# stores as a block (a (run, key) with fewer new points in a batch gets one row per point).
BLOCK_POINTS = 1000
MIN_BLOCK_POINTS = 16

# The points of history_blocks as rows (run_pk, key, step, value, value_json, rank), and every
# point of history: the rows of `history` and of the blocks, which never share a step. Use it
# as a table (`FROM {HISTORY_POINTS} h WHERE h.run_pk = $1 ...`): PostgreSQL pushes the run and
# key conditions into both branches. Reads of a step range of a long key use the blocks' own
# ranges instead (api.queries.HISTORY_SQL), as this would unnest every block of the key.
BLOCK_POINTS_SQL = """SELECT b.run_pk, b.key,
           CASE WHEN b.steps IS NULL THEN b.first_step + p.i - 1 ELSE b.steps[p.i] END AS step,
           p.value, NULL::jsonb AS value_json, b.rank
    FROM history_blocks b CROSS JOIN LATERAL unnest(b.vals) WITH ORDINALITY AS p(value, i)"""
HISTORY_POINTS = f"""(
    SELECT run_pk, key, step, value, value_json, rank FROM history
    UNION ALL
    {BLOCK_POINTS_SQL}
)"""


# Event bodies of 2 KiB and more (packed logs: ~18 KB for 100 rows of 10 floats) are kept in
# event_store.body compressed (sql/0012_event_store_zstd.sql): PostgreSQL's own pglz took ~300 us
# of its CPU per such body in the consumer's transaction. Since 2026-11-30 they are LZ4 blocks
# (15 us to compress, 4 us to decompress, a third of the size); before that zstd level 1 (90 us
# and 58 us, a sixth), still read. JSON never starts with either prefix ('{' or whitespace).
STORE_COMPRESS_MIN = 2048
LZ4_MAGIC = b"\xfeLZ4"  # then an LZ4 block with its length first (cramjam's compress_block)
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def store_body(data: bytes) -> bytes:
    """An event's wire bytes as event_store.body keeps them."""
    if len(data) < STORE_COMPRESS_MIN:
        return data
    return LZ4_MAGIC + bytes(cramjam.lz4.compress_block(data))


def stored_body(body: bytes) -> bytes:
    """The wire bytes of an event_store.body (compressed or not)."""
    head = body[:4]
    if head == LZ4_MAGIC:
        return bytes(cramjam.lz4.decompress_block(memoryview(body)[4:]))
    if head == ZSTD_MAGIC:
        return bytes(cramjam.zstd.decompress(body))
    return body


async def init_connection(conn: asyncpg.Connection) -> None:
    """jsonb in and out as Python objects, with non-finite floats tagged (jsonb has no NaN)."""
    await conn.set_type_codec(
        "jsonb", schema="pg_catalog", format="text",
        encoder=lambda v: orjson.dumps(tag_nonfinite(v)).decode(),
        decoder=lambda s: untag_nonfinite(orjson.loads(s)),
    )


async def create_pool(database_url: str, max_size: int = 8, *, synchronous_commit: bool = True) -> asyncpg.Pool:
    """A pool for the services. Their connections never change session state (no SET, LISTEN,
    advisory lock or open cursor: those live on connections of their own, as in replay and
    migrate), so a release skips asyncpg's reset query, one round trip per request or batch."""
    settings = {} if synchronous_commit else {"synchronous_commit": "off"}
    return await asyncpg.create_pool(database_url, min_size=1, max_size=max_size, init=init_connection,
                                     server_settings=settings, reset=_keep_session)


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Nothing to undo (see create_pool); asyncpg still rolls back an unfinished transaction."""
