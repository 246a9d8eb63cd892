"""Helpers of the integration tests: polling (read your writes by waiting, never by sleeping blindly),
topics of their own, and schemas of their own."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg

from events import Event, encode

if TYPE_CHECKING:
    from aiokafka import AIOKafkaProducer

    from events.settings import Settings

T = TypeVar("T")


@dataclass
class Scoped:
    """A connection whose unqualified names resolve in ``schema``, a migrated schema of its own."""

    conn: asyncpg.Connection
    schema: str


def eventually(check: Callable[[], T | None], timeout: float = 30.0, interval: float = 0.1) -> T:
    """Poll ``check`` until it returns something truthy (read-your-writes for tests)."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - remembered and re-raised on timeout
            last_error = exc
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last error: {last_error!r})")


async def eventually_async(check: Callable[[], Awaitable[Any]], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"condition not met within {timeout}s")


async def send(producer: AIOKafkaProducer, settings: Settings, *events: Event) -> None:
    """Publish ``events`` to the stack's events topic, keyed by run, each acknowledged (acks=all)."""
    for event in events:
        await producer.send_and_wait(settings.events_topic, encode(event), key=event.key)


async def create_topic(bootstrap_servers: str, partitions: int) -> str:
    """A fresh events topic of its own, so a test's consumers and offsets meet no other test's."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    topic = f"runlog.events.t-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()
    return topic
