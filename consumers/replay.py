"""Replay: rebuild every read model from the event store into fresh tables, then swap them in.

1. A scratch schema (``runlog_replay`` for ``public``) gets the whole schema from the migrations (so it can never
   drift from the live one), and every event of the event store is folded into it, in the
   event store's ``pos`` order (the order the live consumer applied them), through the same
   code the live consumer uses (``consumers.postgres.project_records``).
2. It catches up with events that arrived meanwhile, then, in ONE transaction that holds the
   consumer's offset rows (so the live consumer pauses between batches), folds the last few
   and swaps the read-model tables and views: the live ones move to a graveyard schema, the
   rebuilt ones into ``public``. Readers see either the old or the new models, never a mix.
   With ``workers`` > 1 (``runlog replay`` uses one per core), the bulk of the store is folded
   by that many processes first, each taking a share of the runs (a run's events stay in order
   in one process, and runs never touch one another's rows): the biggest runs first, each to
   the worker with the fewest stored bytes so far (a split by hash left one worker folding a
   big run alone at the end). The catch-up and the swap stay on the one connection. The fold
   is Python-bound, so this is what a second core buys.
3. ``--from-kafka`` rebuilds the event store as well, reading the topic from offset 0 through
   the live consumer's batch path (``apply_batch``), and hands the consumer group the positions
   it reached, inside the same swap transaction.
4. Interrupting it at any point before the swap leaves the live models untouched; the next
   replay drops the leftover scratch schema first.

The event store, the consumer offsets and the migration record are not read models: they stay.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from events import EventError, decode
from projections.db import stored_body
from projections.migrate import migrate

from .postgres import BatchResult, Record, apply_batch, project_records

def _schemas(live_schema: str) -> tuple[str, str]:
    """(scratch, graveyard) schema names, per live schema so replays of different schemas never meet."""
    base = "runlog" if live_schema == "public" else live_schema
    return f"{base}_replay", f"{base}_replaced"
READ_MODEL_TABLES = ("runs", "history", "history_blocks", "history_chunks", "state_transitions", "writers",
                     "metric_definitions", "alerts")
READ_MODEL_VIEWS = ("projects",)
# Functions that read-model triggers call: they move with their tables, or dropping the scratch
# schema after the swap would drop the triggers of the tables just swapped in (CASCADE).
READ_MODEL_FUNCTIONS = ("runs_changed_xid()",)
KEPT_TABLES = ("event_store", "consumer_offsets", "schema_migrations", "webhooks", "alert_deliveries", "api_keys")
# One transaction folds about BATCH_BYTES of stored bodies (the count of the next batch follows
# the sizes of the last one; at most BATCH events). With 5,000 packed logs (~430k rows) a
# batch's lists and COPY streams ran to hundreds of MB: the workers' CPU went to cache misses and
# page faults, and replay ran at 143k rows/s on the full bench's store; with ~2 MB (~300 packs)
# at 221-234k. Far smaller batches pay each transaction's fixed statements in PostgreSQL (100
# packs: 169k).
BATCH = 5000
BATCH_FIRST = 300
BATCH_BYTES = 2 << 20
PARALLEL_MIN_EVENTS = 2_000  # fewer (single rows), and starting the processes (~1 s) costs more than they save


@dataclass
class ReplayResult:
    events: int = 0
    applied: int = 0
    skipped: int = 0  # seq duplicates, exactly as the live consumer skipped them
    undecodable: int = 0
    seconds: float = 0.0


Progress = Callable[[int, int], None]  # (events done, events known so far)


async def replay(conn: asyncpg.Connection, progress: Progress | None = None, live_schema: str = "public",
                 from_kafka: KafkaSource | None = None, *, workers: int = 1, dsn: str | None = None,
                 parallel_min_events: int = PARALLEL_MIN_EVENTS) -> ReplayResult:
    """Rebuild the read models of ``live_schema`` from its event store and swap them in.

    With ``from_kafka``, the event store itself is rebuilt too, from offset 0 of the topic, and
    the consumer group's positions are set to where the replay stopped (inside the swap).
    ``workers`` > 1 folds a store of at least ``parallel_min_events`` events in that many
    processes, which connect with ``dsn``."""
    started = time.perf_counter()
    result = ReplayResult()
    scratch, graveyard = _schemas(live_schema)
    await conn.execute(f"DROP SCHEMA IF EXISTS {scratch} CASCADE")
    await conn.execute(f"CREATE SCHEMA {scratch}")
    await conn.execute(f"SET search_path TO {scratch}")
    if from_kafka is not None:
        try:
            await migrate(conn)
            await _replay_kafka(conn, live_schema, from_kafka, result, progress)
        finally:
            await conn.execute("RESET search_path")
        await conn.execute(f"DROP SCHEMA IF EXISTS {scratch} CASCADE")
        result.seconds = time.perf_counter() - started
        return result
    try:
        await migrate(conn)
        for table in KEPT_TABLES:  # the scratch copies of these are not used
            await conn.execute(f"DROP TABLE IF EXISTS {scratch}.{table} CASCADE")
        # Unqualified names now resolve to the scratch read models, then to the live event store.
        await conn.execute(f"SET search_path TO {scratch}, {live_schema}")
        total = await conn.fetchval(f"SELECT count(*) FROM {live_schema}.event_store")
        position = 0
        if workers > 1 and dsn is not None and total >= parallel_min_events:
            position = await _fold_in_workers(conn, dsn, scratch, live_schema, workers, result, progress, total)
        while True:  # catch up outside the swap transaction while the live consumer runs on
            before = position
            position = await _fold_from(conn, live_schema, position, result, progress, total)
            if position == before:
                break
            total = max(total, result.events)
        async with conn.transaction():
            # Pause the live consumer: it takes these rows FOR UPDATE in every batch.
            await conn.execute(f"SELECT 1 FROM {live_schema}.consumer_offsets FOR UPDATE")
            await _fold_from(conn, live_schema, position, result, progress, total)
            await _swap(conn, live_schema)
        await conn.execute(f"DROP SCHEMA IF EXISTS {graveyard} CASCADE")
    finally:
        await conn.execute("RESET search_path")
    await conn.execute(f"DROP SCHEMA IF EXISTS {scratch} CASCADE")
    result.seconds = time.perf_counter() - started
    return result


async def _fold_from(conn: asyncpg.Connection, live_schema: str, position: int, result: ReplayResult,
                     progress: Progress | None, total: int, until: int | None = None,
                     share: int | None = None) -> int:
    """Fold the events after ``position`` (up to ``until``) in pos order; return the last
    position folded. ``share``: only the runs that ``replay_shares`` gives that worker."""
    where, args = "pos > $1", [position]
    if until is not None:
        args.append(until)
        where += f" AND pos <= ${len(args)}"
    if share is not None:
        args.append(share)
        where += f" AND run_path IN (SELECT run_path FROM replay_shares WHERE worker = ${len(args)})"
    limit = BATCH_FIRST
    while True:
        rows = await conn.fetch(
            f"""SELECT pos, kafka_partition, kafka_offset, body FROM {live_schema}.event_store
                WHERE {where} ORDER BY pos LIMIT {limit}""",
            *args,
        )
        if not rows:
            return position
        size = sum(len(row["body"]) for row in rows)  # the next batch's count from this one's sizes
        limit = max(1, min(BATCH, BATCH_BYTES * len(rows) // max(size, 1)))
        records = []
        for row in rows:
            try:
                body = stored_body(row["body"])
                event = decode(body, stored=True)  # old versions are upcast here, as on the live path
            except EventError:
                result.undecodable += 1  # cannot happen for stored events unless a decoder changed
                continue
            records.append(Record(row["kafka_partition"] or 0, row["kafka_offset"] or 0, event, body))
        batch = BatchResult()
        async with conn.transaction():
            await project_records(conn, records, batch)
        result.events += len(rows)
        result.applied += batch.applied
        result.skipped += batch.duplicates
        position = args[0] = rows[-1]["pos"]
        if progress is not None:
            progress(result.events, max(total, result.events))


# -- the bulk fold in worker processes ----------------------------------------------------------------

COUNTERS = ("events", "applied", "skipped", "undecodable")  # per worker, in a shared array


async def _fold_in_workers(conn: asyncpg.Connection, dsn: str, scratch: str, live_schema: str, workers: int,
                           result: ReplayResult, progress: Progress | None, total: int) -> int:
    """Fold every event up to the store's current end in ``workers`` processes; return that end.

    A worker that fails makes the replay fail before anything is swapped (the live read models
    stay as they are, as for an interrupted replay)."""
    end = await conn.fetchval(f"SELECT coalesce(max(pos), 0) FROM {live_schema}.event_store")
    await _share_runs(conn, scratch, live_schema, workers, end)
    ctx = multiprocessing.get_context("spawn")  # never fork a process that holds an event loop
    counts = ctx.Array("q", workers * len(COUNTERS))
    procs = [ctx.Process(target=_worker_main, args=(dsn, scratch, live_schema, end, i, counts),
                         name=f"runlog-replay-{i}", daemon=True) for i in range(workers)]
    for p in procs:
        p.start()
    try:
        while any(p.is_alive() for p in procs):
            await asyncio.sleep(0.2)
            if progress is not None:
                done = sum(counts[i * len(COUNTERS)] for i in range(workers))
                progress(done, max(total, done))
        failed = [p.exitcode for p in procs if p.exitcode != 0]
        if failed:
            raise RuntimeError(f"a replay worker failed (exit codes {failed}); nothing was swapped in")
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
            p.join()
    for i in range(workers):
        for j, name in enumerate(COUNTERS):
            setattr(result, name, getattr(result, name) + counts[i * len(COUNTERS) + j])
    return int(end)


async def _share_runs(conn: asyncpg.Connection, scratch: str, live_schema: str, workers: int, end: int) -> None:
    """``{scratch}.replay_shares``: each run's worker. Biggest runs (stored bytes) first, each to
    the least loaded worker so far (the LPT rule: at most 4/3 of the best split)."""
    sizes = await conn.fetch(
        f"""SELECT run_path, sum(octet_length(body)) AS size FROM {live_schema}.event_store
            WHERE pos <= $1 GROUP BY run_path ORDER BY size DESC, run_path""", end)
    shares = share_runs([(row["run_path"], row["size"]) for row in sizes], workers)
    await conn.execute(f"CREATE TABLE {scratch}.replay_shares (run_path text PRIMARY KEY, worker int NOT NULL)")
    await conn.copy_records_to_table("replay_shares", schema_name=scratch, records=shares)
    await conn.execute(f"ANALYZE {scratch}.replay_shares")


def share_runs(sizes: list[tuple[str, int]], workers: int) -> list[tuple[str, int]]:
    """(run, worker) for (run, size) pairs sorted biggest first: each to the least loaded worker."""
    load = [0] * workers
    shares = []
    for run, size in sizes:
        worker = load.index(min(load))
        load[worker] += size
        shares.append((run, worker))
    return shares


def _worker_main(dsn: str, scratch: str, live_schema: str, until: int, share: int, counts) -> None:  # type: ignore[no-untyped-def]
    from events.settings import tune_service_gc

    tune_service_gc()  # the same long fold as the consumer's
    asyncio.run(_worker(dsn, scratch, live_schema, until, share, counts))


async def _worker(dsn: str, scratch: str, live_schema: str, until: int, share: int, counts) -> None:  # type: ignore[no-untyped-def]
    from projections.db import init_connection

    conn = await asyncpg.connect(dsn)
    try:
        await init_connection(conn)
        await conn.execute(f"SET search_path TO {scratch}, {live_schema}")
        # Durable enough: the swap's own commit is synchronous and flushes the WAL before it.
        await conn.execute("SET synchronous_commit = off")
        result = ReplayResult()
        base = share * len(COUNTERS)

        def report(done: int, _total: int) -> None:
            counts[base] = done

        await _fold_from(conn, live_schema, 0, result, report, 0, until=until, share=share)
        for j, name in enumerate(COUNTERS):
            counts[base + j] = getattr(result, name)
    finally:
        await conn.close()


@dataclass(frozen=True)
class KafkaSource:
    bootstrap_servers: str
    topic: str
    group: str  # the consumer group whose positions the replay takes over


async def _replay_kafka(conn: asyncpg.Connection, live_schema: str, source: KafkaSource, result: ReplayResult,
                        progress: Progress | None) -> None:
    """Everything in the topic, through the live consumer's own batch path, into the scratch schema."""
    scratch, graveyard = _schemas(live_schema)
    consumer = AIOKafkaConsumer(bootstrap_servers=source.bootstrap_servers, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        parts = [TopicPartition(source.topic, p) for p in await _partitions(source)]
        if not parts:
            raise ValueError(f"topic {source.topic} does not exist")
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)

        async def read_to(ends: dict[TopicPartition, int]) -> None:
            total = sum(ends.values())
            async def behind() -> bool:
                return any([await consumer.position(tp) < end for tp, end in ends.items()])

            while await behind():
                batch = await consumer.getmany(*parts, timeout_ms=500, max_records=BATCH)
                records, consumed = [], {}
                for tp, recs in batch.items():
                    for rec in recs:
                        consumed[tp.partition] = rec.offset + 1
                        try:
                            records.append(Record(tp.partition, rec.offset, decode(rec.value or b""), rec.value or b""))
                        except EventError:
                            result.undecodable += 1  # the live consumer dead-lettered it too
                if consumed:
                    applied = await apply_batch(conn, source.group, source.topic, records, consumed)
                    result.events += sum(len(r) for r in batch.values())
                    result.applied += applied.applied
                    result.skipped += applied.duplicates
                    if progress is not None:
                        progress(result.events, max(total, result.events))

        await read_to(await consumer.end_offsets(parts))  # the bulk, while the live consumer runs on
        async with conn.transaction():
            await conn.execute(f"SELECT 1 FROM {live_schema}.consumer_offsets FOR UPDATE")
            await read_to(await consumer.end_offsets(parts))  # the rest, with the live consumer paused
            await conn.execute(
                f"""INSERT INTO {live_schema}.consumer_offsets (group_id, topic, partition, next_offset)
                    SELECT group_id, topic, partition, next_offset FROM {scratch}.consumer_offsets
                    WHERE group_id = $1 AND topic = $2
                    ON CONFLICT (group_id, topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset,
                        updated_at = now()""",
                source.group, source.topic,
            )
            await _swap(conn, live_schema, tables=(*READ_MODEL_TABLES, "event_store"))
        await conn.execute(f"DROP SCHEMA IF EXISTS {graveyard} CASCADE")
    finally:
        await consumer.stop()


async def _partitions(source: KafkaSource) -> list[int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=source.bootstrap_servers)
    await admin.start()
    try:
        described = await admin.describe_topics([source.topic])
    finally:
        await admin.close()
    return sorted(p["partition"] for t in described if not t.get("error_code") for p in t["partitions"])


async def _swap(conn: asyncpg.Connection, live_schema: str, tables: tuple[str, ...] = READ_MODEL_TABLES) -> None:
    scratch, graveyard = _schemas(live_schema)
    await conn.execute(f"DROP SCHEMA IF EXISTS {graveyard} CASCADE")
    await conn.execute(f"CREATE SCHEMA {graveyard}")
    for view in READ_MODEL_VIEWS:
        await conn.execute(f"ALTER VIEW {live_schema}.{view} SET SCHEMA {graveyard}")
    for function in READ_MODEL_FUNCTIONS:
        await conn.execute(f"ALTER FUNCTION {live_schema}.{function} SET SCHEMA {graveyard}")
    for table in tables:
        await conn.execute(f"ALTER TABLE {live_schema}.{table} SET SCHEMA {graveyard}")
    for table in tables:
        await conn.execute(f"ALTER TABLE {scratch}.{table} SET SCHEMA {live_schema}")
    for function in READ_MODEL_FUNCTIONS:
        await conn.execute(f"ALTER FUNCTION {scratch}.{function} SET SCHEMA {live_schema}")
    for view in READ_MODEL_VIEWS:
        await conn.execute(f"ALTER VIEW {scratch}.{view} SET SCHEMA {live_schema}")
