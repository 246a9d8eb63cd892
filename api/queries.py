"""SQL of the read API. Every value from a request is a bound parameter, never pasted into SQL."""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson

from events.codec import decode, to_jsonable
from events.errors import EventError
from events.values import tag_nonfinite
from projections.db import CHUNK_STEPS, HISTORY_POINTS, stored_body

from .filters import Field, Params, Sort, compile_filter, decode_cursor, encode_cursor
from .runs_index import RunsIndex

RUN_COLUMNS = """entity, project, run_id, name, state, run_group, job_type, tags, config, summary, notes, host,
       created_at, updated_at, heartbeat_at, finished_at, exit_code, last_step, deleted, runtime"""
RUN_SQL = f"SELECT {RUN_COLUMNS} FROM runs WHERE entity = $1 AND project = $2 AND run_id = $3"


# The runs list takes config, summary and host as the stored JSON text and hands it to orjson as
# is: decoding, untagging, re-tagging and re-encoding them was a fifth of a runs page.
LIST_COLUMNS = RUN_COLUMNS.replace("config, summary, notes, host,",
                                   "config::text AS config, summary::text AS summary, notes, host::text AS host,")


def run_dict(row: asyncpg.Record | dict[str, Any]) -> dict[str, Any]:
    """A runs row as the API serves it (JSON columns read as text become orjson Fragments)."""
    out = {k: row[k] for k in ("entity", "project", "run_id", "name", "state", "run_group", "job_type", "tags",
                                "config", "summary", "notes", "host", "created_at", "updated_at", "heartbeat_at",
                                "finished_at", "exit_code", "last_step", "deleted", "runtime")}
    out["group"] = out.pop("run_group")
    out["path"] = f"{out['entity']}/{out['project']}/{out['run_id']}"
    out["tags"] = list(out["tags"])
    for key in ("config", "summary", "host"):
        if isinstance(out[key], str):
            out[key] = orjson.Fragment(out[key])
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


# Each key's next points from `start` in `history`: one range of the primary key per key, in step
# order, handed over as three arrays per key (asyncpg decodes arrays in C, ~2x faster than as rows).
HISTORY_SQL = """
SELECT k.key, h.steps, h.vals, h.jsons
FROM unnest($2::text[]) AS k(key)
CROSS JOIN LATERAL (
    SELECT array_agg(step) AS steps, array_agg(value) AS vals, array_agg(value_json::text) AS jsons
    FROM (SELECT step, value, value_json FROM history
          WHERE run_pk = $1 AND key = k.key AND step >= $3 AND ($4::bigint IS NULL OR step <= $4)
          ORDER BY step LIMIT $5) page
) h
WHERE h.steps IS NOT NULL
"""

# ... and the blocks that hold each key's next points (sql/0011_history_blocks.sql), whole, in
# step order: a key's blocks cover disjoint ranges, so the first block reaching `start` and then
# blocks until $5 points past it are enough. `taken` sums the blocks' sizes without reading
# their arrays; only the chosen blocks are read.
HISTORY_BLOCKS_SQL = """
SELECT k.key, b.first_step, b.steps, b.vals
FROM unnest($2::text[]) AS k(key)
CROSS JOIN LATERAL (
    SELECT w.first_step FROM (
        SELECT first_step, sum(n) OVER (ORDER BY first_step) - n - first_value(n) OVER (ORDER BY first_step) AS taken
        FROM history_blocks
        WHERE run_pk = $1 AND key = k.key AND last_step >= $3 AND ($4::bigint IS NULL OR first_step <= $4)
    ) w WHERE w.taken < $5
) chosen
JOIN history_blocks b ON b.run_pk = $1 AND b.key = k.key AND b.first_step = chosen.first_step
ORDER BY k.key, b.first_step
"""


def json_value(value: float | None, value_json: str | None) -> Any:
    """A history value ready for orjson: a finite float, a ``$f`` tag, or the stored JSON as is."""
    if value_json is not None:
        return orjson.Fragment(value_json)  # stored tagged already: no decode, no re-encode
    if value is None or math.isfinite(value):
        return value
    return tag_nonfinite(value)


def _plain(vals: list[float | None]) -> bool:
    """Every value is a finite float or None (JSON-ready as it is)."""
    try:
        return all(map(math.isfinite, vals))
    except TypeError:  # a None among them
        return all(v is None or math.isfinite(v) for v in vals)


KeyPoints = tuple[str, list[int], list[float | None], list[str | None] | None]  # jsons None: all None


async def _key_points(conn: asyncpg.Connection, pk: int, keys: list[str], start: int, max_step: int | None,
                      limit: int) -> list[KeyPoints]:
    """Each key's first ``limit`` points from ``start`` (up to ``max_step``), from ``history`` and
    the blocks together, in step order; keys without such points are left out."""
    found: dict[str, KeyPoints] = {}
    for key, steps, vals, jsons in await conn.fetch(HISTORY_SQL, pk, keys, start, max_step, limit):
        found[key] = (key, steps, vals, None if jsons.count(None) == len(jsons) else jsons)
    blocks: dict[str, tuple[list[int], list[float | None]]] = {}
    for key, first, block_steps, block_vals in await conn.fetch(HISTORY_BLOCKS_SQL, pk, keys, start, max_step, limit):
        steps, vals = blocks.setdefault(key, ([], []))
        steps += range(first, first + len(block_vals)) if block_steps is None else block_steps
        vals += block_vals
    for key, (steps, vals) in blocks.items():
        lo = bisect.bisect_left(steps, start)
        hi = len(steps) if max_step is None else bisect.bisect_right(steps, max_step)
        steps, vals = steps[lo:hi][:limit], vals[lo:hi][:limit]
        if not steps:
            continue
        if key not in found:
            found[key] = (key, steps, vals, None)
            continue
        _, own_steps, own_vals, own_jsons = found[key]  # points in both tables: merge by step
        merged = sorted(zip(own_steps + steps, own_vals + vals,
                            (own_jsons or [None] * len(own_steps)) + [None] * len(steps)))[:limit]
        jsons = [m[2] for m in merged]
        found[key] = (key, [m[0] for m in merged], [m[1] for m in merged],
                      None if jsons.count(None) == len(jsons) else jsons)
    return [found[k] for k in keys if k in found]


async def history_ndjson(conn: asyncpg.Connection, pk: int, keys: list[str] | None, start: int,
                         max_step: int | None, page_size: int) -> tuple[bytes, int | None]:
    """A page of history (:func:`_history_encoded`) as NDJSON bytes: what ``orjson.dumps`` writes
    for each row, a line each. One key of plain numbers (a scan's hot path) skips the rows: see
    :func:`column_objects`."""
    lines, next_step = await _history_encoded(conn, pk, keys, start, max_step, page_size, b"\n")
    return (lines + b"\n" if lines else lines), next_step


async def history_json(conn: asyncpg.Connection, pk: int, keys: list[str] | None, start: int,
                       max_step: int | None, page_size: int) -> tuple[orjson.Fragment, int | None]:
    """A page of history (:func:`_history_encoded`) as one JSON array, ready to embed in a response."""
    objects, next_step = await _history_encoded(conn, pk, keys, start, max_step, page_size, b",")
    return orjson.Fragment(b"[" + objects + b"]"), next_step


async def _history_encoded(conn: asyncpg.Connection, pk: int, keys: list[str] | None, start: int,
                           max_step: int | None, page_size: int, sep: bytes) -> tuple[bytes, int | None]:
    """One page of rows ``{"_step": n, key: value, ...}`` as JSON objects separated by ``sep``,
    and the step the next page starts at.

    Values are encoded as :func:`json_value` makes them. Each key's next ``page_size + 1`` points
    are read; the page is the first ``page_size`` steps of their union up to the lowest last step
    among keys that had more (beyond it a key may have unread points). With ``keys``, as in W&B's
    scan_history, only steps that have every requested key are rows.
    """
    wanted = keys if keys else await history_keys(conn, pk)
    per_key = await _key_points(conn, pk, wanted, start, max_step, page_size + 1)
    if len(per_key) == 1 and per_key[0][3] is None and _plain(per_key[0][2]):
        key, steps, vals, _ = per_key[0]
        n = min(len(steps), page_size)
        objects = column_objects(key, steps[:n], vals[:n], sep)
        next_step = steps[page_size] if len(steps) > page_size else None
    else:
        rows, next_step = _page_rows(per_key, keys, page_size)
        objects = sep.join([orjson.dumps(row) for row in rows])
    return objects, next_step


_ROW_START = b'{"_step":'


def column_objects(key: str, steps: list[int], vals: list[float | None], sep: bytes) -> bytes:
    """The JSON objects ``{"_step": s, key: v}`` of one key's points (finite floats or None), as
    orjson writes them, joined by ``sep``: two orjson lists cut at their commas, interleaved
    with the objects' fixed parts by slice assignment. A handful of C calls for a page, where a
    dict and a ``dumps`` per point had been most of a scan's time."""
    n = len(steps)
    if not n:
        return b""
    parts: list[bytes] = [b""] * (4 * n)
    parts[0::4] = orjson.dumps(steps)[1:-1].split(b",")
    parts[1::4] = [b"," + orjson.dumps(key) + b":"] * n
    parts[2::4] = orjson.dumps(vals)[1:-1].split(b",")
    parts[3::4] = [b"}" + sep + _ROW_START] * n
    return _ROW_START + b"".join(parts)[:-len(sep) - len(_ROW_START)]


def _page_rows(per_key: list[KeyPoints], keys: list[str] | None, page_size: int) -> tuple[list[dict[str, Any]], int | None]:
    """The rows of a page from each key's points (see :func:`_history_encoded`)."""
    if len(per_key) == 1:  # one key (the hot path of a scan): its points are the rows, in step order
        key, steps, vals, jsons = per_key[0]
        n = min(len(steps), page_size)
        if jsons is None and _plain(vals):
            rows = [{"_step": step, key: value} for step, value in zip(steps[:n], vals[:n])]
        else:
            rows = [{"_step": step, key: json_value(value, value_json)}
                    for step, value, value_json in zip(steps[:n], vals[:n], jsons or [None] * n)]
        return rows, (steps[page_size] if len(steps) > page_size else None)
    full = [steps[-1] for _, steps, _, _ in per_key if len(steps) > page_size]
    bound = min(full) if full else None  # the union is complete up to here
    by_step: dict[int, dict[str, Any]] = {}
    isfinite = math.isfinite
    for key, steps, vals, jsons in per_key:
        for step, value, value_json in zip(steps, vals, jsons or [None] * len(steps)):
            if bound is not None and step > bound:
                break
            row = by_step.get(step)
            if row is None:
                row = by_step[step] = {"_step": step}
            if value_json is None and (value is None or isfinite(value)):
                row[key] = value
            else:
                row[key] = json_value(value, value_json)
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


@dataclass(frozen=True)
class RunsPageSQL:
    """The statements of one runs page: ``page`` returns the rows (with a ``total`` column when
    ``counts_in_page``); ``count`` counts the matching runs on its own."""

    page: str
    page_args: list[Any]
    count: str
    count_args: list[Any]
    counts_in_page: bool


def runs_page_sql(entity: str, project: str, *, filters: Any, sort: Sort, per_page: int, cursor: str | None,
                  include_deleted: bool) -> RunsPageSQL:
    """With filters, the matching runs are found in ONE scan that yields both the total and the
    page (the filter's jsonb lookups are most of the cost; a second statement for the count
    doubled it). Without filters, the newest-first page and the count come from the
    ``runs_live_created`` index instead."""
    where, params = _runs_where(entity, project, filters, include_deleted)
    count_args = list(params.values)
    count = f"SELECT count(*) FROM runs WHERE {where}"
    sort_expr = sort.expr(params)
    direction = "DESC" if sort.descending else "ASC"
    after = ""
    if cursor:
        value, pk = decode_cursor(sort, cursor)
        op = "<" if sort.descending else ">"
        after = f"WHERE (sort_value, pk) {op} ({params.add(value, sort.cast)}, {params.add(pk, '::bigint')})"
    limit = params.add(per_page + 1, "::int")
    order = f"ORDER BY sort_value {direction}, pk {direction}"
    if filters is None and sort_expr == "created_at":
        page = (f"SELECT {LIST_COLUMNS}, pk, sort_value "
                f"FROM (SELECT *, created_at AS sort_value FROM runs WHERE {where}) r {after} {order} LIMIT {limit}")
        return RunsPageSQL(page, params.values, count, count_args, counts_in_page=False)
    page = f"""WITH matched AS MATERIALIZED (SELECT pk, {sort_expr} AS sort_value FROM runs WHERE {where}),
                 page AS (SELECT pk, sort_value FROM matched {after} {order} LIMIT {limit})
            SELECT (SELECT count(*) FROM matched) AS total, {LIST_COLUMNS}, pk, sort_value
            FROM page JOIN runs USING (pk) {order}"""
    return RunsPageSQL(page, params.values, count, count_args, counts_in_page=True)


async def runs_page(conn: asyncpg.Connection, entity: str, project: str, *, filters: Any, sort: Sort,
                    per_page: int, cursor: str | None, include_deleted: bool,
                    index: RunsIndex | None = None) -> dict[str, Any]:
    """One page of runs in ``sort`` order after ``cursor`` (keyset on (sort value, pk)), and the total:
    from ``index`` when it answers this filter and order, else by the SQL of :func:`runs_page_sql`."""
    if index is not None:
        page = await index.page(conn, entity, project, filters=filters, sort=sort, per_page=per_page,
                                cursor=cursor, include_deleted=include_deleted)
        if page is not None:
            return page
    sql = runs_page_sql(entity, project, filters=filters, sort=sort, per_page=per_page, cursor=cursor,
                        include_deleted=include_deleted)
    rows = await conn.fetch(sql.page, *sql.page_args)
    if sql.counts_in_page and rows:
        total = rows[0]["total"]
    else:  # no row to carry it (a page past the end), or the index serves a separate count
        total = await conn.fetchval(sql.count, *sql.count_args)
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
), b AS (
    (SELECT key FROM history_blocks WHERE run_pk = $1 ORDER BY key LIMIT 1)
    UNION ALL
    SELECT (SELECT h.key FROM history_blocks h WHERE h.run_pk = $1 AND h.key > b.key ORDER BY h.key LIMIT 1)
    FROM b WHERE b.key IS NOT NULL
)
SELECT key FROM k WHERE key IS NOT NULL
UNION
SELECT key FROM b WHERE key IS NOT NULL
ORDER BY key
"""


async def history_keys(conn: asyncpg.Connection, pk: int) -> list[str]:
    """Every key the run's history holds (a skip scan of each table's primary key)."""
    return [r["key"] for r in await conn.fetch(HISTORY_KEYS_SQL, pk)]


SAMPLED_SQL = """
WITH bounds AS MATERIALIZED (  -- computed once: inlined, a planner without statistics re-ran it per row
    SELECT key, min(step) AS lo, max(step) AS hi, count(*) AS n
    FROM {points} h WHERE run_pk = $1 AND key = ANY($2::text[]) AND value IS NOT NULL
    GROUP BY key
),
buckets AS (
    SELECT h.key,
           min(ARRAY[h.value, h.step::float8]) AS low,
           max(ARRAY[h.value, -h.step::float8]) AS high
    FROM {points} h JOIN bounds b ON b.key = h.key
    WHERE h.run_pk = $1 AND h.key = ANY($2::text[]) AND h.value IS NOT NULL
    GROUP BY h.key, CASE WHEN b.n <= $3 THEN h.step ELSE (h.step - b.lo) / ((b.hi - b.lo) / $4 + 1) END
)
SELECT DISTINCT key, step, value FROM (
    SELECT key, low[2]::bigint AS step, low[1] AS value FROM buckets
    UNION ALL
    SELECT key, (-high[2])::bigint AS step, high[1] AS value FROM buckets
) points
ORDER BY key, step
""".format(points=HISTORY_POINTS)


# Each key's first and last step with a number, and its count of numbers up to $3 (enough to
# tell whether it has more than the samples asked for): three short reads of the primary key
# instead of an aggregate over every chunk (10,000 for a 1M-point key, ~2.5 ms).
CHUNK_BOUNDS_SQL = """
SELECT * FROM (
    SELECT k.key,
           (SELECT first_step FROM history_chunks
            WHERE run_pk = $1 AND key = k.key AND n > 0 ORDER BY chunk LIMIT 1) AS lo,
           (SELECT last_step FROM history_chunks
            WHERE run_pk = $1 AND key = k.key AND n > 0 ORDER BY chunk DESC LIMIT 1) AS hi,
           (SELECT sum(n)::bigint FROM (SELECT n FROM history_chunks
                                        WHERE run_pk = $1 AND key = k.key AND n > 0 ORDER BY chunk LIMIT $3) c) AS n
    FROM unnest($2::text[]) AS k(key)
) b WHERE lo IS NOT NULL
"""

# Buckets of whole chunks: each bucket's extremes are the extremes of its chunks' extremes.
CHUNK_SAMPLED_SQL = """
WITH buckets AS (
    SELECT c.key, min(c.lo) AS low, max(c.hi) AS high
    FROM history_chunks c JOIN unnest($2::text[], $3::bigint[]) AS w(key, width) ON w.key = c.key
    WHERE c.run_pk = $1 AND c.n > 0
    GROUP BY c.key, c.chunk * {chunk} / w.width
)
SELECT key, low[2]::bigint AS step, low[1] AS value FROM buckets
UNION
SELECT key, (-high[2])::bigint AS step, high[1] AS value FROM buckets
""".format(chunk=CHUNK_STEPS)


# The x axis metric's value at each of the given steps: from `history`, and from the block that
# would hold the step (a key's blocks are disjoint: the last one starting at or before it).
X_AXIS_SQL = """
SELECT step, value, value_json::text AS value_json FROM history
WHERE run_pk = $1 AND key = $2 AND step = ANY($3::bigint[])
UNION ALL
SELECT w.step,
       b.vals[CASE WHEN b.steps IS NULL THEN w.step - b.first_step + 1 ELSE array_position(b.steps, w.step) END],
       NULL
FROM unnest($3::bigint[]) AS w(step)
CROSS JOIN LATERAL (SELECT first_step, last_step, steps, vals FROM history_blocks
                    WHERE run_pk = $1 AND key = $2 AND first_step <= w.step
                    ORDER BY first_step DESC LIMIT 1) b
WHERE b.last_step >= w.step AND (b.steps IS NULL OR w.step = ANY(b.steps))
"""


async def history_sampled(conn: asyncpg.Connection, pk: int, keys: list[str], samples: int,
                          x_axis: str) -> list[dict[str, Any]]:
    """At most ``samples`` numeric points per key, keeping each bucket's lowest and highest value.

    A key with more points than ``samples`` has its step range cut into at most ``samples // 2``
    equal buckets; of each the point with the lowest and the one with the highest value survive,
    so spikes stay visible. Values compare in PostgreSQL's float8 order: -inf lowest, then the
    numbers, +inf, and NaN highest (a NaN in a bucket is kept as its high point). When a bucket
    spans at least a history chunk (100 steps), buckets are whole chunks and are read from
    ``history_chunks`` (a 1M-point key is 10k rows, not 1M); otherwise from the points.
    Rows are merged by step: ``{"_step": s, key: value, ...}`` (values as :func:`json_value`); with ``x_axis`` other than
    ``_step`` each row also has that metric's value at the same step, and points at steps
    without it are left out.
    """
    buckets = max(1, samples // 2)
    by_chunks: dict[str, int] = {}
    for b in await conn.fetch(CHUNK_BOUNDS_SQL, pk, keys, samples + 1):  # a chunk holds one number or more
        if b["n"] > samples and buckets >= 2 and (b["hi"] - b["lo"]) // buckets + 1 >= CHUNK_STEPS:
            # A whole number of chunks per bucket, sized for one bucket fewer: the aligned
            # buckets then still number at most `buckets`.
            width = (b["hi"] - b["lo"]) // (buckets - 1) + 1
            by_chunks[b["key"]] = -(-width // CHUNK_STEPS) * CHUNK_STEPS
    records = []
    if by_chunks:
        records += await conn.fetch(CHUNK_SAMPLED_SQL, pk, list(by_chunks), list(by_chunks.values()))
    by_points = [k for k in keys if k not in by_chunks]
    if by_points:
        records += await conn.fetch(SAMPLED_SQL, pk, by_points, samples, buckets)
    by_step: dict[int, dict[str, Any]] = {}
    for r in records:
        by_step.setdefault(r["step"], {"_step": r["step"]})[r["key"]] = json_value(r["value"], None)
    if x_axis != "_step" and by_step:
        xs = await conn.fetch(X_AXIS_SQL, pk, x_axis, list(by_step))
        found = {r["step"]: json_value(r["value"], r["value_json"]) for r in xs}
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
            event: dict[str, Any] = to_jsonable(decode(stored_body(r["body"]), stored=True))
        except EventError as e:  # stored events decode; this is a guard for a changed decoder
            event = {"undecodable": str(e)}
        event["pos"] = r["pos"]
        event["recorded_at"] = r["recorded_at"].isoformat()
        event["kafka"] = {"partition": r["kafka_partition"], "offset": r["kafka_offset"]}
        out.append(event)
    return out, (rows[page_size - 1]["pos"] if len(rows) > page_size else None)
