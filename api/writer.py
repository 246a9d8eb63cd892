"""The API's side of "commands are events": one idempotent, acks=all Kafka producer per process.

Writer id and seq: every API process takes a fresh writer id ``api-<uuid4 hex>`` when it starts
and numbers its events per run from 0, in memory. The consumer tracks seq per (writer, run), so
the numbers only need to increase within one process's events for one run, and a restarted
process (or a second API process) is a new writer whose seq may start at 0 again. Sequence
numbers are taken and the record handed to the producer under one lock, so the events of one
run reach its partition in seq order; an event that Kafka refused leaves a gap in the seq
(recorded by the consumer as ``writers.gaps``, which is what a gap means: an event not there).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import defaultdict
from typing import Any

from aiokafka import AIOKafkaProducer

from events import Event, Source, encode
from events.settings import Settings

log = logging.getLogger("runlog.api")


class KafkaUnavailable(Exception):
    """The event was not acknowledged by Kafka (the command was not accepted)."""


class Writer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.writer_id = f"api-{uuid.uuid4().hex}"
        self._seq: dict[str, int] = defaultdict(int)
        self._lock = asyncio.Lock()
        self._start_lock = asyncio.Lock()
        self._producer: AIOKafkaProducer | None = None

    def source(self) -> Source:
        return Source(kind="api", writer=self.writer_id)

    async def _started(self) -> AIOKafkaProducer:
        async with self._start_lock:
            if self._producer is None:
                producer = AIOKafkaProducer(bootstrap_servers=self.settings.bootstrap_servers, acks="all",
                                            enable_idempotence=True, linger_ms=2, request_timeout_ms=15_000)
                try:
                    await asyncio.wait_for(producer.start(), timeout=15)
                except Exception as exc:  # noqa: BLE001 - any start failure means Kafka is not there
                    await _quietly_stop(producer)
                    raise KafkaUnavailable(f"Kafka at {self.settings.bootstrap_servers} is not reachable: "
                                           f"{exc.__class__.__name__}") from exc
                self._producer = producer
            return self._producer

    async def send(self, make: Any) -> list[Event]:
        """Build events with ``make(seq_of) -> [Event]`` and write them; return them once Kafka has them.

        ``make`` gets a function ``seq_of(run_path)`` handing out this writer's next seq of a run."""
        producer = await self._started()
        futures = []
        async with self._lock:
            taken: dict[str, int] = {}

            def seq_of(path: str) -> int:
                n = self._seq[path] + taken.get(path, 0)
                taken[path] = taken.get(path, 0) + 1
                return n

            events: list[Event] = make(seq_of)
            payloads = [(encode(e), e.key) for e in events]  # may raise before anything is sent
            for path, n in taken.items():
                self._seq[path] += n
            try:
                for value, key in payloads:
                    futures.append(await producer.send(self.settings.events_topic, value, key=key))
            except Exception as exc:  # noqa: BLE001
                raise KafkaUnavailable(f"Kafka refused the event: {exc.__class__.__name__}: {exc}") from exc
        try:
            await asyncio.gather(*futures)
        except Exception as exc:  # noqa: BLE001
            raise KafkaUnavailable(f"Kafka did not acknowledge the event: {exc.__class__.__name__}: {exc}") from exc
        return events

    async def close(self) -> None:
        if self._producer is not None:
            await _quietly_stop(self._producer)
            self._producer = None


async def _quietly_stop(producer: AIOKafkaProducer) -> None:
    try:
        await producer.stop()
    except Exception as exc:  # noqa: BLE001
        log.warning("stopping the Kafka producer: %r", exc)
