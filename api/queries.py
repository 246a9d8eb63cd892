"""SQL of the read API. Every value from a request is a bound parameter, never pasted into SQL."""

from __future__ import annotations

from typing import Any

import asyncpg

RUN_SQL = """
SELECT entity, project, run_id, name, state, run_group, job_type, tags, config, summary, notes, host,
       created_at, updated_at, heartbeat_at, finished_at, exit_code, last_step, deleted
FROM runs WHERE entity = $1 AND project = $2 AND run_id = $3
"""


async def run(conn: asyncpg.Connection, entity: str, project: str, run_id: str) -> dict[str, Any] | None:
    row = await conn.fetchrow(RUN_SQL, entity, project, run_id)
    if row is None:
        return None
    out = dict(row)
    out["group"] = out.pop("run_group")
    out["path"] = f"{entity}/{project}/{run_id}"
    out["tags"] = list(out["tags"])
    for key in ("created_at", "updated_at", "heartbeat_at", "finished_at"):
        if out[key] is not None:
            out[key] = out[key].isoformat()
    return out


async def run_pk(conn: asyncpg.Connection, entity: str, project: str, run_id: str) -> int | None:
    return await conn.fetchval(  # type: ignore[no-any-return]
        "SELECT pk FROM runs WHERE entity = $1 AND project = $2 AND run_id = $3", entity, project, run_id
    )


HISTORY_SQL = """
WITH steps AS (
    SELECT DISTINCT step FROM history
    WHERE run_pk = $1 AND ($2::text[] IS NULL OR key = ANY($2)) AND step >= $3
      AND ($4::bigint IS NULL OR step <= $4)
    ORDER BY step LIMIT $5
)
SELECT h.step, h.key, h.value, h.value_json
FROM history h JOIN steps USING (step)
WHERE h.run_pk = $1 AND ($2::text[] IS NULL OR h.key = ANY($2))
ORDER BY h.step, h.key
"""


async def history_page(conn: asyncpg.Connection, pk: int, keys: list[str] | None, start: int,
                       max_step: int | None, page_size: int) -> tuple[list[dict[str, Any]], int | None]:
    """One page of rows ``{"_step": n, key: value, ...}`` and the step the next page starts at.

    With ``keys``, as in W&B's scan_history, only steps that have every requested key are rows.
    """
    records = await conn.fetch(HISTORY_SQL, pk, keys, start, max_step, page_size + 1)
    by_step: dict[int, dict[str, Any]] = {}
    for r in records:
        row = by_step.setdefault(r["step"], {"_step": r["step"]})
        row[r["key"]] = r["value"] if r["value_json"] is None else r["value_json"]
    steps = sorted(by_step)
    next_step = steps[page_size] if len(steps) > page_size else None
    rows = [by_step[s] for s in steps[:page_size]]
    if keys:
        rows = [row for row in rows if all(k in row for k in keys)]
    return rows, next_step
