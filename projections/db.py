"""PostgreSQL connection setup shared by everything that reads or writes the read models."""

from __future__ import annotations

import asyncpg
import orjson

from events.values import tag_nonfinite, untag_nonfinite

# Steps per history chunk (sql/0010_history_chunks.sql): the consumer keeps the roll-up, the API
# samples from it. Changing it needs a migration that rebuilds history_chunks.
CHUNK_STEPS = 100


async def init_connection(conn: asyncpg.Connection) -> None:
    """jsonb in and out as Python objects, with non-finite floats tagged (jsonb has no NaN)."""
    await conn.set_type_codec(
        "jsonb", schema="pg_catalog", format="text",
        encoder=lambda v: orjson.dumps(tag_nonfinite(v)).decode(),
        decoder=lambda s: untag_nonfinite(orjson.loads(s)),
    )


async def create_pool(database_url: str, max_size: int = 8, *, synchronous_commit: bool = True) -> asyncpg.Pool:
    settings = {} if synchronous_commit else {"synchronous_commit": "off"}
    return await asyncpg.create_pool(database_url, min_size=1, max_size=max_size, init=init_connection,
                                     server_settings=settings)
