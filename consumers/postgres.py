"""Apply a batch of decoded events to PostgreSQL in ONE transaction with the consumer offsets.

Exactly-once effect comes from three guards, all inside that transaction:
1. the partition offsets are locked (``FOR UPDATE``) and records below the stored position
   are dropped, so a batch redelivered after a crash or rebalance changes nothing;
2. the event id is the event store's primary key, so a resent event is applied once;
3. (writer, run, seq) is tracked: a seq at or below the last one seen is a duplicate and
   skipped, a jump is recorded as a gap. A packed ``run.log`` covers the seqs of all its rows
   (``Event.last_seq``); the SDK spools each pack once, so a resend is always the same pack.
The fold itself is pure (``projections.fold``); this module only loads and writes.
"""

from __future__ import annotations

import bisect
import logging
import operator
from collections import defaultdict
from dataclasses import dataclass, fields
from itertools import islice
from typing import Any

import asyncpg

from events.codec import dumps

from events import Event, RunLog
from projections.db import BLOCK_POINTS, CHUNK_STEPS, MIN_BLOCK_POINTS, store_body
from projections.fold import AlertRow, HistoryColumn, MetricRow, RunState, TransitionRow, fold, fold_logs
from projections.summary import no_nan

from . import copy_blocks


log = logging.getLogger("runlog.consumer")


@dataclass(frozen=True)
class Record:
    """One consumed Kafka record that decoded into an event."""

    partition: int
    offset: int
    event: Event
    body: bytes


@dataclass
class BatchResult:
    applied: int = 0
    skipped_offsets: int = 0
    duplicates: int = 0


async def apply_batch(conn: asyncpg.Connection, group: str, topic: str,
                      records: list[Record], consumed: dict[int, int]) -> BatchResult:
    """Apply ``records`` and move each partition's position to ``consumed[partition]``.

    ``consumed`` maps every partition in the Kafka batch (including ones whose records all
    went to the dead-letter topic) to its next offset.
    """
    result = BatchResult()
    async with conn.transaction():
        stored = await _lock_offsets(conn, group, topic, sorted(consumed))
        fresh = [r for r in records if r.offset >= stored.get(r.partition, 0)]
        result.skipped_offsets = len(records) - len(fresh)
        new_ids = await _insert_events(conn, fresh)
        fresh = _first_of_each(fresh, new_ids)
        result.duplicates += len(records) - result.skipped_offsets - len(fresh)
        await project_records(conn, fresh, result)
        await _store_offsets(conn, group, topic, {p: o for p, o in consumed.items() if o > stored.get(p, 0)})
    return result


def _first_of_each(records: list[Record], new_ids: set[Any]) -> list[Record]:
    """The first record of each newly stored id: a resend inside the same batch is a duplicate too."""
    kept, seen = [], set()
    for r in records:
        if r.event.id in new_ids and r.event.id not in seen:
            seen.add(r.event.id)
            kept.append(r)
    return kept


async def project_records(conn: asyncpg.Connection, records: list[Record], result: BatchResult) -> None:
    """Fold events already in the event store into the read models (live and replay share this)."""
    fresh = await _check_sequences(conn, records, result)
    if fresh:
        await _project(conn, [r.event for r in fresh])
    result.applied += len(fresh)


async def _lock_offsets(conn: asyncpg.Connection, group: str, topic: str, partitions: list[int]) -> dict[int, int]:
    # Make sure the rows exist so FOR UPDATE has something to lock (two consumers in a
    # rebalance hand-over then serialize here instead of both applying one batch).
    await conn.execute(
        """INSERT INTO consumer_offsets (group_id, topic, partition, next_offset)
           SELECT $1, $2, p, 0 FROM unnest($3::int[]) AS p ON CONFLICT DO NOTHING""",
        group, topic, partitions,
    )
    rows = await conn.fetch(
        """SELECT partition, next_offset FROM consumer_offsets
           WHERE group_id = $1 AND topic = $2 AND partition = ANY($3::int[]) FOR UPDATE""",
        group, topic, partitions,
    )
    return {r["partition"]: r["next_offset"] for r in rows}


async def _store_offsets(conn: asyncpg.Connection, group: str, topic: str, positions: dict[int, int]) -> None:
    if positions:
        await conn.executemany(
            """UPDATE consumer_offsets SET next_offset = $4, updated_at = now()
               WHERE group_id = $1 AND topic = $2 AND partition = $3 AND next_offset < $4""",
            [(group, topic, p, o) for p, o in positions.items()],
        )


async def _insert_events(conn: asyncpg.Connection, records: list[Record]) -> set[Any]:
    if not records:
        return set()
    await _stage(conn, "event_stage", "id uuid, run_path text, type text, v integer, writer text, seq bigint, "
                 "event_time timestamptz, kafka_partition integer, kafka_offset bigint, body bytea")
    await conn.copy_records_to_table("event_stage", records=[
        (r.event.id, r.event.run.path, r.event.type, r.event.v, r.event.source.writer, r.event.seq, r.event.time,
         r.partition, r.offset, store_body(r.body)) for r in records
    ])
    rows = await conn.fetch(
        """INSERT INTO event_store (id, run_path, type, v, writer, seq, event_time, kafka_partition, kafka_offset, body)
           SELECT * FROM event_stage ORDER BY kafka_partition, kafka_offset
           ON CONFLICT (id) DO NOTHING RETURNING id"""
    )
    return {row["id"] for row in rows}


async def _stage(conn: asyncpg.Connection, name: str, columns: str) -> None:
    """A temporary staging table of this connection, emptied at every commit."""
    await conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {name} ({columns}) ON COMMIT DELETE ROWS")


async def _check_sequences(conn: asyncpg.Connection, records: list[Record], result: BatchResult) -> list[Record]:
    """Drop (writer, run) seq duplicates and record gaps; return the records to fold."""
    if not records:
        return records
    writers = sorted({(r.event.source.writer, r.event.run.path) for r in records})
    rows = await conn.fetch(
        """SELECT writer, run_path, last_seq FROM writers
           WHERE (writer, run_path) IN (SELECT * FROM unnest($1::text[], $2::text[])) FOR UPDATE""",
        [w for w, _ in writers], [p for _, p in writers],
    )
    last: dict[tuple[str, str], int] = {(r["writer"], r["run_path"]): r["last_seq"] for r in rows}
    gaps: dict[tuple[str, str], int] = defaultdict(int)
    dups: dict[tuple[str, str], int] = defaultdict(int)
    kept: list[Record] = []
    meta: dict[tuple[str, str], Event] = {}
    for r in records:
        k = (r.event.source.writer, r.event.run.path)
        seen = last.get(k, -1)
        if r.event.seq <= seen:
            dups[k] += 1
            result.duplicates += 1
            continue
        if r.event.source.kind != "watchdog":  # its seq is a clock (ms), not a count: no gaps to see
            gaps[k] += r.event.seq - seen - 1
        last[k] = r.event.last_seq  # a packed run.log holds the seqs of all its rows
        meta[k] = r.event
        kept.append(r)
    touched = set(meta) | set(dups)
    await conn.executemany(
        """INSERT INTO writers (writer, run_path, source_kind, rank, last_seq, gaps, duplicates)
           VALUES ($1, $2, $3, $4, $5, $6, $7)
           ON CONFLICT (writer, run_path) DO UPDATE SET last_seq = EXCLUDED.last_seq,
               gaps = writers.gaps + EXCLUDED.gaps, duplicates = writers.duplicates + EXCLUDED.duplicates,
               updated_at = now()""",
        [(w, p, meta[(w, p)].source.kind if (w, p) in meta else "sdk",
          meta[(w, p)].source.rank if (w, p) in meta else None,
          last.get((w, p), -1), gaps.get((w, p), 0), dups.get((w, p), 0)) for (w, p) in sorted(touched)],
    )
    return kept


# History points and their chunks (see 0010_history_chunks.sql):
# 0. points past the run's last step before this batch cannot meet a stored point (every
#    stored point of a run is at or below runs.last_step), so they are COPYed straight in, as
#    blocks (0011_history_blocks.sql) or one row per point in history (2x the rows/s of the
#    upsert), and rolled up per chunk in Python (_roll_up);
# 1. the other points are upserted from a staging table, after the blocks holding points of
#    their chunks moved into history (EXPLODE_BLOCKS_SQL); what the upsert wrote (inserted, or
#    replaced by a lower or equal rank) is rolled up per chunk into chunk_stage, with `fresh` =
#    only new points (xmax = 0 marks a row the upsert inserted rather than updated);
# 2. chunks that only gained points merge their roll-ups into the stored one (count adds up,
#    extremes are the extremes of all): no history is read again;
# 3. chunks where a point was replaced are recomputed from history, which is exact whatever the
#    replaced value was (rare: a lower rank overwriting, or a step logged twice).
HISTORY_SQL = f"""
WITH written AS (
    INSERT INTO history (run_pk, key, step, value, value_json, rank)
    SELECT run_pk, key, step, value, value_json::jsonb, rank FROM history_stage
    ON CONFLICT (run_pk, key, step) DO UPDATE
    SET value = EXCLUDED.value, value_json = EXCLUDED.value_json, rank = EXCLUDED.rank
    WHERE EXCLUDED.rank <= history.rank
    RETURNING run_pk, key, step, value, xmax = 0 AS fresh
)
INSERT INTO chunk_stage
SELECT run_pk, key, step / {CHUNK_STEPS}, bool_and(fresh), count(value),
       min(step) FILTER (WHERE value IS NOT NULL), max(step) FILTER (WHERE value IS NOT NULL),
       min(ARRAY[value, step::float8]) FILTER (WHERE value IS NOT NULL),
       max(ARRAY[value, -step::float8]) FILTER (WHERE value IS NOT NULL)
FROM written GROUP BY 1, 2, 3
"""
MERGE_CHUNKS_SQL = """
INSERT INTO history_chunks (run_pk, key, chunk, n, first_step, last_step, lo, hi)
SELECT run_pk, key, chunk, sum(n)::integer, min(first_step), max(last_step), min(lo), max(hi)
FROM chunk_stage GROUP BY run_pk, key, chunk HAVING bool_and(fresh)
ON CONFLICT (run_pk, key, chunk) DO UPDATE SET
    n = history_chunks.n + EXCLUDED.n,
    first_step = LEAST(history_chunks.first_step, EXCLUDED.first_step),
    last_step = GREATEST(history_chunks.last_step, EXCLUDED.last_step),
    lo = LEAST(history_chunks.lo, EXCLUDED.lo), hi = GREATEST(history_chunks.hi, EXCLUDED.hi)
"""
# Before the upsert: every block holding a point in a chunk the upsert touches moves its points
# into `history` (sql/0011_history_blocks.sql), so the upsert meets any stored point of a step and
# the chunk recompute reads every point of its chunks from `history` alone.
EXPLODE_BLOCKS_SQL = f"""
WITH hit AS (
    DELETE FROM history_blocks b
    USING (SELECT DISTINCT run_pk, key, step / {CHUNK_STEPS} AS chunk FROM history_stage) s
    WHERE b.run_pk = s.run_pk AND b.key = s.key
      AND b.first_step < (s.chunk + 1) * {CHUNK_STEPS} AND b.last_step >= s.chunk * {CHUNK_STEPS}
    RETURNING b.run_pk, b.key, b.first_step, b.rank, b.steps, b.vals
)
INSERT INTO history (run_pk, key, step, value, rank)
SELECT hit.run_pk, hit.key, CASE WHEN hit.steps IS NULL THEN hit.first_step + p.i - 1 ELSE hit.steps[p.i] END,
       p.value, hit.rank
FROM hit CROSS JOIN LATERAL unnest(hit.vals) WITH ORDINALITY AS p(value, i)
"""
RECOMPUTE_CHUNKS_SQL = f"""
INSERT INTO history_chunks (run_pk, key, chunk, n, first_step, last_step, lo, hi)
SELECT c.run_pk, c.key, c.chunk, count(h.value), min(h.step) FILTER (WHERE h.value IS NOT NULL),
       max(h.step) FILTER (WHERE h.value IS NOT NULL),
       min(ARRAY[h.value, h.step::float8]) FILTER (WHERE h.value IS NOT NULL),
       max(ARRAY[h.value, -h.step::float8]) FILTER (WHERE h.value IS NOT NULL)
FROM (SELECT DISTINCT run_pk, key, chunk FROM chunk_stage WHERE NOT fresh) c
JOIN history h ON h.run_pk = c.run_pk AND h.key = c.key
              AND h.step >= c.chunk * {CHUNK_STEPS} AND h.step < (c.chunk + 1) * {CHUNK_STEPS}
GROUP BY c.run_pk, c.key, c.chunk
ON CONFLICT (run_pk, key, chunk) DO UPDATE SET n = EXCLUDED.n, first_step = EXCLUDED.first_step,
    last_step = EXCLUDED.last_step, lo = EXCLUDED.lo, hi = EXCLUDED.hi
"""

# The (run, key)s that already hold a point past the given step (the run's last step before the
# batch): there should be none (see HISTORY_SQL's comment).
STORED_PAST_SQL = """
SELECT g.pk, g.key FROM unnest($1::bigint[], $2::text[], $3::bigint[]) AS g(pk, key, after)
WHERE g.after IS NOT NULL AND (
    EXISTS (SELECT 1 FROM history h WHERE h.run_pk = g.pk AND h.key = g.key AND h.step > g.after)
    OR EXISTS (SELECT 1 FROM history_blocks b WHERE b.run_pk = g.pk AND b.key = g.key AND b.last_step > g.after))
"""
RUN_COLUMNS = [f.name for f in fields(RunState)]
DB_COLUMNS = ["run_group" if c == "group" else c for c in RUN_COLUMNS]
UPSERT_RUN_SQL = f"""INSERT INTO runs ({', '.join(DB_COLUMNS)})
    VALUES ({', '.join(f'${i + 1}' for i in range(len(DB_COLUMNS)))})
    ON CONFLICT (entity, project, run_id) DO UPDATE SET {', '.join(f'{d} = EXCLUDED.{d}' for d in DB_COLUMNS[3:])}"""


def _runs_of_logs(events: list[Event]) -> list[tuple[str, list[Event]]]:
    """The batch run by run (each run's events in their order; runs do not affect one another),
    with consecutive ``run.log`` events of a run grouped for ``fold_logs``. Batches interleave
    the runs of several partitions, so grouping by run first makes the groups long."""
    by_run: dict[str, list[Event]] = {}
    for event in events:
        by_run.setdefault(event.run.path, []).append(event)
    groups: list[tuple[str, list[Event]]] = []
    for path, run_events in by_run.items():
        for event in run_events:
            if type(event) is RunLog and groups and groups[-1][0] == path and type(groups[-1][1][0]) is RunLog:
                groups[-1][1].append(event)
            else:
                groups.append((path, [event]))
    return groups


async def _project(conn: asyncpg.Connection, events: list[Event]) -> None:
    """Fold ``events`` (in order) into the runs they touch and write the resulting rows."""
    paths = list(dict.fromkeys(e.run.path for e in events))
    parts = [p.split("/", 2) for p in paths]
    loaded = await conn.fetch(
        f"""SELECT pk, {', '.join(DB_COLUMNS)} FROM runs
            WHERE (entity, project, run_id) IN (SELECT * FROM unnest($1::text[], $2::text[], $3::text[]))
            FOR UPDATE""",
        [p[0] for p in parts], [p[1] for p in parts], [p[2] for p in parts],
    )
    states: dict[str, RunState | None] = dict.fromkeys(paths)
    pks: dict[str, int] = {}
    for row in loaded:
        values = {c: row[d] for c, d in zip(RUN_COLUMNS, DB_COLUMNS)}
        values["tags"] = tuple(values["tags"])
        values["overrides"] = tuple(values["overrides"])
        values["open_writers"] = tuple(values["open_writers"])
        st = RunState(**values)
        path = f"{st.entity}/{st.project}/{st.run_id}"
        states[path], pks[path] = st, row["pk"]

    before_last = {path: st.last_step for path, st in states.items() if st is not None}
    history: dict[tuple[str, str], list[HistoryColumn]] = {}  # (run path, key) -> its columns, in order
    transitions: list[tuple[str, TransitionRow]] = []
    definitions: dict[tuple[str, str], MetricRow] = {}
    alerts: list[tuple[str, AlertRow]] = []
    for path, group in _runs_of_logs(events):
        if len(group) == 1:
            states[path], rows = fold(states[path], group[0])
        else:
            states[path], rows = fold_logs(states[path], group)  # type: ignore[arg-type]
        for row in rows:
            if type(row) is HistoryColumn:
                history.setdefault((path, row.key), []).append(row)
            elif isinstance(row, TransitionRow):
                transitions.append((path, row))
            elif isinstance(row, MetricRow):
                definitions[(path, row.name)] = row
            else:
                alerts.append((path, row))

    known: list[list[Any]] = []  # runs with a pk already: one pipelined executemany
    for path, st in states.items():
        if st is None:
            continue
        values = [getattr(st, c) for c in RUN_COLUMNS]
        values[RUN_COLUMNS.index("tags")] = list(st.tags)
        values[RUN_COLUMNS.index("overrides")] = list(st.overrides)
        values[RUN_COLUMNS.index("open_writers")] = list(st.open_writers)
        if path in pks:
            known.append(values)
        else:  # a new run: its pk is needed for its rows
            pks[path] = await conn.fetchval(UPSERT_RUN_SQL + " RETURNING pk", *values)
    if known:
        await conn.executemany(UPSERT_RUN_SQL, known)

    if history:
        await _write_history(conn, history, pks, before_last)
    if transitions:
        await conn.executemany(
            """INSERT INTO state_transitions (run_pk, from_state, to_state, accepted, event_time, event_id, actor, reason)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8)""",
            [(pks[p], t.from_state, t.to_state, t.accepted, t.event_time, t.event_id, t.actor, t.reason)
             for p, t in transitions],
        )
    if definitions:
        await conn.executemany(
            """INSERT INTO metric_definitions (run_pk, name, definition, defined_at) VALUES ($1, $2, $3, $4)
               ON CONFLICT (run_pk, name) DO UPDATE SET definition = EXCLUDED.definition,
                   defined_at = EXCLUDED.defined_at""",
            [(pks[p], m.name, m.definition, m.event_time) for (p, _), m in definitions.items()],
        )
    if alerts:
        await conn.executemany(
            """INSERT INTO alerts (run_pk, title, text, level, wait_duration, event_time, event_id, actor,
                                   suppressed, reason)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)""",
            [(pks[p], a.title, a.text, a.level, a.wait_duration, a.event_time, a.event_id, a.actor,
              a.suppressed, a.reason) for p, a in alerts],
        )


Points = tuple[list[int], list[float | None], int | list[int]]  # steps (ascending), values, rank(s)


async def _write_history(conn: asyncpg.Connection, history: dict[tuple[str, str], list[HistoryColumn]],
                         pks: dict[str, int], before_last: dict[str, int | None]) -> None:
    """Write the batch's history points and keep their chunks (see HISTORY_SQL's comment).

    New numeric points of a (run, key) become blocks (sql/0011_history_blocks.sql) when there
    are at least MIN_BLOCK_POINTS of them, all of one rank, and no other point of that (run, key)
    in this batch needs the upsert; everything else is one row per point in ``history``. The
    usual batch (one rank logging steps past the run's last one) takes list operations per key,
    nothing per point in Python beyond the COPY's encoding (:func:`_new_points`)."""
    appended: dict[tuple[int, str], Points] = {}
    staged: list[tuple[Any, ...]] = []
    plain: set[tuple[int, str]] = set()  # new points all floats without NaN, as the fold found them
    for (path, key), columns in history.items():
        pk, last = pks[path], before_last.get(path)
        fold_checked = all(c.plain for c in columns)
        new = _new_points(columns, last, fold_checked)
        if new is None:
            new = _sort_points(pk, key, columns, last, staged)
        elif fold_checked:
            plain.add((pk, key))
        if new[0]:
            appended[(pk, key)] = new
    upserted = {(pk, key) for pk, key, *_ in staged}
    blockable = [(pk, key) for (pk, key), (steps, values, rank) in appended.items()
                 if len(steps) >= MIN_BLOCK_POINTS and (pk, key) not in upserted and type(rank) is int
                 and ((pk, key) in plain or None not in values)]
    if blockable:  # a block's COPY meets no key that would catch a broken invariant: look first
        after = {pk: before_last.get(path) for path, pk in pks.items()}
        broken = await conn.fetch(STORED_PAST_SQL, [g[0] for g in blockable], [g[1] for g in blockable],
                                  [after[g[0]] for g in blockable])
        if broken:
            log.warning("history already held points past runs.last_step; upserting this batch's points")
            for pk, key in broken:
                staged += _point_rows(pk, key, appended.pop((pk, key)), json=True)
                blockable.remove((pk, key))
    blocks = [block for pk, key in blockable for block in _block_rows(pk, key, appended[(pk, key)])]
    as_blocks = set(blockable)
    rows = [row for k, new in appended.items() if k not in as_blocks for row in _point_rows(*k, new)]
    await _stage(conn, "chunk_stage", "run_pk bigint, key text, chunk bigint, fresh boolean, n integer, "
                 "first_step bigint, last_step bigint, lo float8[], hi float8[]")
    if rows:
        try:
            async with conn.transaction():  # a savepoint: a broken invariant falls back to the upsert
                await conn.copy_records_to_table("history", records=rows,
                                                  columns=["run_pk", "key", "step", "value", "rank"])
        except asyncpg.UniqueViolationError:
            log.warning("history already held points past runs.last_step; upserting this batch's points")
            staged += [(pk, key, step, value, None, rank) for pk, key, step, value, rank in rows]
            appended = {k: v for k, v in appended.items() if k in as_blocks}
    if blocks:
        await conn.copy_to_table("history_blocks", source=memoryview(copy_blocks.encode(blocks)),
                                 columns=copy_blocks.COLUMNS, format="binary")
    if appended:
        chunks = [chunk for (pk, key), (steps, values, _) in appended.items()
                  for chunk in _roll_up(pk, key, steps, values, (pk, key) in plain)]
        await conn.copy_to_table("chunk_stage", source=memoryview(copy_blocks.encode_chunks(chunks)),
                                 columns=copy_blocks.CHUNK_COLUMNS, format="binary")
    if staged:
        # COPY (binary, encoded in asyncpg's C code) into a per-connection staging table, then one
        # set-based upsert: several times faster than unnest() arrays encoded value by value.
        await _stage(conn, "history_stage",
                     "run_pk bigint, key text, step bigint, value float8, value_json text, rank integer")
        await conn.copy_records_to_table("history_stage", records=staged)
        await conn.execute(EXPLODE_BLOCKS_SQL)
        await conn.execute(HISTORY_SQL)
    await conn.execute(MERGE_CHUNKS_SQL)
    if staged:  # only the upsert can replace a point (appended points are all new)
        await conn.execute(RECOMPUTE_CHUNKS_SQL)


def _block_rows(pk: int, key: str, points: Points) -> list[tuple[Any, ...]]:
    """history_blocks rows (``copy_blocks.COLUMNS``) for the new points of one (run, key), one
    rank, steps ascending: BLOCK_POINTS at most each, steps left out (None) when they have no gap."""
    steps, values, rank = points
    out = []
    for i in range(0, len(steps), BLOCK_POINTS):
        part = steps[i:i + BLOCK_POINTS]
        first, last, n = part[0], part[-1], len(part)
        out.append((pk, key, first, last, n, rank, None if last - first == n - 1 else part, values[i:i + BLOCK_POINTS]))
    return out


def _new_points(columns: list[HistoryColumn], last: int | None, plain: bool = False) -> Points | None:
    """The points of one (run, key) when they are the usual case: one rank, steps ascending without
    a repeat and past ``last``, every value a number. Else None (see :func:`_sort_points`).
    ``plain``: every column is (the fold found its values all floats, none NaN)."""
    rank = columns[0].rank
    if len(columns) == 1:
        steps, values = columns[0].steps, columns[0].values
    elif all(c.rank == rank for c in columns):
        steps = [s for c in columns for s in c.steps]
        values = [v for c in columns for v in c.values]
    else:
        return None
    if (last is not None and steps[0] <= last) or not all(map(operator.lt, steps, islice(steps, 1, None))):
        return None
    if plain:  # the fold checked the values already
        return steps, values, rank
    kinds = set(map(type, values))
    if kinds == {float}:
        return steps, values, rank
    if kinds <= {float, int}:
        return steps, [float(v) for v in values], rank
    return None


def _sort_points(pk: int, key: str, columns: list[HistoryColumn], last: int | None,
                 staged: list[tuple[Any, ...]]) -> Points:
    """The general case, point by point: at each step the lowest rank wins, then the later write.
    Numbers (and JSON null) past ``last`` are returned as new points; the others are added to
    ``staged`` for the upsert (JSON values as text)."""
    kept: dict[int, tuple[Any, int]] = {}
    for c in columns:
        for step, value in zip(c.steps, c.values):
            held = kept.get(step)
            if held is None or c.rank <= held[1]:
                kept[step] = (value, c.rank)
    steps: list[int] = []
    values: list[float | None] = []
    ranks: list[int] = []
    for step in sorted(kept):
        value, rank = kept[step]
        kind = type(value)
        number = kind is float or kind is int
        if (number or value is None) and (last is None or step > last):
            steps.append(step)
            values.append(None if value is None else float(value))
            ranks.append(rank)
        else:
            staged.append((pk, key, step, float(value) if number else None,
                           None if number or value is None else dumps(value).decode(), rank))
    return steps, values, (ranks[0] if ranks and ranks.count(ranks[0]) == len(ranks) else ranks)


def _point_rows(pk: int, key: str, points: Points, json: bool = False) -> list[tuple[Any, ...]]:
    """One ``history`` row per point ``(run_pk, key, step, value, rank)``; with ``json`` in the
    staging shape, with a value_json column (None: the points are numbers or null)."""
    steps, values, rank = points
    ranks = [rank] * len(steps) if type(rank) is int else rank
    if json:
        return [(pk, key, s, v, None, r) for s, v, r in zip(steps, values, ranks)]
    return [(pk, key, s, v, r) for s, v, r in zip(steps, values, ranks)]


def _roll_up(pk: int, key: str, steps: list[int], values: list[float | None], plain: bool = False) -> list[tuple[Any, ...]]:
    """chunk_stage rows (all fresh) for new points of one (run, key), steps ascending: per chunk
    the count, first and last step, and the lowest and highest point, in PostgreSQL's float8
    order (-inf lowest, NaN highest and equal to NaN) with its tie rule (the lowest step), so
    they merge exactly like the SQL roll-up of the upsert path. A chunk of plain numbers takes
    min/max/index over its slice; one with a NaN or a null goes point by point. ``plain``: the
    caller knows every value is a float and none NaN."""
    out = []
    i, n = 0, len(steps)
    while i < n:
        chunk = steps[i] // CHUNK_STEPS
        j = bisect.bisect_left(steps, (chunk + 1) * CHUNK_STEPS, i)
        vals = values[i:j]
        if not plain and not no_nan(vals):
            out += _roll_up_points(pk, key, chunk, steps[i:j], vals)
        else:
            lo, hi = min(vals), max(vals)  # type: ignore[type-var]
            lo_step, hi_step = steps[i + vals.index(lo)], steps[i + vals.index(hi)]
            # -float(step), as SQL's -step::float8: step 0 gives -0.0 there, and the stored arrays match.
            out.append((pk, key, chunk, True, j - i, steps[i], steps[j - 1], [lo, float(lo_step)], [hi, -float(hi_step)]))
        i = j
    return out


def _roll_up_points(pk: int, key: str, chunk: int, steps: list[int], values: list[float | None]) -> list[tuple[Any, ...]]:
    """One chunk's row as :func:`_roll_up`, point by point (NaN and null handled); none if no number."""
    c: list[Any] | None = None  # [n, first, last, lo order, lo step, lo value, hi order, hi step, hi value]
    for step, value in zip(steps, values):
        if value is None:
            continue
        order = (1, 0.0) if value != value else (0, value)
        if c is None:
            c = [1, step, step, order, step, value, order, step, value]
            continue
        c[0] += 1
        c[2] = step
        if order < c[3]:  # steps ascend: a tie keeps the earlier (lower) step
            c[3], c[4], c[5] = order, step, value
        if order > c[6]:
            c[6], c[7], c[8] = order, step, value
    if c is None:
        return []
    return [(pk, key, chunk, True, c[0], c[1], c[2], [c[5], float(c[4])], [c[8], -float(c[7])])]
