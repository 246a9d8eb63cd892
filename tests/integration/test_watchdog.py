"""The watchdog on the real stack: silence becomes crashed/preempted, once, however many watchdogs look.

The runs here start 240 s in the past and the in-process watchdogs use a 120 s timeout, so they
find them at once while the stack's own watchdog (300 s) leaves them alone during the test; the
reason "(timeout 120s)" then shows which watchdog decided. Had the stack's watchdog got there
first, its copy would carry the same id and seq, and the tests' "exactly one" would still hold.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from consumers.watchdog import Watchdog
from events import Event, InitPayload, RunInit, RunPreempting, RunRef, Source, utcnow
from events.ids import new_writer_id
from events.settings import Settings

from .helpers import eventually_async, send

pytestmark = pytest.mark.integration

TIMEOUT = 120.0
AGE = 240.0


def dog_settings() -> Settings:
    return Settings(crash_timeout=TIMEOUT, watchdog_interval=0.2)


async def start_old_run(producer: AIOKafkaProducer, settings: Settings, pool: asyncpg.Pool, project: str,
                        preempting: bool = False) -> RunRef:
    """A run whose init (and mark_preempting) happened AGE seconds ago, then nothing."""
    run = RunRef(entity="tester", project=project, run_id="r1")
    src = Source(kind="sdk", writer=new_writer_id(), rank=0)
    t0 = utcnow() - timedelta(seconds=AGE)
    events: list[Event] = [RunInit(run=run, source=src, seq=0, time=t0, payload=InitPayload(name="quiet"))]
    if preempting:
        events.append(RunPreempting(run=run, source=src, seq=1, time=t0 + timedelta(seconds=1)))
    await send(producer, settings, *events)
    want = "preempting" if preempting else "running"
    await eventually_async(lambda: state_is(pool, project, want))
    return run


async def state_is(pool: asyncpg.Pool, project: str, state: str) -> bool:
    return await pool.fetchval("SELECT state FROM runs WHERE entity = 'tester' AND project = $1", project) == state


async def transitions(pool: asyncpg.Pool, project: str, to_state: str) -> list[asyncpg.Record]:
    return await pool.fetch(
        """SELECT t.* FROM state_transitions t JOIN runs r ON r.pk = t.run_pk
           WHERE r.entity = 'tester' AND r.project = $1 AND t.to_state = $2 ORDER BY t.id""",
        project, to_state,
    )


async def test_a_silent_running_run_is_marked_crashed_by_the_watchdog(
        local_stack: Settings, kafka_producer: AIOKafkaProducer, pool: asyncpg.Pool, project: str,
        tmp_path: Path) -> None:
    run = await start_old_run(kafka_producer, local_stack, pool, project)
    ready = tmp_path / "watchdog.ready"
    dog = Watchdog(dog_settings(), ready)
    await dog.start()
    try:
        await eventually_async(lambda: state_is(pool, project, "crashed"))
        assert ready.exists()  # marked ready after its first good scan
    finally:
        await dog.stop()
    assert not ready.exists()
    [t] = await transitions(pool, project, "crashed")
    assert (t["from_state"], t["accepted"], t["actor"]) == ("running", True, "watchdog")
    assert t["reason"].startswith("no heartbeat for ") and t["reason"].endswith(f"(timeout {TIMEOUT:g}s)")
    stored = await pool.fetch("SELECT id, writer, event_time FROM event_store WHERE run_path = $1 "
                              "AND type = 'run.crashed'", run.path)
    assert len(stored) == 1 and stored[0]["id"] == t["event_id"] and stored[0]["writer"] == "watchdog"
    row = await pool.fetchrow("SELECT heartbeat_at FROM runs WHERE entity = 'tester' AND project = $1", project)
    # the verdict is dated by the rule (last sign of life + timeout), not by the watchdog's clock
    assert stored[0]["event_time"] == row["heartbeat_at"] + timedelta(seconds=TIMEOUT)


async def test_two_watchdogs_at_once_crash_a_run_exactly_once(
        local_stack: Settings, kafka_producer: AIOKafkaProducer, pool: asyncpg.Pool, project: str) -> None:
    run = await start_old_run(kafka_producer, local_stack, pool, project)
    a, b = Watchdog(dog_settings(), None), Watchdog(dog_settings(), None)
    try:
        # Both decide from the same database state before either verdict is applied ...
        found_a, found_b = await asyncio.gather(a.find(), b.find())
        mine_a = [e for e in found_a if e.run == run]
        mine_b = [e for e in found_b if e.run == run]
        assert len(mine_a) == len(mine_b) == 1
        assert (mine_a[0].id, mine_a[0].seq, mine_a[0].time) == (mine_b[0].id, mine_b[0].seq, mine_b[0].time)
        # ... both publish, and both keep scanning as the services would.
        await asyncio.gather(a.publish(mine_a), b.publish(mine_b))
        await asyncio.gather(a.start(), b.start())
        await eventually_async(lambda: state_is(pool, project, "crashed"))
        await asyncio.sleep(1.0)  # several more scans of each: nothing more may happen
    finally:
        await asyncio.gather(a.stop(), b.stop())
    rows = await transitions(pool, project, "crashed")
    assert [(t["accepted"], t["actor"], t["event_id"]) for t in rows] == [(True, "watchdog", mine_a[0].id)]
    assert await pool.fetchval("SELECT count(*) FROM event_store WHERE run_path = $1 AND type = 'run.crashed'",
                               run.path) == 1
    assert await pool.fetchval("SELECT last_seq FROM writers WHERE writer = 'watchdog' AND run_path = $1",
                               run.path) == mine_a[0].seq
    # A restarted watchdog that repeats the verdict changes nothing either.
    again = Watchdog(dog_settings(), None)
    try:
        await again.publish(mine_a)
        await asyncio.sleep(1.0)
    finally:
        await again.stop()
    assert len(await transitions(pool, project, "crashed")) == 1


async def test_a_silent_preempting_run_is_marked_preempted(
        local_stack: Settings, kafka_producer: AIOKafkaProducer, pool: asyncpg.Pool, project: str) -> None:
    await start_old_run(kafka_producer, local_stack, pool, project, preempting=True)
    dog = Watchdog(dog_settings(), None)
    await dog.start()
    try:
        await eventually_async(lambda: state_is(pool, project, "preempted"))
    finally:
        await dog.stop()
    [t] = await transitions(pool, project, "preempted")
    assert (t["from_state"], t["accepted"], t["actor"]) == ("preempting", True, "watchdog")
    assert t["reason"].endswith("after preempting")
    assert await transitions(pool, project, "crashed") == []


async def test_a_run_that_is_alive_is_left_alone(
        local_stack: Settings, kafka_producer: AIOKafkaProducer, pool: asyncpg.Pool, project: str) -> None:
    run = RunRef(entity="tester", project=project, run_id="r1")
    await send(kafka_producer, local_stack,
               RunInit(run=run, source=Source(kind="sdk", writer=new_writer_id(), rank=0), seq=0))
    await eventually_async(lambda: state_is(pool, project, "running"))
    dog = Watchdog(dog_settings(), None)
    try:
        assert [e for e in await dog.find() if e.run == run] == []
    finally:
        await dog.stop()


async def test_kafka_away_the_watchdog_warns_keeps_trying_and_is_not_ready(
        local_stack: Settings, kafka_producer: AIOKafkaProducer, pool: asyncpg.Pool, project: str,
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    await start_old_run(kafka_producer, local_stack, pool, project)  # something to publish
    ready = tmp_path / "watchdog.ready"
    dog = Watchdog(Settings(bootstrap_servers="127.0.0.1:1", crash_timeout=TIMEOUT, watchdog_interval=0.1), ready)
    with caplog.at_level("WARNING", logger="runlog.watchdog"):
        await dog.start()
        try:
            await eventually_async(lambda: _count_warnings(caplog, 2))
            assert dog._task is not None and not dog._task.done()
            assert not ready.exists() and dog.published == 0
        finally:
            await dog.stop()
    assert await state_is(pool, project, "running")


async def _count_warnings(caplog: pytest.LogCaptureFixture, n: int) -> bool:
    return sum("scan failed" in r.getMessage() for r in caplog.records) >= n
