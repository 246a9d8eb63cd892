"""Scale-out: three consumer processes in one group; one is SIGKILLed mid-stream; nothing is lost
and nothing is applied twice, so the read models equal a fold of exactly the events sent."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from events import (Event, FinishPayload, InitPayload, LogPayload, RunFinish, RunInit, RunLog, RunRef, RunTags,
                    Source, TagsPayload, encode, utcnow)
from events.settings import Settings
from projections.fold import HistoryColumn, RunState, fold, history_points
from projections.db import HISTORY_POINTS

from .helpers import create_topic, eventually_async

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RUNS, LOGS_PER_RUN = 30, 60


def stream(project: str) -> dict[str, list[Event]]:
    """The events of each run, in the order its writer sends them. Times are now-ish: the stack's
    own watchdog must not judge these runs silent while the test runs."""
    T0 = utcnow()  # noqa: N806
    out: dict[str, list[Event]] = {}
    for i in range(RUNS):
        run = RunRef(entity="tester", project=project, run_id=f"r{i:02d}")
        src = Source(kind="sdk", writer=f"w{i}", rank=0)
        events: list[Event] = [RunInit(run=run, source=src, seq=0, time=T0, payload=InitPayload(tags=["a"]))]
        for step in range(LOGS_PER_RUN):
            events.append(RunLog(run=run, source=src, seq=len(events), time=T0 + timedelta(seconds=step + 1),
                                 payload=LogPayload(step=step, values={"loss": 1 / (step + 1), "i": i})))
            if step == LOGS_PER_RUN // 2:
                events.append(RunTags(run=run, source=src, seq=len(events), time=T0 + timedelta(seconds=step + 1),
                                      payload=TagsPayload(add=["half"], remove=["a"])))
        events.append(RunFinish(run=run, source=src, seq=len(events), time=T0 + timedelta(seconds=LOGS_PER_RUN + 1),
                                payload=FinishPayload(exit_code=i % 2)))
        out[run.path] = events
    return out


def start_consumer(env: dict[str, str], home: Path, n: int) -> subprocess.Popen[bytes]:
    with (home / f"consumer-{n}.log").open("wb") as log:
        return subprocess.Popen([sys.executable, "-m", "consumers", f"--runlog-home={home}"], env=env,
                                stdout=log, stderr=subprocess.STDOUT)


async def test_sigkill_of_one_consumer_loses_nothing_and_applies_nothing_twice(
        local_stack: Settings, pool: asyncpg.Pool, project: str, tmp_path: Path) -> None:
    topic = await create_topic(local_stack.bootstrap_servers, 6)
    group = f"g-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "RUNLOG_EVENTS_TOPIC": topic, "RUNLOG_CONSUMER_GROUP": group}
    consumers = [start_consumer(env, tmp_path, n) for n in range(3)]
    runs = stream(project)
    producer = AIOKafkaProducer(bootstrap_servers=local_stack.bootstrap_servers, acks="all", linger_ms=5)
    await producer.start()
    try:
        await eventually_async(lambda: _ready(tmp_path), timeout=60)
        total = sum(len(e) for e in runs.values())
        sent = 0
        for position in range(max(len(e) for e in runs.values())):
            for events in runs.values():
                if position < len(events):
                    await producer.send(topic, encode(events[position]), key=events[position].key)
                    sent += 1
            if sent >= total // 3 and consumers[0].poll() is None:
                await producer.flush()
                await asyncio.sleep(0.3)  # let it be mid-batch with work in flight
                consumers[0].send_signal(signal.SIGKILL)
                consumers[0].wait()
            if position % 10 == 0:
                await producer.flush()
        await producer.flush()

        async def all_finished() -> bool:
            n = await pool.fetchval("SELECT count(*) FROM runs WHERE entity = 'tester' AND project = $1 "
                                    "AND state IN ('finished', 'failed')", project)
            return bool(n == RUNS)

        await eventually_async(all_finished, timeout=120)
    finally:
        await producer.stop()
        for c in consumers[1:]:
            c.send_signal(signal.SIGTERM)
        for c in consumers[1:]:
            c.wait(timeout=30)

    assert consumers[0].returncode == -signal.SIGKILL
    stored = await pool.fetchval("SELECT count(*) FROM event_store WHERE run_path LIKE $1", f"tester/{project}/%")
    assert stored == total  # none lost, none stored twice
    for path, events in runs.items():
        expected: RunState | None = None
        history: dict[tuple[str, int], float | None] = {}
        transitions = []
        for event in events:
            expected, rows = fold(expected, event)
            for point in history_points(rows):
                history[(point.key, point.step)] = point.value
            transitions += [row for row in rows if not isinstance(row, HistoryColumn)]
        assert expected is not None
        entity, proj, run_id = path.split("/")
        row = await pool.fetchrow("SELECT * FROM runs WHERE entity = $1 AND project = $2 AND run_id = $3",
                                  entity, proj, run_id)
        assert (row["state"], tuple(row["tags"]), row["summary"], row["last_step"]) == (
            expected.state, expected.tags, expected.summary, expected.last_step)
        got = {(r["key"], r["step"]): r["value"] for r in
               await pool.fetch(f"SELECT key, step, value FROM {HISTORY_POINTS} h WHERE run_pk = $1", row["pk"])}
        assert got == history
        assert await pool.fetchval("SELECT count(*) FROM state_transitions WHERE run_pk = $1",
                                   row["pk"]) == len(transitions)  # not applied twice
        assert await pool.fetchval("SELECT gaps + duplicates FROM writers WHERE run_path = $1", path) == 0


async def _ready(home: Path) -> bool:
    return (home / "run" / "consumer.ready").exists()
