"""The projection consumer: FastStream batch subscriber -> decode -> dead-letter or apply.

Wiring only (settings, pool, broker, handler); the work is in ``consumers.postgres`` and
``projections.fold``. PostgreSQL is the source of truth for the position: on every partition
assignment we seek to the offsets stored there, and Kafka's committed offset (written after
the database commit, ``AckPolicy.ACK``) is only a fallback for a fresh database.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import asyncpg
from aiokafka import ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage

from events import EventError, decode, utcnow
from events.errors import UnappliableEvent
from events.settings import Settings

from projections.db import create_pool

from .postgres import Record, apply_batch

log = logging.getLogger("runlog.consumer")

RETRY_BACKOFF = (0.2, 0.5, 1, 2, 5)
ONE_BY_ONE_RETRY = 1.0  # seconds before an event that failed alone is tried again (see apply_one_by_one)
MAX_BATCH = 2000  # records per Kafka batch; a full batch means a backlog
BIG_BATCH_BYTES = 1024 * 1024  # ...and so do this many bytes of events (packed logs: ~100 rows an event)
SLICE_BYTES = 1024 * 1024  # the most event bytes one transaction decodes and applies (see process_group)
FETCH_MAX_WAIT_MS = 50  # the longest the broker holds a fetch that finds nothing (see Projector)


class RestoreOffsets(ConsumerRebalanceListener):  # type: ignore[misc]
    """On assignment, seek each partition to the position stored in PostgreSQL."""

    def __init__(self, app: Projector) -> None:
        self.app = app

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        pass

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        consumer = self.app.subscriber.consumer
        if consumer is None or not assigned:
            self.app.on_assigned()
            return
        assert self.app.pool is not None
        rows = await self.app.pool.fetch(
            "SELECT partition, next_offset FROM consumer_offsets WHERE group_id = $1 AND topic = $2",
            self.app.settings.consumer_group, self.app.settings.events_topic,
        )
        stored = {r["partition"]: r["next_offset"] for r in rows}
        for tp in assigned:
            if tp.partition in stored:
                consumer.seek(tp, stored[tp.partition])
            else:
                await consumer.seek_to_beginning(tp)
        log.info("assigned %s", sorted(tp.partition for tp in assigned))
        self.app.on_assigned()


def split_partitions(raw: list[ConsumerRecord[bytes, bytes]], groups: int) -> list[list[ConsumerRecord[bytes, bytes]]]:
    """The records cut into at most ``groups`` lists of whole partitions with about as many
    records each (largest partition first into the smallest group); order within a partition kept."""
    if groups <= 1 or not raw:
        return [raw] if raw else []
    by_partition: dict[int, list[ConsumerRecord[bytes, bytes]]] = {}
    for rec in raw:
        by_partition.setdefault(rec.partition, []).append(rec)
    buckets: list[list[ConsumerRecord[bytes, bytes]]] = [[] for _ in range(min(groups, len(by_partition)))]
    for part in sorted(by_partition.values(), key=len, reverse=True):
        min(buckets, key=len).extend(part)
    return buckets


def byte_slices(raw: list[ConsumerRecord[bytes, bytes]], limit: int) -> list[list[ConsumerRecord[bytes, bytes]]]:
    """``raw`` cut into consecutive runs of at most ``limit`` bytes of values (a bigger record
    alone), in order."""
    out: list[list[ConsumerRecord[bytes, bytes]]] = []
    size = limit + 1
    for rec in raw:
        n = len(rec.value or b"")
        if size + n > limit:
            out.append([])
            size = 0
        out[-1].append(rec)
        size += n
    return out


async def _records_only(message: KafkaMessage) -> None:
    """The batch's body for FastStream: nothing. ``Projector.handle`` reads the raw records and
    decodes them itself; FastStream's own batch decoder built a message object and ran a JSON
    parse for every record only to throw them away (~9 % of the consumer's CPU)."""
    return None


class Projector:
    """Holds the broker, the pool and the batch handler of one consumer process."""

    def __init__(self, settings: Settings, ready_file: Any = None) -> None:
        self.settings = settings
        self.ready_file = ready_file
        self.pool: asyncpg.Pool | None = None  # set in start()
        self.broker = KafkaBroker(settings.bootstrap_servers, client_id="runlog-consumer")
        self.dlq = self.broker.publisher(settings.dlq_topic)
        self.subscriber = self.broker.subscriber(
            settings.events_topic,
            group_id=settings.consumer_group,
            batch=True,
            max_records=MAX_BATCH,
            # Bounds what aiokafka prefetches while a batch is applied (50 MiB by default): the
            # consumer's memory then stays flat under a backlog instead of growing with it.
            fetch_max_bytes=8 * 1024 * 1024,
            # An empty poll waits this long in getmany and then FastStream sleeps as long again:
            # at 100 ms a consumer that had caught up added up to 200 ms to the next event's
            # freshness. getmany still returns at once when records are buffered.
            batch_timeout_ms=10,
            # aiokafka keeps one fetch in flight per broker, and while a partition's records are
            # buffered it asks only for the others. Partitions that get no events (6 partitions,
            # 4 busy runs) made that fetch wait the broker's whole max wait (500 ms by default)
            # before the busy partitions could be fetched again: batches of 2,000 events after
            # ~400 ms gaps, and freshness p99 1.0-1.3 s at half load. At 50 ms it is 0.34-0.39 s;
            # an idle stack pays for it with 20 empty fetches a second (here +1 % of a core in the
            # consumer, +5 % in Kafka; 20 ms cost twice that for little more).
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
            auto_offset_reset="earliest",
            ack_policy=AckPolicy.ACK,
            listener=RestoreOffsets(self),
            decoder=_records_only,
        )
        self.subscriber(self.handle)

    def on_assigned(self) -> None:
        if self.ready_file is not None:
            self.ready_file.touch()

    async def start(self) -> None:
        # Without waiting for the WAL flush at each commit: a crash of PostgreSQL can lose the last
        # few hundred ms of batches, but each batch commits with its offsets, so rows and offsets are
        # lost together and the consumer reads those records again from Kafka (acks=all keeps them).
        self.pool = await create_pool(self.settings.database_url, max_size=4, synchronous_commit=False)
        await self.broker.start()

    async def stop(self) -> None:
        await self.broker.stop()
        if self.pool is not None:
            await self.pool.close()

    async def handle(self, message: KafkaMessage) -> None:
        # No typed body parameter: FastStream must not decode or validate; we take the raw records.
        raw: Sequence[ConsumerRecord[bytes, bytes]] = message.raw_message  # type: ignore[assignment]
        if not isinstance(raw, tuple):
            raw = (raw,)
        await self.process(list(raw))

    async def process(self, raw: list[ConsumerRecord[bytes, bytes]]) -> None:
        """Apply a Kafka batch as one group of partitions, or a big one as two groups over
        disjoint partitions applied concurrently (each group in slices, see ``process_group``).

        A partition's records and its offset always commit together, and runs never span
        partitions, so the two groups' transactions touch disjoint rows. Running them side by side on
        two connections lets one group's Python work (decode, fold) overlap the other's wait on
        PostgreSQL; one after the other, the consumer and PostgreSQL each idled half the time.
        A group does not fail: ``apply_slice`` retries while PostgreSQL is away and dead-letters
        what it cannot apply (FastStream would acknowledge a batch whose handler raised).
        """
        # Split only a big batch (a backlog: throughput counts). A small one means the consumer
        # has caught up, and one transaction has half the round trips, which is what freshness
        # waits on when the machine is busy.
        big = len(raw) >= MAX_BATCH or sum(len(r.value or b"") for r in raw) >= BIG_BATCH_BYTES
        groups = 2 if big else 1
        outcomes = await asyncio.gather(*(self.process_group(g) for g in split_partitions(raw, groups)),
                                        return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    async def process_group(self, raw: list[ConsumerRecord[bytes, bytes]]) -> None:
        """Apply ``raw`` in slices of at most SLICE_BYTES, one transaction each, in order.

        Up to 2,000 packed logs of ~100 rows each can arrive in one Kafka batch; decoded at once
        they took the consumer's memory from ~85 MB to 335 MB. Each slice commits its records'
        offsets with its rows, so a slice that fails leaves the ones before it applied, and the
        redelivered batch skips them by the stored offsets."""
        for part in byte_slices(raw, SLICE_BYTES):
            await self.apply_slice(part)

    async def apply_slice(self, raw: list[ConsumerRecord[bytes, bytes]]) -> None:
        """Dead-letter what does not decode, then apply the rest with the offsets in one transaction.

        Nothing is skipped: while PostgreSQL is away the slice is retried (``apply``), and if it
        fails for another reason its records are applied one by one and the ones that still fail
        are dead-lettered with the error (``apply_one_by_one``). FastStream acknowledges a batch
        even when the handler raises (AckPolicy.ACK), so an exception here would lose the slice."""
        records: list[Record] = []
        consumed: dict[int, int] = {}
        by_position: dict[tuple[int, int], ConsumerRecord[bytes, bytes]] = {}
        for rec in raw:
            consumed[rec.partition] = max(consumed.get(rec.partition, 0), rec.offset + 1)
            body = rec.value or b""
            try:
                records.append(Record(rec.partition, rec.offset, decode(body), body))
                by_position[(rec.partition, rec.offset)] = rec
            except EventError as exc:
                await self.dead_letter(rec, exc)
        try:
            await self.apply(records, consumed)
        except Exception as exc:  # noqa: BLE001 - any record of the slice may be the cause
            log.error("could not apply a slice of %d events (%r); applying them one by one", len(records), exc)
            await self.apply_one_by_one(records, consumed, by_position)

    async def apply(self, records: list[Record], consumed: dict[int, int]) -> None:
        """``apply_batch`` on a pooled connection, retried with backoff for as long as PostgreSQL
        is unreachable (the position does not move meanwhile); other errors propagate."""
        attempt = 0
        while True:
            try:
                assert self.pool is not None
                async with self.pool.acquire() as conn:
                    await apply_batch(conn, self.settings.consumer_group, self.settings.events_topic,
                                      records, consumed)
                return
            except (OSError, asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError,
                    asyncpg.ConnectionDoesNotExistError, asyncpg.InterfaceError,
                    asyncpg.InvalidCachedStatementError) as exc:
                # InvalidCachedStatementError: a replay swapped the tables under a cached plan.
                delay = RETRY_BACKOFF[min(attempt, len(RETRY_BACKOFF) - 1)]
                attempt += 1
                log.warning("PostgreSQL unavailable (%r); retry %d in %.1fs", exc, attempt, delay)
                await asyncio.sleep(delay)

    async def apply_one_by_one(self, records: list[Record], consumed: dict[int, int],
                               by_position: dict[tuple[int, int], ConsumerRecord[bytes, bytes]]) -> None:
        """Each record in its own transaction with its offset; one that fails twice (a second
        after the first try: a passing error does not dead-letter it) is dead-lettered (reason
        ``unappliable``) and its offset passed. Then the slice's remaining positions."""
        for record in records:
            position = {record.partition: record.offset + 1}
            try:
                await self.apply([record], position)
                continue
            except Exception:  # noqa: BLE001 - tried once more below
                await asyncio.sleep(ONE_BY_ONE_RETRY)
            try:
                await self.apply([record], position)
            except Exception as exc:  # noqa: BLE001 - this record is the cause: keep it, with why
                log.error("event at %s/%d could not be applied: %r", record.partition, record.offset, exc)
                await self.dead_letter(by_position[(record.partition, record.offset)],
                                       UnappliableEvent(f"could not be applied: {type(exc).__name__}: {exc}"))
                await self.apply([], position)
        await self.apply([], consumed)  # records dead-lettered at decode after the last applied one

    async def dead_letter(self, rec: ConsumerRecord[bytes, bytes], exc: EventError) -> None:
        """Publish the original bytes with the reason and the source position; wait for the ack."""
        headers = {
            "runlog-reason": exc.reason,
            "runlog-error": str(exc)[:2000],
            "runlog-source": f"{rec.topic}/{rec.partition}/{rec.offset}",
            "runlog-dead-lettered-at": utcnow().isoformat(),
        }
        await self.dlq.publish(rec.value or b"", key=rec.key, headers=headers)
        log.warning("dead-lettered %s/%d/%d: %s", rec.topic, rec.partition, rec.offset, exc)
