"""SQL of the read API. Every value from a request is a bound parameter, never pasted into SQL."""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson

from events.codec import decode, to_jsonable
from events.errors import EventError

from .filters import Field, Params, Sort, compile_filter, decode_cursor, encode_cursor

RUN_COLUMNS = """entity, project, run_id, name, state, run_group, job_type, tags, config, summary, notes, host,
       created_at, updated_at, heartbeat_at, finished_at, exit_code, last_step, deleted, runtime"""
RUN_SQL = f"SELECT {RUN_COLUMNS} FROM runs WHERE entity = $1 AND project = $2 AND run_id = $3"


def run_dict(row: asyncpg.Record | dict[str, Any]) -> dict[str, Any]:
    """A runs row as the API serves it."""
    out = {k: row[k] for k in ("entity", "project", "run_id", "name", "state", "run_group", "job_type", "tags",
                                "config", "summary", "notes", "host", "created_at", "updated_at", "heartbeat_at",
                                "finished_at", "exit_code", "last_step", "deleted", "runtime")}
    out["group"] = out.pop("run_group")
    out["path"] = f"{out['entity']}/{out['project']}/{out['run_id']}"
    out["tags"] = list(out["tags"])
    for key in ("created_at", "updated_at", "heartbeat_at", "finished_at"):
        if out[key] is not None:
            out[key] = out[key].isoformat()
    return out


async def run(conn: asyncpg.Connection, entity: str, project: str, run_id: str) -> dict[str, Any] | None:
    row = await conn.fetchrow(RUN_SQL, entity, project, run_id)
    return None if row is None else run_dict(row)


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
  -- The page's step range, so the primary key serves the read instead of a scan of the whole run.
  AND h.step >= $3 AND h.step <= (SELECT max(step) FROM steps)
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


# -- projects -----------------------------------------------------------------------------------

PROJECT_COLUMNS = "entity, project, created_at, last_active, total_runs, total_compute, runs_by_state, contributors"


def project_dict(row: asyncpg.Record) -> dict[str, Any]:
    out = dict(row)
    out["name"] = out["project"]
    out["path"] = f"{out['entity']}/{out['project']}"
    out["runs_by_state"] = out["runs_by_state"] or {}
    out["contributors"] = sorted(out["contributors"] or [])
    for key in ("created_at", "last_active"):
        if out[key] is not None:
            out[key] = out[key].isoformat()
    return out


async def projects(conn: asyncpg.Connection, entity: str) -> list[dict[str, Any]]:
    rows = await conn.fetch(f"SELECT {PROJECT_COLUMNS} FROM projects WHERE entity = $1 ORDER BY project", entity)
    return [project_dict(r) for r in rows]


async def project(conn: asyncpg.Connection, entity: str, name: str) -> dict[str, Any] | None:
    row = await conn.fetchrow(f"SELECT {PROJECT_COLUMNS} FROM projects WHERE entity = $1 AND project = $2",
                              entity, name)
    return None if row is None else project_dict(row)


async def project_exists(conn: asyncpg.Connection, entity: str, name: str) -> bool:
    return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM runs WHERE entity = $1 AND project = $2)",
                                    entity, name))


# -- runs lists and groups ----------------------------------------------------------------------


def _runs_where(entity: str, project: str, filters: Any, include_deleted: bool) -> tuple[str, Params]:
    params = Params(entity, project)
    where = ["entity = $1", "project = $2"]
    if not include_deleted:
        where.append("NOT deleted")
    cond = compile_filter(filters, params)
    if cond != "TRUE":
        where.append(cond)
    return " AND ".join(where), params


async def runs_page(conn: asyncpg.Connection, entity: str, project: str, *, filters: Any, sort: Sort,
                    per_page: int, cursor: str | None, include_deleted: bool) -> dict[str, Any]:
    """One page of runs in ``sort`` order after ``cursor`` (keyset on (sort value, pk)), and the total."""
    where, params = _runs_where(entity, project, filters, include_deleted)
    total = await conn.fetchval(f"SELECT count(*) FROM runs WHERE {where}", *params.values)
    sort_expr = sort.expr(params)
    direction = "DESC" if sort.descending else "ASC"
    if cursor:
        value, pk = decode_cursor(sort, cursor)
        op = "<" if sort.descending else ">"
        where += f" AND ({sort_expr}, pk) {op} ({params.add(value, sort.cast)}, {params.add(pk, '::bigint')})"
    limit = params.add(per_page + 1, "::int")
    rows = await conn.fetch(
        f"SELECT {RUN_COLUMNS}, pk, {sort_expr} AS sort_value FROM runs WHERE {where} "
        f"ORDER BY sort_value {direction}, pk {direction} LIMIT {limit}",
        *params.values,
    )
    next_cursor = None
    if len(rows) > per_page:
        last = rows[per_page - 1]
        next_cursor = encode_cursor(sort, last["sort_value"], last["pk"])
    return {"runs": [run_dict(r) for r in rows[:per_page]], "next_cursor": next_cursor, "total": total}


async def run_groups(conn: asyncpg.Connection, entity: str, project: str, *, by: Field, filters: Any,
                     include_deleted: bool, limit: int) -> list[dict[str, Any]]:
    """Runs grouped by one field: per group value the count and min/mean/max of numeric summary keys.

    Grouping by tags puts a run in the group of each of its tags (untagged runs: value null)."""
    where, params = _runs_where(entity, project, filters, include_deleted)
    if by.kind == "tags":
        source, gexpr = "runs LEFT JOIN LATERAL unnest(runs.tags) AS t(tag) ON true", "t.tag"
    else:
        source, gexpr = "runs", by.expr(params)
    lim = params.add(limit, "::int")
    sql = f"""
WITH r AS (SELECT {gexpr} AS g, summary FROM {source} WHERE {where}),
top AS (SELECT g, count(*) AS n FROM r GROUP BY g ORDER BY count(*) DESC, g LIMIT {lim})
SELECT top.g, top.n, kv.key,
       min(kv.value::float8) AS min, avg(kv.value::float8) AS mean, max(kv.value::float8) AS max,
       count(kv.key) AS count
FROM top
LEFT JOIN r ON r.g IS NOT DISTINCT FROM top.g
LEFT JOIN LATERAL jsonb_each(r.summary) AS kv ON jsonb_typeof(kv.value) = 'number'
GROUP BY top.g, top.n, kv.key
ORDER BY top.n DESC, top.g, kv.key
"""
    groups: dict[Any, dict[str, Any]] = {}
    order: list[dict[str, Any]] = []
    for row in await conn.fetch(sql, *params.values):
        key = orjson.dumps(row["g"], default=str)
        group = groups.get(key)
        if group is None:
            group = groups[key] = {"value": row["g"], "count": row["n"], "summary": {}}
            order.append(group)
        if row["key"] is not None:
            group["summary"][row["key"]] = {"min": row["min"], "mean": row["mean"], "max": row["max"],
                                           "count": row["count"]}
    return order


# -- history: keys, sampling ---------------------------------------------------------------------

HISTORY_KEYS_SQL = """
WITH RECURSIVE k AS (
    (SELECT key FROM history WHERE run_pk = $1 ORDER BY key LIMIT 1)
    UNION ALL
    SELECT (SELECT h.key FROM history h WHERE h.run_pk = $1 AND h.key > k.key ORDER BY h.key LIMIT 1)
    FROM k WHERE k.key IS NOT NULL
)
SELECT key FROM k WHERE key IS NOT NULL
"""


async def history_keys(conn: asyncpg.Connection, pk: int) -> list[str]:
    """Every key the run's history holds (a skip scan of the primary key)."""
    return [r["key"] for r in await conn.fetch(HISTORY_KEYS_SQL, pk)]


SAMPLED_SQL = """
WITH bounds AS MATERIALIZED (  -- computed once: inlined, a planner without statistics re-ran it per row
    SELECT key, min(step) AS lo, max(step) AS hi, count(*) AS n
    FROM history WHERE run_pk = $1 AND key = ANY($2::text[]) AND value IS NOT NULL
    GROUP BY key
),
buckets AS (
    SELECT h.key,
           min(ARRAY[h.value, h.step::float8]) AS low,
           max(ARRAY[h.value, -h.step::float8]) AS high
    FROM history h JOIN bounds b ON b.key = h.key
    WHERE h.run_pk = $1 AND h.key = ANY($2::text[]) AND h.value IS NOT NULL
    GROUP BY h.key, CASE WHEN b.n <= $3 THEN h.step ELSE (h.step - b.lo) / ((b.hi - b.lo) / $4 + 1) END
)
SELECT DISTINCT key, step, value FROM (
    SELECT key, low[2]::bigint AS step, low[1] AS value FROM buckets
    UNION ALL
    SELECT key, (-high[2])::bigint AS step, high[1] AS value FROM buckets
) points
ORDER BY key, step
"""


async def history_sampled(conn: asyncpg.Connection, pk: int, keys: list[str], samples: int,
                          x_axis: str) -> list[dict[str, Any]]:
    """At most ``samples`` numeric points per key, keeping each bucket's lowest and highest value.

    A key with more points than ``samples`` has its step range cut into ``samples // 2`` equal
    buckets; of each the point with the lowest and the one with the highest value survive, so
    spikes stay visible. Values compare in PostgreSQL's float8 order: -inf lowest, then the
    numbers, +inf, and NaN highest (a NaN in a bucket is kept as its high point). Rows are merged
    by step: ``{"_step": s, key: value, ...}``; with ``x_axis`` other than ``_step`` each row also
    has that metric's value at the same step, and points at steps without it are left out.
    """
    buckets = max(1, samples // 2)
    records = await conn.fetch(SAMPLED_SQL, pk, keys, samples, buckets)
    by_step: dict[int, dict[str, Any]] = {}
    for r in records:
        by_step.setdefault(r["step"], {"_step": r["step"]})[r["key"]] = r["value"]
    if x_axis != "_step" and by_step:
        xs = await conn.fetch(
            "SELECT step, value, value_json FROM history WHERE run_pk = $1 AND key = $2 AND step = ANY($3::bigint[])",
            pk, x_axis, list(by_step),
        )
        found = {r["step"]: (r["value"] if r["value_json"] is None else r["value_json"]) for r in xs}
        by_step = {s: {**row, x_axis: found[s]} for s, row in by_step.items() if s in found}
    return [by_step[s] for s in sorted(by_step)]


# -- summary, transitions, alerts, events ---------------------------------------------------------


async def transitions(conn: asyncpg.Connection, pk: int) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """SELECT from_state, to_state, event_time, recorded_at, event_id, actor, reason, accepted
           FROM state_transitions WHERE run_pk = $1 ORDER BY id""", pk)
    return [{"from": r["from_state"], "to": r["to_state"], "at": r["event_time"].isoformat(),
             "recorded_at": r["recorded_at"].isoformat(), "event_id": str(r["event_id"]), "actor": r["actor"],
             "reason": r["reason"], "accepted": r["accepted"]} for r in rows]


async def alerts(conn: asyncpg.Connection, pk: int) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """SELECT title, text, level, wait_duration, event_time, recorded_at, event_id, actor, suppressed, reason
           FROM alerts WHERE run_pk = $1 ORDER BY id""", pk)
    return [{"title": r["title"], "text": r["text"], "level": r["level"], "wait_duration": r["wait_duration"],
             "at": r["event_time"].isoformat(), "recorded_at": r["recorded_at"].isoformat(),
             "event_id": str(r["event_id"]), "actor": r["actor"], "suppressed": r["suppressed"],
             "reason": r["reason"]} for r in rows]


async def events_page(conn: asyncpg.Connection, run_path: str, after: int,
                      page_size: int) -> tuple[list[dict[str, Any]], int | None]:
    """The run's stored events in store order (pos) after ``after``, decoded; and the next cursor."""
    rows = await conn.fetch(
        """SELECT pos, recorded_at, kafka_partition, kafka_offset, body FROM event_store
           WHERE run_path = $1 AND pos > $2 ORDER BY pos LIMIT $3""",
        run_path, after, page_size + 1)
    out = []
    for r in rows[:page_size]:
        try:
            event: dict[str, Any] = to_jsonable(decode(r["body"]))
        except EventError as e:  # stored events decode; this is a guard for a changed decoder
            event = {"undecodable": str(e)}
        event["pos"] = r["pos"]
        event["recorded_at"] = r["recorded_at"].isoformat()
        event["kafka"] = {"partition": r["kafka_partition"], "offset": r["kafka_offset"]}
        out.append(event)
    return out, (rows[page_size - 1]["pos"] if len(rows) > page_size else None)
