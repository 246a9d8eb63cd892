"""History reads on the real PostgreSQL, checked against brute force over the logged points.

The points go in through ``apply_batch`` (the consumer's own write path, which keeps
``history_chunks``) into a schema of the test's own; the reads are ``api.queries``'.
"""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import pytest

from api import queries
from consumers.postgres import Record, apply_batch
from events import InitPayload, LogPayload, RunInit, RunLog, RunRef, Source, encode
from events.values import untag_nonfinite
from projections.db import CHUNK_STEPS, HISTORY_POINTS

from .helpers import Scoped
from .test_replay import BLOCKS_BROKEN, chunks_match_history

pytestmark = pytest.mark.integration

T0 = datetime(2026, 5, 1, tzinfo=UTC)
Points = dict[str, dict[int, Any]]  # key -> step -> value


async def load(conn: asyncpg.Connection, points: Points) -> int:
    """Log ``points`` as one run's events, in batches as the consumer applies them; the run's pk."""
    run = RunRef(entity="e", project="p", run_id="r")
    src = Source(kind="sdk", writer="w", rank=0)
    events: list[Any] = [RunInit(run=run, source=src, seq=0, time=T0, payload=InitPayload())]
    for step in sorted(set().union(*points.values())):
        values = {k: v[step] for k, v in points.items() if step in v}
        events.append(RunLog(run=run, source=src, seq=len(events), time=T0, payload=LogPayload(step=step, values=values)))
    for start in range(0, len(events), 2000):
        records = [Record(0, start + i, e, encode(e)) for i, e in enumerate(events[start:start + 2000])]
        await apply_batch(conn, "g", "t", records, {0: start + len(records)})
    return await conn.fetchval("SELECT pk FROM runs WHERE run_id = 'r'")  # type: ignore[no-any-return]


def order_key(value: float) -> tuple[int, float]:
    """PostgreSQL's float8 order: -inf < numbers < +inf < NaN."""
    return (1, 0.0) if math.isnan(value) else (0, value)


def same(a: Any, b: Any) -> bool:
    return (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)) or a == b


def expected_extremes(series: dict[int, float], samples: int) -> set[int]:
    """Steps of each bucket's lowest and highest point, buckets cut as history_sampled documents."""
    steps = sorted(series)
    buckets = samples // 2
    lo, hi = steps[0], steps[-1]
    if len(steps) <= samples:
        return set(steps)
    width = (hi - lo) // buckets + 1
    if width >= CHUNK_STEPS:  # whole chunks, sized for one bucket fewer
        width = -(-((hi - lo) // (buckets - 1) + 1) // CHUNK_STEPS) * CHUNK_STEPS
        bucket_of = lambda s: s // width  # noqa: E731 - aligned to chunk boundaries
    else:
        bucket_of = lambda s: (s - lo) // width  # noqa: E731
    by_bucket: dict[int, list[int]] = {}
    for s in steps:
        by_bucket.setdefault(bucket_of(s), []).append(s)
    out = set()
    for members in by_bucket.values():  # ties: the earliest step (min/max over (value, ±step) arrays)
        out.add(min(members, key=lambda s: (order_key(series[s]), s)))
        out.add(max(members, key=lambda s: (order_key(series[s]), -s)))
    return out


async def test_sampled_history_keeps_every_bucket_s_extremes_from_chunks_and_from_points(scoped: Scoped) -> None:
    rng = random.Random(7)
    long = {s: math.sin(s / 500) + rng.random() / 10 for s in range(12_000)}
    long[2_345], long[9_001], long[10_000], long[5] = 50.0, -50.0, math.nan, -math.inf
    medium = {s: rng.random() for s in range(4_000)}
    medium[2_000] = 9.0
    short = {s: rng.random() for s in range(0, 3_000, 10)}  # 300 points
    words = {s: "text" for s in range(0, 12_000, 1000)}  # not numeric: never sampled
    pk = await load(scoped.conn, {"long": long, "medium": medium, "short": short, "words": words})

    # samples=100: `long` in buckets of 300 steps from chunks, `medium` in buckets of 81 steps from
    # the points, `short` whole; samples=60: both from chunks; samples=1000: `short` whole, the rest points.
    for samples in (100, 60, 1000):
        rows = await queries.history_sampled(scoped.conn, pk, ["long", "medium", "short", "words"], samples, "_step")
        for key, series in (("long", long), ("medium", medium), ("short", short)):
            got = {r["_step"]: untag_nonfinite(r[key]) for r in rows if key in r}
            assert len(got) <= samples, (key, samples)
            assert all(same(series[s], v) for s, v in got.items()), key  # every point is a logged one
            assert set(got) == expected_extremes(series, samples), (key, samples)
        assert not any("words" in r for r in rows)
    rows = await queries.history_sampled(scoped.conn, pk, ["long"], 100, "_step")
    assert {2_345, 9_001, 10_000, 5} <= {r["_step"] for r in rows}  # the spikes, the NaN and -inf survive

    # The roll-up the chunk buckets read: 12k points of `long` are 120 chunk rows.
    assert await scoped.conn.fetchval(
        "SELECT count(*) FROM history_chunks WHERE run_pk = $1 AND key = 'long'", pk) == 12_000 // CHUNK_STEPS


async def served_page(conn: asyncpg.Connection, pk: int, keys: list[str] | None, start: int, max_step: int | None,
                      page_size: int) -> tuple[list[dict[str, Any]], int | None]:
    """A scan page's rows as the API serves them (``queries.history_json``), read back."""
    rows, next_step = await queries.history_json(conn, pk, keys, start, max_step, page_size)
    return orjson.loads(orjson.dumps(rows)), next_step


async def test_scan_pages_cover_every_step_once_across_keys_with_different_steps(scoped: Scoped) -> None:
    points: Points = {
        "a": {s: float(s) for s in range(3_000)},
        "b": {s: s / 2 for s in range(0, 3_000, 2)},
        "c": {s: math.inf if s == 2_600 else 1.0 for s in range(2_500, 3_000)},
        "d": {s: [s, "x"] for s in range(0, 3_000, 700)},  # JSON values come back as stored
    }
    pk = await load(scoped.conn, points)

    async def scan(keys: list[str] | None, max_step: int | None, page_size: int) -> list[dict[str, Any]]:
        rows, start = [], 0
        while True:
            page, start = await served_page(scoped.conn, pk, keys, start, max_step, page_size)
            assert len(page) <= page_size
            rows += page
            if start is None:
                return rows

    def truth(keys: list[str] | None, max_step: int | None) -> list[dict[str, Any]]:
        wanted = keys or sorted(points)
        steps = sorted({s for k in wanted for s in points[k] if max_step is None or s <= max_step})
        rows = [{"_step": s, **{k: points[k][s] for k in wanted if s in points[k]}} for s in steps]
        return [r for r in rows if not keys or all(k in r for k in keys)]

    def plain(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return untag_nonfinite(orjson.loads(orjson.dumps(rows)))  # what a client reads

    for keys, max_step, page_size in [(None, None, 700), (None, 2_700, 333), (["a", "b"], None, 500),
                                      (["c"], None, 64), (["b", "c"], 2_999, 1000), (["a"], None, 10_000)]:
        assert plain(await scan(keys, max_step, page_size)) == truth(keys, max_step), (keys, max_step, page_size)


async def test_points_past_the_last_step_are_appended_and_a_broken_invariant_falls_back_to_the_upsert(
        scoped: Scoped, caplog: pytest.LogCaptureFixture) -> None:
    pk = await load(scoped.conn, {"loss": {s: float(s) for s in range(150)}})
    assert await chunks_match_history(scoped.conn)
    # A point stored beyond runs.last_step (by hand: the consumer never writes one) would make the
    # COPY of "new" points collide; the batch must still apply, through the upsert.
    await scoped.conn.execute("INSERT INTO history (run_pk, key, step, value, rank) VALUES ($1, 'loss', 160, -1.0, 0)", pk)
    run = RunRef(entity="e", project="p", run_id="r")
    src = Source(kind="sdk", writer="w", rank=0)
    events = [RunLog(run=run, source=src, seq=151 + i, time=T0, payload=LogPayload(step=150 + i, values={"loss": 7.0}))
              for i in range(20)]
    offset = await scoped.conn.fetchval("SELECT next_offset FROM consumer_offsets WHERE group_id = 'g'")
    records = [Record(0, offset + i, e, encode(e)) for i, e in enumerate(events)]
    await apply_batch(scoped.conn, "g", "t", records, {0: offset + len(records)})
    values = dict(await scoped.conn.fetch(
        f"SELECT step, value FROM {HISTORY_POINTS} h WHERE run_pk = $1 AND step >= 150", pk))
    assert values == {s: 7.0 for s in range(150, 170)}  # the stray point was overwritten, none lost
    assert "past runs.last_step" in caplog.text  # the COPY collided and the upsert took over
    assert await chunks_match_history(scoped.conn)


async def log_batch(conn: asyncpg.Connection, rows: list[tuple[int, dict[str, Any]]], rank: int = 0) -> None:
    """Apply one batch of logs of run ``r`` (made by :func:`load`) by writer ``w<rank>``, after what is stored."""
    run = RunRef(entity="e", project="p", run_id="r")
    writer = f"w{rank}" if rank else "w"
    src = Source(kind="sdk", writer=writer, rank=rank)
    seq = await conn.fetchval("SELECT coalesce(max(last_seq), 0) + 1 FROM writers WHERE writer = $1", writer)
    events = [RunLog(run=run, source=src, seq=seq + i, time=T0, payload=LogPayload(step=step, values=values))
              for i, (step, values) in enumerate(rows)]
    offset = await conn.fetchval("SELECT next_offset FROM consumer_offsets WHERE group_id = 'g'")
    records = [Record(0, offset + i, e, encode(e)) for i, e in enumerate(events)]
    await apply_batch(conn, "g", "t", records, {0: offset + len(records)})


async def test_bulk_points_go_to_blocks_and_a_late_point_moves_its_block_back_to_rows(scoped: Scoped) -> None:
    conn = scoped.conn
    loss = {s: float(s) for s in range(2_500)}
    acc = {s: s / 7 for s in range(0, 2_500, 3)}
    pk = await load(conn, {"loss": loss, "acc": acc})  # batches of 2,000 events: blocks of up to 1,000 points
    assert await conn.fetchval("SELECT count(*) FROM history WHERE run_pk = $1", pk) == 0
    assert await conn.fetchval("SELECT sum(n) FROM history_blocks WHERE run_pk = $1", pk) == len(loss) + len(acc)
    assert await conn.fetchval("SELECT count(*) FROM history_blocks WHERE steps IS NOT NULL AND key = 'loss'") == 0

    # A step logged again, and a lower rank writing a step already held: each moves the blocks that
    # hold points of its chunk into rows, and the upsert's rules apply there.
    await log_batch(conn, [(1_234, {"loss": -5.0})])
    loss[1_234] = -5.0
    await log_batch(conn, [(39, {"acc": 100.0})], rank=1)  # rank 1 does not overwrite rank 0's point
    await log_batch(conn, [(41, {"acc": 100.0})], rank=1)  # no point there: stored
    acc[41] = 100.0
    await log_batch(conn, [(s, {"loss": 1.5}) for s in range(2_500, 2_505)])  # few points: rows
    await log_batch(conn, [(s, {"loss": 2.5, "acc": 3.5}) for s in range(2_505, 3_000)])  # blocks again
    loss.update({s: 1.5 for s in range(2_500, 2_505)} | {s: 2.5 for s in range(2_505, 3_000)})
    acc.update({s: 3.5 for s in range(2_505, 3_000)})

    stored = await conn.fetch(f"SELECT key, step, value FROM {HISTORY_POINTS} h WHERE run_pk = $1", pk)
    assert {(r["key"], r["step"]): r["value"] for r in stored} == {
        **{("loss", s): v for s, v in loss.items()}, **{("acc", s): v for s, v in acc.items()}}
    assert len(stored) == len(loss) + len(acc)  # no step twice
    rows_now = await conn.fetchval("SELECT count(*) FROM history WHERE run_pk = $1", pk)
    assert 0 < rows_now < 2_500  # only the moved blocks' points and the small batch are rows
    assert await conn.fetch(BLOCKS_BROKEN) == []
    assert await chunks_match_history(conn)

    # Scans across rows and blocks, for every page size and range, equal the points.
    points: Points = {"loss": loss, "acc": acc}
    for keys, min_step, max_step, page_size in [
            (None, 0, None, 700), (["loss"], 0, None, 999), (["loss"], 1_230, 2_600, 64),
            (["acc"], 7, None, 10_000), (None, 1_000, 2_501, 333), (["acc"], 41, 41, 5)]:
        got, start = [], min_step
        while start is not None:
            page, start = await served_page(conn, pk, keys, start, max_step, page_size)
            got += page
        wanted = keys or sorted(points)
        steps = sorted({s for k in wanted for s in points[k] if s >= min_step and (max_step is None or s <= max_step)})
        truth = [{"_step": s, **{k: points[k][s] for k in wanted if s in points[k]}} for s in steps]
        if keys:
            truth = [r for r in truth if all(k in r for k in keys)]
        assert got == truth, (keys, min_step, max_step, page_size)

    assert await queries.history_keys(conn, pk) == ["acc", "loss"]
    # A sample with another metric as the x axis finds its values in rows and in blocks.
    rows = await queries.history_sampled(conn, pk, ["loss"], 400, "acc")
    assert rows and all(r["acc"] == acc[r["_step"]] and r["loss"] == loss[r["_step"]] for r in rows)
    assert {r["_step"] for r in rows} == {s for s in expected_extremes(loss, 400) if s in acc}


async def test_blocks_copied_in_binary_read_back_exactly(scoped: Scoped) -> None:
    """consumers.copy_blocks writes PostgreSQL's binary COPY format itself: every float (NaN,
    infinities, -0.0, subnormals, the extremes) and step (gaps, big ones) must come back as sent."""
    from consumers import copy_blocks

    floats = [0.0, -0.0, 1.5, -2.25, math.inf, -math.inf, math.nan, 5e-324, 1.7976931348623157e308, 1 / 3]
    steps = [0, 1, 5, 6, 7, 1_000, 2**40, 2**40 + 1, 2**62, 2**63 - 1]
    rows = [(42, "loss/é", steps[0], steps[-1], len(steps), 3, steps, floats),
            (42, "acc", 10, 19, 10, 0, None, [float(i) for i in range(10)])]
    await scoped.conn.copy_to_table("history_blocks", source=memoryview(copy_blocks.encode(rows)),
                                    columns=copy_blocks.COLUMNS, format="binary")
    got = await scoped.conn.fetch(f"SELECT key, step, value, rank FROM {HISTORY_POINTS} h WHERE run_pk = 42 "
                                  "ORDER BY key, step")
    assert [(r["key"], r["step"], r["rank"]) for r in got] == (
        [("acc", s, 0) for s in range(10, 20)] + [("loss/é", s, 3) for s in steps])
    values = [r["value"] for r in got]
    assert values[:10] == [float(i) for i in range(10)]
    assert [repr(v) for v in values[10:]] == [repr(v) for v in floats]  # repr: -0.0 and NaN too
    assert await scoped.conn.fetch(BLOCKS_BROKEN) == []


async def test_chunk_rows_copied_in_binary_read_back_exactly(scoped: Scoped) -> None:
    """consumers.copy_blocks.encode_chunks: chunk_stage rows as asyncpg's own COPY would send them."""
    from consumers import copy_blocks

    conn = scoped.conn
    rows = [(7, "loss/é", 0, True, 100, 0, 99, [-math.inf, 0.0], [math.nan, -0.0]),
            (2**62, "acc", 2**40, False, 1, 2**46, 2**46, [5e-324, 3.0], [1.7976931348623157e308, -3.0])]
    columns = "run_pk bigint, key text, chunk bigint, fresh boolean, n integer, first_step bigint, last_step bigint, lo float8[], hi float8[]"
    await conn.execute(f"CREATE TEMP TABLE by_us ({columns}); CREATE TEMP TABLE by_asyncpg ({columns})")
    await conn.copy_to_table("by_us", source=memoryview(copy_blocks.encode_chunks(rows)),
                             columns=copy_blocks.CHUNK_COLUMNS, format="binary")
    await conn.copy_records_to_table("by_asyncpg", records=rows, columns=copy_blocks.CHUNK_COLUMNS)
    ours = await conn.fetch("SELECT * FROM by_us ORDER BY run_pk")
    theirs = await conn.fetch("SELECT * FROM by_asyncpg ORDER BY run_pk")
    assert repr([tuple(r) for r in ours]) == repr([tuple(r) for r in theirs])  # repr: NaN and -0.0 too
    assert [tuple(r)[:7] for r in ours] == [r[:7] for r in rows]
