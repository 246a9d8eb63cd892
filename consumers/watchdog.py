"""The watchdog: turns silence (heartbeats that stopped) into ``run.crashed`` / ``run.preempted`` events.

Every ``watchdog_interval`` seconds it asks PostgreSQL for runs in state ``running`` or
``preempting`` whose last sign of life -- the later of ``heartbeat_at`` and ``updated_at``, since
any event of a run proves it alive -- is older than ``crash_timeout`` (default 300 s, W&B's
"crashed after about 5 minutes without a heartbeat"), and writes its verdict to Kafka like any
other writer. It never touches the read models itself: the consumer folds the verdict like every
other event (``running -> crashed``, ``preempting -> preempted``), so a replay of the log gives
exactly the same states without looking at a clock.

The verdict is a pure function of what the database says (``find_silent`` and ``verdict``), so
two watchdogs running at once, or one restarted, write the *same* event for the same silence
(same id, same seq) and the consumer keeps one: the event id is the event store's primary key,
and a repeated (writer, run, seq) is dropped as a duplicate.

PostgreSQL or Kafka away: a warning, and another try at the next interval; the loop never dies.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from events import LostPayload, RunCrashed, RunPreempted, RunRef, Source, deterministic_event_id, encode
from events.settings import Settings
from projections.db import create_pool

from ._service import serve

log = logging.getLogger("runlog.watchdog")

#: The writer id of every watchdog instance: they all speak for the same rule, and sharing one
#: writer is what lets the consumer's (writer, run, seq) check drop a second instance's copy.
WRITER = "watchdog"

#: How many silent runs one scan handles at most (the oldest silences first); the rest wait for
#: the next interval, so one scan's work and one Kafka batch stay bounded.
SCAN_LIMIT = 1000

#: The state the watchdog watches, and the event its silence turns into.
WATCHED: dict[str, Literal["run.crashed", "run.preempted"]] = {
    "running": "run.crashed",
    "preempting": "run.preempted",
}

# The database does the coarse filtering (state and age); ``find_silent`` decides. ``$1`` is the
# database's own clock, read once per scan, so every watchdog instance measures silence against
# the same clock whatever its host's clock says. The watchdog's last seq for the run comes along
# so the next seq can be made larger than it (see ``next_seq``).
SCAN_SQL = f"""
SELECT r.entity, r.project, r.run_id, r.state, r.heartbeat_at, r.updated_at, w.last_seq AS watchdog_seq
FROM runs r
LEFT JOIN writers w ON w.writer = '{WRITER}' AND w.run_path = r.entity || '/' || r.project || '/' || r.run_id
WHERE r.state IN ({", ".join(f"'{s}'" for s in WATCHED)})
  AND GREATEST(r.heartbeat_at, r.updated_at) < $1::timestamptz - make_interval(secs => $2::float8)
ORDER BY GREATEST(r.heartbeat_at, r.updated_at)
LIMIT {SCAN_LIMIT}
"""


@dataclass(frozen=True)
class Silence:
    """One run that went quiet for longer than the timeout, as seen by one scan."""

    run: RunRef
    state: Literal["running", "preempting"]
    last_seen: datetime  # the last sign of life: max(heartbeat_at, updated_at)
    silent_for: float  # seconds between ``last_seen`` and the scan's ``now``
    watchdog_seq: int | None = None  # the last seq the consumer accepted from the watchdog for this run


def last_sign_of_life(heartbeat_at: datetime | None, updated_at: datetime) -> datetime:
    """The later of the last heartbeat and the last applied event: any event proves the run alive."""
    return updated_at if heartbeat_at is None else max(heartbeat_at, updated_at)


def find_silent(rows: Iterable[Mapping[str, Any]], now: datetime, timeout: float) -> list[Silence]:
    """The watched runs whose last sign of life is older than ``timeout`` seconds at ``now``.

    ``rows`` are ``runs`` rows (entity, project, run_id, state, heartbeat_at, updated_at and,
    optionally, watchdog_seq). Pure: no clock, no I/O; a run is reported iff it is in a watched
    state and ``now - last sign of life > timeout`` (exactly at the timeout is not yet silent).
    """
    limit = timedelta(seconds=timeout)
    found: list[Silence] = []
    for row in rows:
        state = row["state"]
        if state not in WATCHED:
            continue
        last = last_sign_of_life(row["heartbeat_at"], row["updated_at"])
        if now - last > limit:
            found.append(Silence(
                run=RunRef(entity=row["entity"], project=row["project"], run_id=row["run_id"]),
                state=state, last_seen=last, silent_for=(now - last).total_seconds(),
                watchdog_seq=row.get("watchdog_seq"),
            ))
    return found


def next_seq(last_seen: datetime, watchdog_seq: int | None) -> int:
    """The seq of the verdict on a silence that began at ``last_seen``.

    The consumer tracks seq per (writer, run) and drops any event whose seq is not above the
    last one it accepted from that writer for that run. All watchdogs share one writer id, so
    the seq has to be a number every instance computes alike for the same silence (no local
    counter: a restarted or second instance would start over and be dropped) and that grows
    from one silence of a run to the next (crash, resume, crash again). The time the silence
    began, in epoch milliseconds, is both: equal for equal silences, and a later silence began
    later. Should a writer's clock have gone back (a resume on a host whose clock is behind), the
    watchdog's last accepted seq + 1 is the floor, so a verdict is never dropped as a duplicate of
    an older one. Every instance reads that floor from the same database, so it stays
    deterministic. The price: seq of the watchdog is not gapless, and the consumer's gap counter
    for the watchdog writer counts milliseconds, not lost events (nothing of the watchdog can be
    lost anyway: a lost verdict is simply decided again at the next scan).
    """
    ms = int((last_seen - datetime(1970, 1, 1, tzinfo=UTC)) / timedelta(milliseconds=1))
    return max(ms, 0 if watchdog_seq is None else watchdog_seq + 1)


def verdict(silence: Silence, timeout: float) -> RunCrashed | RunPreempted:
    """The event that records ``silence``: the same silence always gives the same id, seq and time.

    id: a uuid5 of ("watchdog", type, run path, last sign of life), so every instance that sees
    this silence writes the same id and the event store keeps one. time: when the silence became
    a verdict by the rule (last sign of life + timeout), not the scan's clock, so the event is the
    same whoever writes it and whenever. The reason (which mentions the measured silence) is the
    only part that may differ between instances; the first copy applied wins.
    """
    kind = WATCHED[silence.state]
    cls = RunCrashed if kind == "run.crashed" else RunPreempted
    event_id = deterministic_event_id(WRITER, kind, silence.run.path, silence.last_seen.isoformat())
    reason = f"no heartbeat for {silence.silent_for:.0f}s (timeout {timeout:g}s)"
    if silence.state == "preempting":
        reason += " after preempting"
    return cls(
        id=event_id,
        run=silence.run,
        source=Source(kind="watchdog", writer=WRITER, rank=None),
        seq=next_seq(silence.last_seen, silence.watchdog_seq),
        time=silence.last_seen + timedelta(seconds=timeout),
        payload=LostPayload(reason=reason, last_heartbeat=silence.last_seen),
    )


class Watchdog:
    """The service ``runlog up`` starts: scan, publish the verdicts, sleep, again."""

    def __init__(self, settings: Settings, ready_file: Path | None) -> None:
        self.settings = settings
        self.ready_file = ready_file
        self.pool: asyncpg.Pool | None = None
        self.producer: AIOKafkaProducer | None = None
        self.published = 0  # events acknowledged by Kafka since start (tests and logs read it)
        self._sent: set[Any] = set()  # ids acknowledged by Kafka whose run still looks silent
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start the scan loop in the background; ready is marked after the first good scan."""
        self._stop.clear()
        self._task = asyncio.create_task(self._loop(), name="watchdog")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task
            self._task = None
        await self._close_producer()
        if self.pool is not None:
            await self.pool.close()
            self.pool = None
        if self.ready_file is not None:
            self.ready_file.unlink(missing_ok=True)

    async def _loop(self) -> None:
        ready = False
        while not self._stop.is_set():
            try:
                await self.scan_once()
                if not ready:
                    ready = True
                    if self.ready_file is not None:
                        self.ready_file.touch()
                    log.info("watching: crash timeout %gs, scan every %gs",
                             self.settings.crash_timeout, self.settings.watchdog_interval)
            except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError,
                    KafkaError) as exc:
                log.warning("scan failed, retrying in %gs: %r", self.settings.watchdog_interval, exc)
                if isinstance(exc, KafkaError):
                    await self._close_producer()  # start afresh next time
            except Exception:  # noqa: BLE001 - the watchdog must outlive any one bad scan
                log.exception("scan failed unexpectedly, retrying in %gs", self.settings.watchdog_interval)
            try:
                await asyncio.wait_for(self._stop.wait(), self.settings.watchdog_interval)
            except TimeoutError:
                pass

    async def find(self) -> list[RunCrashed | RunPreempted]:
        """Read the silent runs from PostgreSQL and return the verdicts (publishes nothing)."""
        if self.pool is None:
            self.pool = await create_pool(self.settings.database_url, max_size=2)
        timeout = self.settings.crash_timeout
        async with self.pool.acquire() as conn:
            now: datetime = await conn.fetchval("SELECT now()")
            rows = await conn.fetch(SCAN_SQL, now, timeout)
        return [verdict(s, timeout) for s in find_silent(rows, now, timeout)]

    async def publish(self, events: list[RunCrashed | RunPreempted]) -> int:
        """Send ``events`` (key = run path) and wait until Kafka has them all; returns how many were sent.

        An event Kafka already acknowledged is not sent again while its run stays silent (the
        consumer may simply not have caught up yet); a restarted watchdog sends it once more,
        which the consumer drops as a duplicate.
        """
        todo = [e for e in events if e.id not in self._sent]
        if todo:
            producer = await self._producer()
            futures = [await producer.send(self.settings.events_topic, encode(e), key=e.key) for e in todo]
            await asyncio.gather(*futures)
            for e in todo:
                self._sent.add(e.id)
                log.info("%s %s: %s", e.type, e.run.path, e.payload.reason)
            self.published += len(todo)
        self._sent &= {e.id for e in events}  # forget verdicts whose run is no longer silent
        return len(todo)

    async def scan_once(self) -> int:
        """One round: find the silent runs and publish their verdicts; returns how many were sent."""
        return await self.publish(await self.find())

    async def _producer(self) -> AIOKafkaProducer:
        if self.producer is None:
            producer = AIOKafkaProducer(
                bootstrap_servers=self.settings.bootstrap_servers, client_id="runlog-watchdog",
                acks="all", enable_idempotence=True, request_timeout_ms=15_000,
            )
            try:
                await producer.start()
            except BaseException:
                await producer.stop()
                raise
            self.producer = producer
        return self.producer

    async def _close_producer(self) -> None:
        producer, self.producer = self.producer, None
        if producer is not None:
            try:
                await producer.stop()
            except KafkaError as exc:
                log.warning("closing the Kafka producer: %r", exc)


if __name__ == "__main__":
    serve("watchdog", Watchdog)
