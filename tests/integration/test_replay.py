"""Live projections equal a full replay, row for row, whatever the batching, resends and redeliveries.

Each test works in a schema of its own (the code uses unqualified names, so ``search_path``
isolates it), on the real PostgreSQL of the test stack.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest.mock import patch

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import consumers.postgres
import consumers.replay
from consumers.postgres import Record, apply_batch
from consumers.replay import KEPT_TABLES, READ_MODEL_TABLES, READ_MODEL_VIEWS, replay
from events import (AlertPayload, Event, FinishPayload, HeartbeatPayload, InitPayload, LogPayload, LogRow, MetricPayload,
                    RunAlert, RunFinish, RunHeartbeat, RunInit, RunLog, RunMetric, RunPreempting, RunRef,
                    RunSummary, RunTags, Source, SummaryPayload, TagsPayload, encode)
from events.settings import Settings
from projections.db import BLOCK_POINTS, HISTORY_POINTS, MIN_BLOCK_POINTS

from .helpers import Scoped, create_topic

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 1, tzinfo=UTC)

# history_blocks is compared on its invariants (sql/0011_history_blocks.sql), which must hold in
# both: no step both in a block and in `history`, no two blocks of a key overlapping, sizes right.
BLOCKS_BROKEN = """
SELECT 'in both', b.run_pk, b.key, h.step FROM history_blocks b
JOIN history h ON h.run_pk = b.run_pk AND h.key = b.key AND h.step BETWEEN b.first_step AND b.last_step
WHERE b.steps IS NULL OR h.step = ANY(b.steps)
UNION ALL
SELECT 'overlap', a.run_pk, a.key, a.first_step FROM history_blocks a
JOIN history_blocks b ON b.run_pk = a.run_pk AND b.key = a.key AND b.first_step > a.first_step
WHERE b.first_step <= a.last_step
UNION ALL
SELECT 'size', run_pk, key, first_step FROM history_blocks
WHERE n <> cardinality(vals) OR (steps IS NULL AND last_step - first_step + 1 <> n)
   OR (steps IS NOT NULL AND (cardinality(steps) <> n OR steps[1] <> first_step OR steps[n] <> last_step))
"""

# What a read model row is compared on: everything but surrogate keys and wall-clock stamps.
RUN_KEY = "(SELECT entity || '/' || project || '/' || run_id FROM runs r WHERE r.pk = t.run_pk)"
DUMPS = {
    "runs": "SELECT to_jsonb(t) - 'pk' - 'changed_xid' FROM runs t ORDER BY entity, project, run_id",  # ids differ by design
    # The points, wherever they are stored: which of them are in blocks depends on batch sizes.
    "history": f"SELECT {RUN_KEY}, key, step, value::text, value_json, rank FROM {HISTORY_POINTS} t ORDER BY 1, 2, 3",
    "history_blocks": BLOCKS_BROKEN,
    "history_chunks": f"SELECT {RUN_KEY}, key, chunk, n, first_step, last_step, lo::text, hi::text "
                      "FROM history_chunks t ORDER BY 1, 2, 3",
    "state_transitions": f"SELECT {RUN_KEY}, from_state, to_state, accepted, event_time, event_id, actor, reason "
                         "FROM state_transitions t ORDER BY 1, event_time, id",
    "writers": "SELECT writer, run_path, source_kind, rank, last_seq, gaps, duplicates FROM writers ORDER BY 1, 2",
    "metric_definitions": f"SELECT {RUN_KEY}, name, definition, defined_at FROM metric_definitions t ORDER BY 1, 2",
    "alerts": f"SELECT {RUN_KEY}, title, text, level, wait_duration, event_time, event_id, actor, suppressed, reason "
              "FROM alerts t ORDER BY 1, event_time, id",
    "projects": "SELECT to_jsonb(t) FROM projects t ORDER BY entity, project",
}


async def dump(conn: asyncpg.Connection) -> dict[str, list[tuple[Any, ...]]]:
    return {name: [tuple(r) for r in await conn.fetch(sql)] for name, sql in DUMPS.items()}


async def replay_in(scoped: Scoped) -> None:
    await replay(scoped.conn, live_schema=scoped.schema)
    await scoped.conn.execute(f"SET search_path TO {scoped.schema}")


def test_every_table_is_either_a_read_model_or_kept() -> None:
    """A new table must be classified, or replay would silently leave it stale."""
    assert set(DUMPS) == set(READ_MODEL_TABLES) | set(READ_MODEL_VIEWS)


async def test_schema_tables_are_all_classified(scoped: Scoped) -> None:
    tables = {r["tablename"] for r in await scoped.conn.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = $1", scoped.schema)}
    assert tables == set(READ_MODEL_TABLES) | set(KEPT_TABLES)


# --- random event streams --------------------------------------------------------------------------

value = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32), st.integers(-1000, 1000),
                  st.sampled_from(["a", "b"]), st.booleans())


@st.composite
def run_stream(draw: st.DrawFn, run: RunRef) -> list[Event]:
    """The events of one run from one or two writers, in a plausible but random order."""
    writers = [Source(kind="sdk", writer=f"w-{run.run_id}-{i}", rank=i) for i in range(draw(st.integers(1, 2)))]
    seqs = dict.fromkeys((w.writer for w in writers), 0)
    events: list[Event] = []
    clock = [0]

    def emit(cls: type[Event], payload: Any, writer: Source) -> None:
        clock[0] += draw(st.integers(1, 120))
        extra = {} if payload is None else {"payload": payload}
        events.append(cls(run=run, source=writer, seq=seqs[writer.writer], time=T0 + timedelta(seconds=clock[0]),
                          **extra))
        seqs[writer.writer] = events[-1].last_seq + 1  # a packed log holds one seq per row

    for w in writers:
        emit(RunInit, InitPayload(name=run.run_id, tags=draw(st.lists(st.sampled_from("xyz"), max_size=2))), w)
    for _ in range(draw(st.integers(0, 12))):
        w = draw(st.sampled_from(writers))
        kind = draw(st.sampled_from(["log", "log", "log", "tags", "summary", "metric", "alert", "heartbeat",
                                     "preempting"]))
        if kind == "log":  # one row, or a few packed together as the SDK does when they queue up
            rows = []
            for _ in range(draw(st.sampled_from([1, 1, 1, 2, 3]))):
                keys = draw(st.lists(st.sampled_from(["loss", "acc", "val/f1"]), min_size=1, max_size=3, unique=True))
                step = draw(st.one_of(st.integers(0, 20), st.integers(95, 105), st.integers(195, 205)))  # 3 chunks
                rows.append(LogRow(step=step, values={k: draw(value) for k in keys}))
            emit(RunLog, LogPayload(step=rows[0].step, values=rows[0].values, more=rows[1:]), w)
        elif kind == "tags":
            emit(RunTags, TagsPayload(add=draw(st.lists(st.sampled_from("xyz"), max_size=2)),
                                      remove=draw(st.lists(st.sampled_from("xyz"), max_size=1))), w)
        elif kind == "summary":
            emit(RunSummary, SummaryPayload(set={"loss": draw(value)}) if draw(st.booleans())
                 else SummaryPayload(remove=["loss"]), w)
        elif kind == "metric":
            emit(RunMetric, MetricPayload(name=draw(st.sampled_from(["loss", "val/*"])),
                                          summary=draw(st.lists(st.sampled_from(["min", "max", "mean", "best"]),
                                                                max_size=2, unique=True))), w)
        elif kind == "alert":
            emit(RunAlert, AlertPayload(title=draw(st.sampled_from(["t1", "t2"])), text="x",
                                        wait_duration=draw(st.sampled_from([None, 100.0]))), w)
        elif kind == "heartbeat":
            emit(RunHeartbeat, HeartbeatPayload(), w)
        else:
            emit(RunPreempting, None, w)
    if draw(st.booleans()):
        emit(RunFinish, FinishPayload(exit_code=draw(st.sampled_from([0, 1]))), writers[0])
    return events


@st.composite
def deliveries(draw: st.DrawFn) -> list[tuple[list[Record], dict[int, int]]]:
    """Kafka as the consumer sees it: runs spread over partitions, records cut into batches,
    some events resent later (new offset, same id), some batches delivered twice."""
    project = "p"
    partitions: dict[int, list[Event]] = {}
    for i in range(draw(st.integers(1, 3))):
        run = RunRef(entity="e", project=project, run_id=f"r{i}")
        stream = draw(run_stream(run))
        for event in list(stream):
            if draw(st.integers(0, 9)) == 0:
                stream.append(event)  # an SDK resend after a lost ack
        partitions.setdefault(draw(st.integers(0, 2)), []).extend(stream)
    logs = {p: [Record(p, off, e, encode(e)) for off, e in enumerate(events)] for p, events in partitions.items()}
    batches: list[tuple[list[Record], dict[int, int]]] = []
    cursors = dict.fromkeys(logs, 0)
    while any(cursors[p] < len(logs[p]) for p in logs):
        batch: list[Record] = []
        for p in logs:
            take = draw(st.integers(0, 4))
            batch += logs[p][cursors[p]:cursors[p] + take]
            cursors[p] += take
        if not batch:  # never an empty poll: take one record from the first partition with some left
            p = next(p for p in logs if cursors[p] < len(logs[p]))
            batch, cursors[p] = logs[p][cursors[p]:cursors[p] + 1], cursors[p] + 1
        consumed = {}
        for r in batch:
            consumed[r.partition] = max(consumed.get(r.partition, 0), r.offset + 1)
        batches.append((batch, consumed))
        if draw(st.integers(0, 4)) == 0:
            batches.append((batch, consumed))  # redelivered after a crash before Kafka's commit
    return batches


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow, HealthCheck.data_too_large,
                                                                 HealthCheck.large_base_example])
@given(stream=deliveries(), fewest=st.sampled_from([1, 2, MIN_BLOCK_POINTS]),
       most=st.sampled_from([2, 3, BLOCK_POINTS]), replay_batch=st.sampled_from([1, 3, consumers.replay.BATCH_FIRST]))
async def test_live_projections_equal_a_full_replay(scoped: Scoped, stream: list[tuple[list[Record], dict[int, int]]],
                                                    fewest: int, most: int, replay_batch: int) -> None:
    """With history blocks from a point up (the streams are short), split every few points, and
    replay batches of a few events (each next batch sized from the last one's stored bytes)."""
    conn = scoped.conn
    await conn.execute("TRUNCATE " + ", ".join([*READ_MODEL_TABLES, "event_store", "consumer_offsets"]))
    with (patch.object(consumers.postgres, "MIN_BLOCK_POINTS", fewest),
          patch.object(consumers.postgres, "BLOCK_POINTS", most),
          patch.object(consumers.replay, "BATCH_FIRST", replay_batch),
          patch.object(consumers.replay, "BATCH_BYTES", replay_batch * 300)):
        for records, consumed in stream:
            await apply_batch(conn, "g", "topic", records, consumed)
        live = await dump(conn)
        assert live["history_blocks"] == []  # the blocks' invariants hold
        assert await chunks_match_history(conn)
        await replay_in(scoped)
    assert await dump(conn) == live


async def chunks_match_history(conn: asyncpg.Connection) -> bool:
    """Every history chunk row equals the roll-up of its points, and every numeric point has one."""
    differences = await conn.fetchval(f"""
        WITH truth AS (
            SELECT run_pk, key, step / 100 AS chunk, count(*)::int AS n, min(step) AS first_step,
                   max(step) AS last_step, min(ARRAY[value, step::float8])::text AS lo,
                   max(ARRAY[value, -step::float8])::text AS hi
            FROM {HISTORY_POINTS} h WHERE value IS NOT NULL GROUP BY 1, 2, 3),
        stored AS (
            SELECT run_pk, key, chunk, n, first_step, last_step, lo::text, hi::text FROM history_chunks WHERE n > 0)
        SELECT count(*) FROM ((TABLE truth EXCEPT TABLE stored) UNION ALL (TABLE stored EXCEPT TABLE truth)) d""")
    return differences == 0


async def test_replay_rebuilds_a_damaged_read_model_and_keeps_nan(scoped: Scoped) -> None:
    conn = scoped.conn
    run = RunRef(entity="e", project="p", run_id="r")
    src = Source(kind="sdk", writer="w", rank=0)
    events: list[Event] = [RunInit(run=run, source=src, seq=0, time=T0, payload=InitPayload(tags=["a"]))]
    events += [RunLog(run=run, source=src, seq=i + 1, time=T0 + timedelta(seconds=i + 1),
                      payload=LogPayload(step=i, values={"loss": math.nan if i == 3 else float(i)})) for i in range(5)]
    records = [Record(0, i, e, encode(e)) for i, e in enumerate(events)]
    await apply_batch(conn, "g", "topic", records, {0: len(records)})
    live = await dump(conn)
    await conn.execute("UPDATE runs SET state = 'killed', tags = '{}'; DELETE FROM history WHERE step > 1")
    await replay_in(scoped)
    assert await dump(conn) == live
    assert math.isnan(await conn.fetchval("SELECT value FROM history WHERE step = 3"))
    # The live consumer writes on into the swapped-in tables.
    more = RunFinish(run=run, source=src, seq=6, time=T0 + timedelta(seconds=9), payload=FinishPayload())
    await apply_batch(conn, "g", "topic", [Record(0, 6, more, encode(more))], {0: 7})
    assert await conn.fetchval("SELECT state FROM runs") == "finished"


async def test_replay_from_kafka_rebuilds_the_event_store_and_takes_over_the_offsets(
        scoped: Scoped, local_stack: Settings) -> None:
    """A schema whose event store is gone: the topic alone rebuilds it and every read model,
    equal to what the live path built from the same records (a garbage record and a resend included)."""
    from aiokafka import AIOKafkaProducer
    
    from consumers.replay import KafkaSource

    topic = await create_topic(local_stack.bootstrap_servers, 3)
    runs = [RunRef(entity="e", project="p", run_id=f"r{i}") for i in range(4)]
    events: list[Event] = []
    for i, run in enumerate(runs):
        src = Source(kind="sdk", writer=f"w{i}", rank=0)
        events.append(RunInit(run=run, source=src, seq=0, time=T0, payload=InitPayload(tags=["a"])))
        events += [RunLog(run=run, source=src, seq=s + 1, time=T0 + timedelta(seconds=s + 1),
                          payload=LogPayload(step=s, values={"loss": 1 / (s + 1)})) for s in range(20)]
        events.append(RunFinish(run=run, source=src, seq=21, time=T0 + timedelta(seconds=30), payload=FinishPayload()))
    producer = AIOKafkaProducer(bootstrap_servers=local_stack.bootstrap_servers, acks="all")
    await producer.start()
    sent: list[Record] = []
    try:
        for e in [*events, events[5]]:  # the last one a resend
            meta = await producer.send_and_wait(topic, encode(e), key=e.key)
            sent.append(Record(meta.partition, meta.offset, e, encode(e)))
        await producer.send_and_wait(topic, b"garbage", key=b"e/p/r0")
    finally:
        await producer.stop()

    conn = scoped.conn
    consumed: dict[int, int] = {}
    for r in sent:
        consumed[r.partition] = max(consumed.get(r.partition, 0), r.offset + 1)
    await apply_batch(conn, "g", topic, sent, consumed)
    live = await dump(conn)
    await conn.execute("TRUNCATE event_store, runs, history, state_transitions, writers, consumer_offsets")

    result = await replay(conn, live_schema=scoped.schema,
                          from_kafka=KafkaSource(local_stack.bootstrap_servers, topic, "g"))
    await conn.execute(f"SET search_path TO {scoped.schema}")
    assert (result.events, result.undecodable) == (len(sent) + 1, 1)
    assert await dump(conn) == live
    assert await conn.fetchval("SELECT count(*) FROM event_store") == len(events)
    ends = {r["partition"]: r["next_offset"] for r in await conn.fetch(
        "SELECT partition, next_offset FROM consumer_offsets WHERE group_id = 'g' AND topic = $1", topic)}
    assert sum(ends.values()) == len(sent) + 1  # every record, the garbage one included, is behind the group


async def test_replay_in_worker_processes_equals_live(scoped: Scoped, local_stack: Settings) -> None:
    """The bulk fold split over two processes by run builds the same read models as the live path."""
    conn = scoped.conn
    events: list[Event] = []
    for i in range(8):
        run = RunRef(entity="e", project=f"p{i % 2}", run_id=f"r{i}")
        src = Source(kind="sdk", writer=f"w{i}", rank=0)
        events.append(RunInit(run=run, source=src, seq=0, time=T0, payload=InitPayload(tags=["a"])))
        events += [RunLog(run=run, source=src, seq=s + 1, time=T0 + timedelta(seconds=s + 1),
                          payload=LogPayload(step=s * 7, values={"loss": math.nan if s == 3 else 1 / (s + 1),
                                                                 "acc": s * i})) for s in range(30)]
        events.append(RunTags(run=run, source=src, seq=31, time=T0 + timedelta(seconds=40),
                              payload=TagsPayload(add=["b"], remove=["a"])))
        events.append(RunAlert(run=run, source=src, seq=32, time=T0 + timedelta(seconds=41),
                               payload=AlertPayload(title="t", text="x")))
        if i % 3:
            events.append(RunFinish(run=run, source=src, seq=33, time=T0 + timedelta(seconds=50),
                                    payload=FinishPayload(exit_code=i % 2)))
    offsets = [0, 0, 0]
    records = []
    for e in [*events, events[5]]:  # the last one a resend: stored and applied once
        p = int(e.run.run_id[1:]) % 3  # a run's events share a partition (the run path is the key)
        records.append(Record(p, offsets[p], e, encode(e)))
        offsets[p] += 1
    await apply_batch(conn, "g", "topic", records, dict(enumerate(offsets)))
    live = await dump(conn)
    await conn.execute("UPDATE runs SET state = 'killed', tags = '{}'; DELETE FROM history WHERE step > 50; "
                       "DELETE FROM history_blocks WHERE last_step > 50")

    result = await replay(conn, live_schema=scoped.schema, workers=2, dsn=local_stack.database_url,
                          parallel_min_events=0)
    await conn.execute(f"SET search_path TO {scoped.schema}")
    assert await dump(conn) == live
    assert (result.events, result.applied, result.undecodable) == (len(events), len(events), 0)
    assert await chunks_match_history(conn)


async def test_a_failed_replay_worker_fails_the_replay_and_swaps_nothing(scoped: Scoped) -> None:
    conn = scoped.conn
    run = RunRef(entity="e", project="p", run_id="r")
    src = Source(kind="sdk", writer="w", rank=0)
    events: list[Event] = [RunInit(run=run, source=src, seq=0, time=T0, payload=InitPayload(tags=["a"]))]
    await apply_batch(conn, "g", "topic", [Record(0, 0, events[0], encode(events[0]))], {0: 1})
    await conn.execute("UPDATE runs SET tags = '{damaged}'")
    with pytest.raises(RuntimeError, match="replay worker failed"):
        # nothing listens on port 1: the workers cannot connect and exit with an error
        await replay(conn, live_schema=scoped.schema, workers=2, dsn="postgresql://runlog@127.0.0.1:1/runlog",
                     parallel_min_events=0)
    await conn.execute(f"SET search_path TO {scoped.schema}")
    assert await conn.fetchval("SELECT tags FROM runs") == ["damaged"]


async def test_a_big_packed_log_is_stored_compressed_and_replays_and_reads_back(scoped: Scoped) -> None:
    """Bodies of 2 KiB and more are kept compressed (LZ4) in event_store; replay and the API's
    raw events read them back as the events they were."""
    from api.queries import events_page
    from projections.db import LZ4_MAGIC

    conn = scoped.conn
    run = RunRef(entity="e", project="p", run_id="big")
    src = Source(kind="sdk", writer="w", rank=0)
    rows = [LogRow(step=s, values={f"k{j}": s * 0.5 + j for j in range(10)}) for s in range(1, 100)]
    events: list[Event] = [
        RunInit(run=run, source=src, seq=0, time=T0, payload=InitPayload()),
        RunLog(run=run, source=src, seq=1, time=T0, payload=LogPayload(step=0, values={"k0": 0.0}, more=rows)),
    ]
    await apply_batch(conn, "g", "topic", [Record(0, i, e, encode(e)) for i, e in enumerate(events)], {0: 2})
    stored = await conn.fetch("SELECT body FROM event_store ORDER BY pos")
    assert stored[0]["body"] == encode(events[0])  # small: as it came
    assert stored[1]["body"][:4] == LZ4_MAGIC and len(stored[1]["body"]) < len(encode(events[1])) / 1.5
    page, _ = await events_page(conn, "e/p/big", 0, 10)
    assert [e["seq"] for e in page] == [0, 1] and len(page[1]["payload"]["more"]) == 99
    live = await dump(conn)
    await replay_in(scoped)
    assert await dump(conn) == live
