"""Schema migrations: plain versioned SQL files in ``projections/sql``, applied in order.

Each file ``NNNN_name.sql`` runs in its own transaction together with its row in
``schema_migrations``; an advisory lock makes concurrent runs wait instead of racing, so
running ``migrate`` twice (or from two processes) is harmless.
"""

from __future__ import annotations

from importlib import resources

import asyncpg

LOCK_ID = 0x72756E6C6F67  # "runlog"


def available() -> list[tuple[int, str, str]]:
    """(version, name, sql) for every migration file, in version order."""
    files = resources.files("projections").joinpath("sql")
    found = []
    for entry in files.iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:4].isdigit():
            found.append((int(name[:4]), name[:-4], entry.read_text()))
    return sorted(found)


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Apply the migrations not yet recorded; return the names applied now."""
    applied_now: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", LOCK_ID)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version    integer     PRIMARY KEY,
                   name       text        NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, name, sql in available():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name)
            applied_now.append(name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_ID)
    return applied_now


async def migrate_url(database_url: str) -> list[str]:
    conn = await asyncpg.connect(database_url)
    try:
        return await migrate(conn)
    finally:
        await conn.close()
