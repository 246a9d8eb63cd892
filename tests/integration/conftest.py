"""The real local stack for integration tests: started once per session (or reused if up).

Set RUNLOG_TEST_KEEP=1 to leave a stack this session started running for the next one.
Tests isolate themselves with unique project names and run ids, never by cleaning tables.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from deploy import stack
from events.settings import Settings, get_settings
from projections.db import create_pool, init_connection
from projections.migrate import migrate, migrate_url

from .helpers import Scoped

@pytest.fixture(scope="session")
def settings() -> Settings:
    return get_settings()


@pytest.fixture(scope="session")
def local_stack(settings: Settings) -> Iterator[Settings]:
    started = False
    if not stack.is_up(settings):
        stack.up(settings, say=lambda line: None)
        started = True
    else:  # a reused stack may predate the newest migration
        asyncio.run(migrate_url(settings.database_url))
    yield settings
    if started and not os.environ.get("RUNLOG_TEST_KEEP"):
        stack.down(settings, say=lambda line: None)


@pytest.fixture(scope="session")
async def pool(local_stack: Settings) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(local_stack.database_url, max_size=4)
    yield pool
    await pool.close()


@pytest.fixture
async def kafka_producer(local_stack: Settings) -> AsyncIterator[AIOKafkaProducer]:
    """A producer to the stack's Kafka with acks=all, for tests that publish events themselves."""
    producer = AIOKafkaProducer(bootstrap_servers=local_stack.bootstrap_servers, acks="all")
    await producer.start()
    yield producer
    await producer.stop()


@pytest.fixture
def project() -> str:
    """A project name no other test uses."""
    return f"t-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def scoped(local_stack: Settings) -> AsyncIterator[Scoped]:
    """A connection whose unqualified names live in a fresh, migrated schema of its own."""
    conn = await asyncpg.connect(local_stack.database_url)
    try:
        await init_connection(conn)
        schema = f"t_{uuid.uuid4().hex[:12]}"
        await conn.execute(f"CREATE SCHEMA {schema}")
        await conn.execute(f"SET search_path TO {schema}")
        await migrate(conn)
        yield Scoped(conn, schema)
        await conn.execute("RESET search_path")
        # with the scratch and graveyard schemas a replay of it may have left (a failed one does)
        for name in (schema, f"{schema}_replay", f"{schema}_replaced"):
            await conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
    finally:
        await conn.close()
