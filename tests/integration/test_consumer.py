"""The projection consumer on real Kafka and PostgreSQL: dead letters, duplicates, exactly-once offsets."""

from __future__ import annotations

import uuid

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from consumers.postgres import Record, apply_batch
from events import FinishPayload, InitPayload, LogPayload, LogRow, RunFinish, RunInit, RunLog, RunRef, Source, encode
from events.ids import new_writer_id
from events.settings import Settings
from projections.migrate import migrate
from projections.db import HISTORY_POINTS

from .helpers import eventually_async, send

pytestmark = pytest.mark.integration


def run_events(project: str, steps: int = 3) -> list:
    run = RunRef(entity="tester", project=project, run_id="r1")
    src = Source(kind="sdk", writer=new_writer_id(), rank=0)
    events = [RunInit(run=run, source=src, seq=0, payload=InitPayload(name="n", tags=["t"]))]
    events += [RunLog(run=run, source=src, seq=i + 1, payload=LogPayload(step=i, values={"x": float(i)}))
               for i in range(steps)]
    events.append(RunFinish(run=run, source=src, seq=steps + 1, payload=FinishPayload(exit_code=0)))
    return events


async def run_row(pool: asyncpg.Pool, project: str) -> asyncpg.Record | None:
    return await pool.fetchrow("SELECT * FROM runs WHERE entity = 'tester' AND project = $1", project)


async def test_undecodable_and_invalid_events_go_to_the_dead_letter_topic_with_reason_and_bytes(
        local_stack: Settings, kafka_producer: AIOKafkaProducer, pool: asyncpg.Pool, project: str) -> None:
    garbage = f"not json {uuid.uuid4()}".encode()
    unknown = b'{"type": "run.teleport", "marker": "' + uuid.uuid4().hex.encode() + b'"}'
    good = run_events(project)
    await kafka_producer.send_and_wait(local_stack.events_topic, garbage, key=good[0].key)
    await kafka_producer.send_and_wait(local_stack.events_topic, unknown, key=good[0].key)
    await send(kafka_producer, local_stack, *good)  # the consumer keeps going after bad records

    row = await eventually_async(lambda: _finished(pool, project))
    assert row["state"] == "finished"

    found = await dead_letters(local_stack)
    assert found[garbage]["runlog-reason"] == b"undecodable"
    assert found[unknown]["runlog-reason"] == b"unknown_type"
    assert b"run.teleport" in found[unknown]["runlog-error"]
    assert found[garbage]["runlog-source"].startswith(local_stack.events_topic.encode() + b"/")


async def dead_letters(local_stack: Settings) -> dict[bytes, dict[str, bytes]]:
    """Every record of the dead-letter topic so far: its bytes -> its headers."""
    dlq = AIOKafkaConsumer(bootstrap_servers=local_stack.bootstrap_servers, auto_offset_reset="earliest",
                           enable_auto_commit=False)
    await dlq.start()
    try:
        tp = TopicPartition(local_stack.dlq_topic, 0)
        dlq.assign([tp])
        await dlq.seek_to_beginning(tp)
        found: dict[bytes, dict[str, bytes]] = {}
        end = (await dlq.end_offsets([tp]))[tp]
        while (await dlq.position(tp)) < end:
            for records in (await dlq.getmany(timeout_ms=1000)).values():
                for rec in records:
                    found[rec.value] = dict(rec.headers)
    finally:
        await dlq.stop()
    return found


async def _finished(pool: asyncpg.Pool, project: str) -> asyncpg.Record | None:
    row = await run_row(pool, project)
    return row if row is not None and row["state"] == "finished" else None


async def test_a_resent_event_is_applied_once(local_stack: Settings, kafka_producer: AIOKafkaProducer,
                                               pool: asyncpg.Pool, project: str) -> None:
    events = run_events(project, steps=3)
    await send(kafka_producer, local_stack, *events[:-1], *events[1:3], *events[-1:])  # two logs sent twice
    row = await eventually_async(lambda: _finished(pool, project))
    assert await pool.fetchval("SELECT count(*) FROM event_store WHERE run_path = $1", events[0].run.path) == 5
    assert await pool.fetchval(f"SELECT count(*) FROM {HISTORY_POINTS} h WHERE run_pk = $1", row["pk"]) == 3
    transitions = await pool.fetch("SELECT from_state, to_state, accepted FROM state_transitions WHERE run_pk = $1 "
                                   "ORDER BY id", row["pk"])
    assert [tuple(t) for t in transitions] == [(None, "running", True), ("running", "finished", True)]


async def test_a_redelivered_batch_changes_nothing_and_offsets_only_move_forward(
        local_stack: Settings, pool: asyncpg.Pool, project: str) -> None:
    """The consumer's transaction on its own: the same Kafka records applied twice (a crash
    between the database commit and Kafka's commit) must apply once."""
    group, topic = f"g-{project}", "test-topic"
    events = run_events(project, steps=4)
    records = [Record(partition=0, offset=100 + i, event=e, body=encode(e)) for i, e in enumerate(events)]
    async with pool.acquire() as conn:
        first = await apply_batch(conn, group, topic, records, {0: 100 + len(records)})
        again = await apply_batch(conn, group, topic, records, {0: 100 + len(records)})
        # A batch overlapping the stored position applies only the records past it.
        partial = await apply_batch(conn, group, topic, records[-2:], {0: 100 + len(records) - 1})
    assert (first.applied, again.applied, partial.applied) == (len(records), 0, 0)
    assert again.skipped_offsets == len(records)
    stored = await pool.fetchval("SELECT next_offset FROM consumer_offsets WHERE group_id = $1 AND topic = $2 "
                                 "AND partition = 0", group, topic)
    assert stored == 100 + len(records)
    row = await run_row(pool, project)
    assert row is not None and row["state"] == "finished"
    assert await pool.fetchval(f"SELECT count(*) FROM {HISTORY_POINTS} h WHERE run_pk = $1", row["pk"]) == 4


async def test_a_gap_in_a_writers_seq_is_recorded(local_stack: Settings, pool: asyncpg.Pool, project: str) -> None:
    events = run_events(project, steps=5)
    kept = [events[0], events[1], events[4], events[5], events[6]]  # seq 2 and 3 never arrive
    records = [Record(partition=0, offset=i, event=e, body=encode(e)) for i, e in enumerate(kept)]
    async with pool.acquire() as conn:
        await apply_batch(conn, f"g-{project}", "test-topic", records, {0: len(records)})
    gaps = await pool.fetchval("SELECT gaps FROM writers WHERE writer = $1", events[0].source.writer)
    assert gaps == 2


async def test_a_packed_log_covers_the_seqs_of_its_rows(local_stack: Settings, pool: asyncpg.Pool,
                                                       project: str) -> None:
    """Rows 1-3 in one run.log (seq 1, two more rows): seq 4 next is no gap; the pack resent, or a
    single row inside it arriving late, is a duplicate and changes nothing."""
    init, *logs, finish = run_events(project, steps=3)
    rows = [LogRow(step=e.payload.step, values=e.payload.values) for e in logs[1:]]
    pack = logs[0].model_copy(update={"payload": LogPayload(step=0, values=logs[0].payload.values, more=rows)})
    assert (pack.seq, pack.last_seq, finish.seq) == (1, 3, 4)
    records = [Record(0, i, e, encode(e)) for i, e in enumerate([init, pack, finish, pack, logs[1]])]
    async with pool.acquire() as conn:
        await apply_batch(conn, f"g-{project}", "test-topic", records, {0: len(records)})
    writer = await pool.fetchrow("SELECT last_seq, gaps, duplicates FROM writers WHERE writer = $1",
                                 init.source.writer)
    assert tuple(writer) == (4, 0, 1)  # the resent pack is dropped by its id; the late row by its seq
    row = await run_row(pool, project)
    assert row is not None and row["state"] == "finished" and row["last_step"] == 2
    history = await pool.fetch(f"SELECT step, value FROM {HISTORY_POINTS} h WHERE run_pk = $1 ORDER BY step", row["pk"])
    assert [(h["step"], h["value"]) for h in history] == [(0, 0.0), (1, 1.0), (2, 2.0)]


async def test_migrations_are_recorded_and_safe_to_run_twice(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        assert await migrate(conn) == []
        versions = [r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations ORDER BY 1")]
    assert versions[0] == 1


async def test_an_event_postgresql_refuses_is_dead_lettered_and_the_rest_of_its_batch_applied(
        local_stack: Settings, kafka_producer: AIOKafkaProducer, pool: asyncpg.Pool, project: str) -> None:
    """A string with a NUL character is valid JSON and a valid event, but jsonb refuses it: the
    slice it came in fails as a whole. Its events are then applied one by one; that one goes to
    the dead-letter topic with the error, and everything before and after it is applied."""
    events = run_events(project, steps=4)
    poison = events[2].model_copy(update={"payload": LogPayload(step=1, values={"x": 1.0, "note": "a\x00b"})})
    events[2] = poison
    await send(kafka_producer, local_stack, *events)

    row = await eventually_async(lambda: _finished(pool, project))
    history = await pool.fetch(f"SELECT step, value FROM {HISTORY_POINTS} h WHERE run_pk = $1 ORDER BY step",
                               row["pk"])
    assert [(h["step"], h["value"]) for h in history] == [(0, 0.0), (2, 2.0), (3, 3.0)]
    gaps = await pool.fetchval("SELECT gaps FROM writers WHERE writer = $1", poison.source.writer)
    assert gaps == 1  # the missing seq is on record, as for any event that never arrived

    found = await dead_letters(local_stack)
    headers = found[encode(poison)]
    assert headers["runlog-reason"] == b"unappliable"
    assert b"could not be applied" in headers["runlog-error"]
