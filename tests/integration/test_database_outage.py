"""PostgreSQL goes away under a running consumer: it backs off without advancing, then catches up.

The outage is real: the consumer talks to the real PostgreSQL through a TCP relay in this test,
and the relay is cut (listener closed, every open connection reset) and later restored.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from consumers.app import Projector
from events import FinishPayload, InitPayload, LogPayload, RunFinish, RunInit, RunLog, RunRef, Source, encode
from events.settings import Settings
from projections.db import HISTORY_POINTS

from .helpers import create_topic, eventually_async

pytestmark = pytest.mark.integration


class Relay:
    """A cuttable TCP relay from 127.0.0.1:<port> to the real server."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def up(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def down(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in list(self.writers):
            w.transport.abort()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.writers |= {writer, up_writer}

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        self.writers -= {writer, up_writer}


def run_events(project: str, run_id: str, steps: int) -> list:
    run = RunRef(entity="tester", project=project, run_id=run_id)
    src = Source(kind="sdk", writer=uuid.uuid4().hex, rank=0)
    events = [RunInit(run=run, source=src, seq=0, payload=InitPayload())]
    events += [RunLog(run=run, source=src, seq=i + 1, payload=LogPayload(step=i, values={"x": float(i)}))
               for i in range(steps)]
    return [*events, RunFinish(run=run, source=src, seq=steps + 1, payload=FinishPayload())]


async def test_consumer_waits_out_a_database_outage_and_catches_up_exactly_once(
        local_stack: Settings, pool: asyncpg.Pool, project: str, tmp_path: Path) -> None:
    topic = await create_topic(local_stack.bootstrap_servers, 2)
    group = f"g-{uuid.uuid4().hex[:8]}"
    relay = Relay(local_stack.pg_host, local_stack.pg_port)
    await relay.up()
    settings = Settings(events_topic=topic, consumer_group=group,
                        database_url=f"postgresql://{local_stack.pg_user}@127.0.0.1:{relay.port}/{local_stack.pg_database}")
    projector = Projector(settings, tmp_path / "ready")
    await projector.start()
    producer = AIOKafkaProducer(bootstrap_servers=local_stack.bootstrap_servers, acks="all")
    await producer.start()

    async def state(run_id: str) -> str | None:
        return await pool.fetchval("SELECT state FROM runs WHERE entity = 'tester' AND project = $1 AND run_id = $2",
                                   project, run_id)

    async def offsets() -> int:
        return await pool.fetchval("SELECT coalesce(sum(next_offset), 0) FROM consumer_offsets "
                                   "WHERE group_id = $1", group)

    try:
        await eventually_async(lambda: _exists(tmp_path / "ready"), timeout=30)
        for e in run_events(project, "before", 5):
            await producer.send_and_wait(topic, encode(e), key=e.key)
        await eventually_async(lambda: _is(state("before"), "finished"))
        applied_before = await offsets()

        await relay.down()
        during = run_events(project, "during", 50)
        for e in during:
            await producer.send_and_wait(topic, encode(e), key=e.key)
        await asyncio.sleep(3)  # several retries against a database that is not there
        assert await state("during") is None
        assert await offsets() == applied_before  # nothing advanced while the database was away

        await relay.up()
        await eventually_async(lambda: _is(state("during"), "finished"), timeout=60)
        assert await offsets() == applied_before + len(during)
        pk = await pool.fetchval("SELECT pk FROM runs WHERE project = $1 AND run_id = 'during'", project)
        assert await pool.fetchval(f"SELECT count(*) FROM {HISTORY_POINTS} h WHERE run_pk = $1", pk) == 50
        assert await pool.fetchval("SELECT count(*) FROM state_transitions WHERE run_pk = $1", pk) == 2
    finally:
        await producer.stop()
        await projector.stop()
        with contextlib.suppress(Exception):
            await relay.down()


async def _exists(path: Path) -> bool:
    return path.exists()


async def _is(value: object, expected: str) -> bool:
    return await value == expected  # type: ignore[misc]
