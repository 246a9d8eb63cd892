"""How events leave the process.

``Run`` stamps events and hands them to a :class:`Transport`; the transport owns everything
slow (network, batching, compression, retries). ``send`` never blocks and never does I/O on
the caller's thread, because it is called from ``log()`` on the training hot path.

- :class:`KafkaTransport` -- a daemon thread running its own asyncio loop that owns the spool
  and (online) an ``aiokafka.AIOKafkaProducer``; fed by a thread-safe deque. ``online=False``
  is offline mode: spool only, sent later by ``runlog sync``.
- :class:`DisabledTransport` -- ``mode="disabled"``: accepts and forgets.
- :class:`MemoryTransport` -- keeps every event in a list (tests, dry runs).

Durability: every event is written to a :class:`Spool` (``producer._spool.SpoolFile`` for
runs; :class:`NoSpool`, memory only, when none is given) before it is handed to Kafka, and
acknowledged there once Kafka acknowledged it; what is unacknowledged when the process ends
(or dies) is sent later by ``runlog sync`` (``producer._sync``).

Deferred events: ``log()`` must cost a few microseconds, and building and encoding a pydantic
event costs ~20. So ``run.log`` rows reach the transport as a :data:`RawEvent` tuple
(type, run, source, seq, unix time, payload) with values ``Run.log`` already checked; the
background thread builds the event (full validation still runs, as the last line of defence)
and encodes it. A raw event that cannot be built is never spooled: it is counted as failed and
logged as an error naming its seq (a gap the consumer will report, never a silent loss).

Packing: when the background thread finds several ``run.log`` rows of one run queued one after
the other (consecutive seqs: nothing else was logged between them), it builds ONE event of them
(``LogPayload.more``, up to ``PACK_ROWS`` rows). Every cost that is per event -- validation of
the envelope, encoding, the spool record, the Kafka record, and downstream the event store row
and the seq check -- is then paid once for the pack. Nothing waits for a pack to fill: a row
logged alone travels alone. Counters count rows, so ``flush`` means the same as before.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import orjson

from events.codec import encode
from events.errors import OversizedEvent
from events.model import EVENT_TYPES, ROWS_CHECKED
from events.values import MAX_EVENT_BYTES, tag_nonfinite

if TYPE_CHECKING:  # pragma: no cover
    from events.settings import Settings

log = logging.getLogger("producer.transport")

#: A deferred event: (event type, RunRef, Source, seq, unix time, payload dict); see the module doc.
RawEvent = tuple[str, Any, Any, int, float, dict[str, Any]]


class _SwitchBoost:
    """A shorter GIL switch interval for the process while some transport's thread is behind.

    A training loop that calls ``log()`` as fast as it can holds the GIL; the sender thread gets
    it back only after the switch interval (5 ms by default) each time it blocked on a socket or
    its loop, so it sent little until the loop ended (bench/README.md: the first tenth of 4M
    points reached Kafka after 4.9 s, the loop having run 4.9 s). While any transport has more
    than ``BEHIND`` events queued the interval is ``INTERVAL``; the one found before is restored
    once they all caught up (unless someone else changed it meanwhile)."""

    INTERVAL = 0.0005

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._behind: set[int] = set()
        self._saved: float | None = None

    def engage(self, owner: object) -> None:
        with self._lock:
            if id(owner) in self._behind:
                return
            self._behind.add(id(owner))
            if len(self._behind) == 1 and sys.getswitchinterval() > self.INTERVAL:
                self._saved = sys.getswitchinterval()
                sys.setswitchinterval(self.INTERVAL)

    def disengage(self, owner: object) -> None:
        with self._lock:
            if id(owner) not in self._behind:
                return
            self._behind.discard(id(owner))
            if not self._behind and self._saved is not None:
                if sys.getswitchinterval() == self.INTERVAL:
                    sys.setswitchinterval(self._saved)
                self._saved = None


_BOOST = _SwitchBoost()


PACK_ROWS = 100  # most run.log rows packed into one event
# Most bytes of a packed event: a pack near MAX_EVENT_BYTES would pass our check and then exceed
# the producer's max_request_size (1 MiB with the record's overhead) and be refused, rows and all.
# A single row keeps the full MAX_EVENT_BYTES, as before packing.
PACK_BYTES = 256 * 1024


def build_event(raw: RawEvent) -> Any:
    """The typed event a :data:`RawEvent` stands for (raises pydantic's ValidationError)."""
    event_type, ref, source, seq, at, payload = raw
    return EVENT_TYPES[event_type](run=ref, source=source, seq=seq, time=datetime.fromtimestamp(at, UTC),
                                   payload=payload)


def build_pack(raws: list[RawEvent]) -> Any:
    """One ``run.log`` event of consecutive raw rows of one run: the first row's seq, the last
    row's time (a row's time only ever moves the run's clock forward)."""
    if len(raws) == 1:
        return build_event(raws[0])
    _, ref, source, seq, _, first = raws[0]
    payload = {"step": first["step"], "values": first["values"], "more": [r[5] for r in raws[1:]]}
    # The rows' values passed log()'s checks already (ROWS_CHECKED): the pack's are not run again.
    return EVENT_TYPES["run.log"].model_validate(
        {"run": ref, "source": source, "seq": seq, "time": datetime.fromtimestamp(raws[-1][4], UTC),
         "payload": payload}, context=ROWS_CHECKED)


def rows_in(record: bytes) -> int:
    """How many rows a spooled record holds (1 unless it is a packed run.log)."""
    if b'"more":[{' not in record:
        return 1
    return 1 + len(orjson.loads(record)["payload"]["more"])


def _nonfinite(values: dict[str, Any]) -> bool:
    """Whether a flat log mapping holds a NaN or infinity (``x - x`` is 0.0 only for finite x).

    The usual row (numbers only) is one ``sum`` in C: a NaN or an infinity makes it non-finite
    (and so can an overflow of finite values, which then takes the loop)."""
    try:
        total = sum(values.values())
    except TypeError:  # a string, list or None among them
        pass
    else:
        if total - total == 0.0:
            return False
    for v in values.values():
        t = type(v)
        if t is float:
            if v - v != 0.0:
                return True
        elif t is list:
            for x in v:
                if type(x) is float and x - x != 0.0:
                    return True
    return False


def _tagged(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` as they go on the wire: non-finite floats tagged, the dict itself when none is."""
    return tag_nonfinite(values) if _nonfinite(values) else values


def encode_fast(event: Any) -> bytes:
    """``events.codec.encode`` for validated ``run.log`` events, ~4x cheaper: the same bytes,
    from a dict built by hand instead of ``model_dump`` + a generic walk for non-finite floats."""
    if event.type != "run.log":
        return encode(event)
    r, s, p = event.run, event.source, event.payload
    values = _tagged(p.values)
    more = [{"step": row.step, "values": _tagged(row.values)} for row in p.more]
    data = orjson.dumps(
        {
            "id": event.id, "type": event.type,
            "run": {"entity": r.entity, "project": r.project, "run_id": r.run_id},
            "source": {"kind": s.kind, "writer": s.writer, "rank": s.rank},
            "seq": event.seq, "time": event.time, "v": event.v,
            "payload": {"step": p.step, "values": values, "more": more},
        },
        option=orjson.OPT_UTC_Z,
    )
    if len(data) > MAX_EVENT_BYTES:
        raise OversizedEvent(len(data), MAX_EVENT_BYTES)
    return data


@runtime_checkable
class Transport(Protocol):
    """What ``Run`` needs from a transport."""

    def send(self, event: Any) -> None:
        """Take ownership of one event. Must not block and must not raise on network trouble."""

    def flush(self, timeout: float | None = None) -> int:
        """Wait until every event sent so far is acknowledged, at most ``timeout`` seconds.

        Returns how many events are still unacknowledged (0 = all delivered)."""

    def close(self, timeout: float | None = None) -> int:
        """Flush (at most ``timeout`` seconds), then release resources. Idempotent.

        Returns how many events were left unacknowledged."""


@dataclass
class Counters:
    """Progress of a transport, counted in events as ``send`` took them (a logged row is one,
    whether or not it travels packed with others). ``written - acked`` is what is still at risk."""

    written: int = 0  # accepted by send()
    sent: int = 0  # handed to the Kafka producer (in a batch, maybe not yet on the wire)
    acked: int = 0  # acknowledged by the broker (acks=all)
    retried: int = 0  # delivery failed and the event was queued again
    failed: int = 0  # could never be sent (e.g. bigger than the broker accepts)
    spooled: int = 0  # written to the spool (to the OS)

    @property
    def pending(self) -> int:
        return self.written - self.acked - self.failed


class Spool(Protocol):
    """Where events wait until Kafka acknowledged them (see ``_spool.SpoolFile``). ``write``
    is called under ``lock``; everything else only from the transport's thread."""

    lock: Any
    records: int
    end: int

    def write(self, data: bytes) -> tuple[int, int, int]: ...

    def flush(self) -> None: ...

    def sync(self) -> None: ...

    def read(self, offset: int, index: int, max_records: int) -> list[tuple[int, int, bytes]]: ...

    def ack(self, index: int, end_offset: int) -> None: ...

    def close(self) -> None: ...


class NoSpool:
    """No durability: records live only in memory until Kafka acknowledges them (positions
    are record numbers, so reading back works the same way as from a file)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.records = 0
        self.end = 0
        self.path = None
        self._data: dict[int, bytes] = {}

    def write(self, data: bytes) -> tuple[int, int, int]:
        index = self.records
        self._data[index] = data
        self.records += 1
        self.end = self.records
        return index, index, index + 1

    def flush(self) -> None:
        pass

    def sync(self) -> None:
        pass

    def read(self, offset: int, index: int, max_records: int) -> list[tuple[int, int, bytes]]:
        stop = min(self.end, offset + max_records)
        return [(i, i + 1, self._data[i]) for i in range(offset, stop)]

    def ack(self, index: int, end_offset: int) -> None:
        self._data.pop(index, None)

    def close(self) -> None:
        self._data.clear()


class DisabledTransport:
    """``mode="disabled"``: the same API, nothing leaves the process, nothing is kept."""

    def __init__(self) -> None:
        self.counters = Counters()

    def send(self, event: Any) -> None:
        self.counters.written += 1
        self.counters.acked += 1

    send_raw = send

    def flush(self, timeout: float | None = None) -> int:
        return 0

    def close(self, timeout: float | None = None) -> int:
        return 0


class MemoryTransport:
    """Keeps the events it is sent, in order, in ``events``; every event counts as acknowledged."""

    def __init__(self) -> None:
        self.counters = Counters()
        self.events: list[Any] = []
        self.closed = False

    def send(self, event: Any) -> None:
        if self.closed:
            raise RuntimeError("transport is closed")
        self.events.append(event)
        self.counters.written += 1
        self.counters.acked += 1

    def flush(self, timeout: float | None = None) -> int:
        return 0

    def close(self, timeout: float | None = None) -> int:
        self.closed = True
        return 0


class KafkaTransport:
    """Background-thread Kafka producer with a spool. ``send`` appends to a deque and returns.

    The thread runs its own asyncio loop with two tasks:

    - the *spooler* takes events off the deque, encodes them and writes them to the spool
      (to the OS right away, fsync every ``sdk_fsync_interval`` s), keeps up to
      ``sdk_queue_max`` of them in memory for sending and leaves the rest only in the spool;
      it also saves the acknowledged position and calls the ticker (heartbeats);
    - the *sender* (online only) owns one ``AIOKafkaProducer`` (acks=all, idempotent, zstd,
      linger ``sdk_linger_ms``) and sends in spool order, reading back from the spool file
      what did not fit in memory. If the broker is unreachable it keeps trying to connect
      with back-off, forever, without blocking the caller.

    Memory is bounded: if the caller outruns the spooler and the deque reaches
    ``sdk_queue_max``, ``send`` spools a few of the oldest queued events itself (under the
    spool lock, so order is kept) instead of growing the deque. ``flush``/``close`` are the
    only calls that wait, and only up to their timeout; what is not acknowledged then stays
    in the spool for ``runlog sync``.
    """

    BATCH_BYTES = 512 * 1024  # aiokafka's max_batch_size (see the producer options)
    RETRY_MIN = 0.2  # seconds between connection attempts, doubling up to RETRY_MAX
    RETRY_MAX = 5.0
    IDLE_POLL = 0.05  # how long the loops sleep when idle (a send also wakes them)
    DRAIN_BATCH = 256  # events the spooler encodes before letting the sender run
    HELP_BATCH = 4  # events send() spools itself when the deque is full
    BEHIND = 256  # queued events that mean the spooler is behind the caller (see _SwitchBoost)
    STOP_WAIT = 2.0  # seconds close() lets in-flight sends finish before stopping the producer
    # After a wake-up the spooler waits this long before draining, so a training loop logging
    # hundreds of steps a second pays one wake-up, spool write and send for several events
    # (a writer at 650 steps/s: 0.23 -> 0.12 of a core). Events are in memory that much longer
    # before they reach the spool (a SIGKILL loses the last few ms of logs, as the queue could).
    WAKE_LINGER = 0.005

    def __init__(
        self,
        settings: Settings,
        *,
        topic: str | None = None,
        spool: Spool | None = None,
        producer_options: dict[str, Any] | None = None,
        online: bool = True,
        queue_max: int | None = None,
    ) -> None:
        self.bootstrap_servers = settings.bootstrap_servers
        self.topic = topic or settings.events_topic
        self.online = online
        self.counters = Counters()
        self.last_error: BaseException | None = None
        self.connected = False
        self.spool: Spool = spool or NoSpool()
        self._cap = max(1, queue_max or getattr(settings, "sdk_queue_max", 10_000))
        self._fsync_interval = getattr(settings, "sdk_fsync_interval", 0.1)
        self._options = dict(
            bootstrap_servers=self.bootstrap_servers,
            acks="all",
            enable_idempotence=True,
            linger_ms=getattr(settings, "sdk_linger_ms", 20),
            # zstd, not gzip: on 10-float rows gzip compressed 14 MB/s (13 us a row, ~40 % of a
            # writer's CPU, in the training process); zstd 330 MB/s (0.5 us) at the same ratio (5x).
            compression_type="zstd",
            # Big batches: a 10-float row is ~500 bytes, and aiokafka's 16 KiB default would
            # mean a socket write per ~30 events, each waiting for the GIL while the training
            # loop runs; 512 KiB (compressed well below the broker's 1 MiB limit) cuts that 30x.
            max_batch_size=self.BATCH_BYTES,
        )
        self._options.update(producer_options or {})
        self._queue: collections.deque[Any] = collections.deque()  # caller -> spooler
        # Spooled records to send, as (index, end offset, bytes, rows in it).
        self._window: collections.deque[tuple[int, int, bytes, int]] = collections.deque()
        self._spill: tuple[int, int] | None = None  # (offset, index) of the first record only on disk
        self._retry: list[tuple[int, int, bytes, int]] = []  # failed deliveries; loop thread only
        self._key: bytes | None = None
        self._unflushed = 0  # records written to the spool's buffer, not yet to the OS
        self._ticker: Any = None
        self._tick_interval = 0.0
        self._next_tick = 0.0
        self._cond = threading.Condition()  # guards nothing but wakes flush() on progress
        self._closing = threading.Event()
        self._stop_sender = False
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None  # wakes the spooler
        self._ready: asyncio.Event | None = None  # wakes the sender
        self._idle = False
        self._behind = False  # engaged _BOOST: set by send(), cleared by the loop once caught up
        self._thread = threading.Thread(target=self._thread_main, name="runlog-sender", daemon=True)
        self._thread.start()

    # -- caller side (any thread) -------------------------------------------------------

    def send(self, event: Any) -> None:
        if self._closed:
            raise RuntimeError("transport is closed")
        if len(self._queue) >= self._cap:
            self._help()
        self._queue.append(event)
        self.counters.written += 1  # only one thread at a time sends (Run holds the writer lock)
        if self._idle:  # only pay for a cross-thread wake-up when the loop is asleep
            self._idle = False
            self._wakeup()
        elif not self._behind and len(self._queue) > self.BEHIND:
            self._behind = True
            _BOOST.engage(self)

    #: Take a :data:`RawEvent` (built and encoded on the background thread); same contract as send.
    send_raw = send

    def set_ticker(self, ticker: Any, interval: float) -> None:
        """Call ``ticker()`` from the background thread every ``interval`` seconds (heartbeats)."""
        self._tick_interval = interval
        self._next_tick = time.monotonic() + interval
        self._ticker = ticker

    def _help(self) -> None:
        """The spooler is behind: spool the oldest queued events here, keeping the deque bounded."""
        with self.spool.lock:
            for _ in range(self.HELP_BATCH):
                if not self._queue:
                    break
                self._spool_one(self._take(), to_window=False)
            self._flush_spool()

    @property
    def _done(self) -> int:
        """Events that need nothing more from the sender (acknowledged, or failed)."""
        return self.counters.acked + self.counters.failed if self.online else self.counters.spooled + self.counters.failed

    def flush(self, timeout: float | None = None) -> int:
        """Wait until everything sent so far is acknowledged (offline: written to the spool).

        Returns how many events are not acknowledged by Kafka (offline: all of them)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self.counters.written - self._done > 0 and self._thread.is_alive():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._cond.wait(0.1 if left is None else min(left, 0.1))
            return self.counters.pending

    def close(self, timeout: float | None = None) -> int:
        if self._closed:
            return self.counters.pending
        deadline = None if timeout is None else time.monotonic() + timeout
        self.flush(timeout)
        self._closed = True
        self._closing.set()
        self._wakeup()
        left = None if deadline is None else max(deadline - time.monotonic(), 0.0) + self.STOP_WAIT + 3.0
        self._thread.join(left)
        if not self._thread.is_alive():
            with self.spool.lock:  # anything the thread did not get to (it died): spool it here
                while self._queue:
                    self._spool_one(self._take(), to_window=False)
                self._flush_spool()
            self.spool.close()
        remaining = self.counters.pending
        if remaining and self.online:
            log.info(
                "runlog: %d event(s) were not acknowledged by Kafka at %s; they stay in %s (last error: %r)",
                remaining, self.bootstrap_servers, getattr(self.spool, "path", None) or "memory", self.last_error,
            )
        return remaining

    def _wakeup(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            try:
                loop.call_soon_threadsafe(wake.set)
            except RuntimeError:  # loop already closed
                pass

    # -- spooling (loop thread, or send() under the spool lock) --------------------------

    def _take(self) -> Any:
        """The next queued item; a raw ``run.log`` row comes with the rows of the same run queued
        right behind it (consecutive seqs), as a list: a pack. Caller holds the spool lock."""
        item = self._queue.popleft()
        if type(item) is not tuple or item[0] != "run.log":
            return item
        pack = [item]
        queue = self._queue
        while queue and len(pack) < PACK_ROWS:
            nxt = queue[0]
            if (type(nxt) is not tuple or nxt[0] != "run.log" or nxt[1] is not item[1] or nxt[2] is not item[2]
                    or nxt[3] != pack[-1][3] + 1):
                break
            pack.append(queue.popleft())
        return pack

    def _spool_one(self, item: Any, to_window: bool) -> None:
        """Build (raw rows), encode and spool one event; a pack over PACK_BYTES is halved."""
        rows = len(item) if type(item) is list else 1
        event = item
        if type(item) is list or type(item) is tuple:  # raw rows from log(): built here, off the caller's thread
            try:
                event = build_pack(item) if type(item) is list else build_event(item)
            except Exception as exc:  # values were checked in log(): this is a bug, say so loudly
                if rows > 1:  # only the row(s) at fault must be lost: build them one by one
                    for raw in item:
                        self._spool_one(raw, to_window)
                    return
                self._fail(item, exc, rows)
                return
        try:
            data = encode_fast(event)
            if rows > 1 and len(data) > PACK_BYTES:
                raise OversizedEvent(len(data), PACK_BYTES)
        except OversizedEvent as exc:
            if rows > 1:  # too big as one pack: two halves
                self._spool_one(item[: rows // 2], to_window)
                self._spool_one(item[rows // 2:], to_window)
                return
            self._fail(event, exc, rows)
            return
        except Exception as exc:  # a bug: it can never be sent
            if rows > 1:  # a pack is built without checking its rows again: find the row at fault
                for raw in item:
                    self._spool_one(raw, to_window)
                return
            self._fail(event, exc, rows)
            return
        if self._key is None:
            self._key = event.key
        index, start, end = self.spool.write(data)
        self._unflushed += rows
        if to_window and self._spill is None and len(self._window) < self._cap:
            self._window.append((index, end, data, rows))
        elif self._spill is None:
            self._spill = (start, index)

    def _flush_spool(self) -> None:
        """Hand buffered records to the OS; only then do they count as spooled (caller holds the lock)."""
        self.spool.flush()
        self.counters.spooled += self._unflushed
        self._unflushed = 0

    def _drain(self) -> bool:
        """Spool up to DRAIN_BATCH queued events; True if more are queued."""
        if not self._queue:
            return False
        with self.spool.lock:
            for _ in range(self.DRAIN_BATCH):
                if not self._queue:
                    break
                self._spool_one(self._take(), to_window=self.online)
            self._flush_spool()
        with self._cond:
            self._cond.notify_all()
        if self._ready is not None:
            self._ready.set()
        return bool(self._queue)

    def _refill(self) -> None:
        """The window is empty: read back what only the spool file holds."""
        with self.spool.lock:
            if self._spill is None:
                return
            offset, index = self._spill
            self.spool.flush()
            records = self.spool.read(offset, index, min(self._cap, 1000))
            if records:
                self._window.extend((i, end, data, rows_in(data)) for i, end, data in records)
                last_index, last_end, _ = records[-1]
                offset, index = last_end, last_index + 1
            self._spill = None if offset >= self.spool.end else (offset, index)

    def _housekeeping(self, now: float, last_sync: float) -> float:
        if self._ticker is not None and now >= self._next_tick:
            self._next_tick = now + self._tick_interval
            try:
                self._ticker()
            except Exception:
                log.exception("runlog: heartbeat failed")
        if now - last_sync >= self._fsync_interval:
            with self.spool.lock:
                self.spool.sync()
            return now
        return last_sync

    # -- background thread ----------------------------------------------------------------

    def _thread_main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except BaseException as exc:  # never let the thread die silently
            self.last_error = exc
            log.exception("runlog: sender thread stopped")
        finally:
            self._loop = None
            loop.close()
            with self._cond:
                self._cond.notify_all()

    async def _main(self) -> None:
        self._wake = asyncio.Event()
        self._ready = asyncio.Event()
        sender = asyncio.create_task(self._sender()) if self.online else None
        last_sync = time.monotonic()
        try:
            while True:
                more = self._drain()
                last_sync = self._housekeeping(time.monotonic(), last_sync)
                if more:
                    await asyncio.sleep(0)  # let the sender run between batches
                    continue
                if self._behind:  # caught up
                    self._behind = False
                    _BOOST.disengage(self)
                if self._closing.is_set() and not self._queue:
                    break
                self._idle = True
                self._wake.clear()
                if not self._queue:  # re-check: a send may have slipped in before _idle
                    try:
                        await asyncio.wait_for(self._wake.wait(), self.IDLE_POLL)
                    except asyncio.TimeoutError:
                        pass
                self._idle = False
                if self.WAKE_LINGER and len(self._queue) < self.DRAIN_BATCH and not self._closing.is_set():
                    await asyncio.sleep(self.WAKE_LINGER)
        finally:
            _BOOST.disengage(self)
            if sender is not None:
                self._stop_sender = True
                self._ready.set()
                try:
                    await asyncio.wait_for(sender, self.STOP_WAIT + 2.0)
                except (asyncio.TimeoutError, asyncio.CancelledError):
                    pass
                except Exception as exc:
                    self.last_error = exc
            with self.spool.lock:
                self.spool.sync()

    async def _sender(self) -> None:
        from aiokafka import AIOKafkaProducer  # imported here: the SDK's import stays cheap

        delay = self.RETRY_MIN
        while not self._stop_sender:
            producer = AIOKafkaProducer(**self._options)
            try:
                await producer.start()
            except Exception as exc:
                self.last_error = exc
                if delay == self.RETRY_MIN:  # once per outage, not once per attempt
                    log.warning("runlog: Kafka at %s unreachable (%r); retrying in the background", self.bootstrap_servers, exc)
                await self._stop_quietly(producer)
                await self._wait_ready(delay)
                delay = min(delay * 2, self.RETRY_MAX)
                continue
            self.connected = True
            delay = self.RETRY_MIN
            try:
                await self._pump(producer)
            finally:
                self.connected = False
                await self._stop_quietly(producer)

    async def _wait_ready(self, seconds: float) -> None:
        assert self._ready is not None
        try:
            await asyncio.wait_for(self._ready.wait(), seconds)
        except asyncio.TimeoutError:
            pass
        self._ready.clear()

    async def _pump(self, producer: Any) -> None:
        from aiokafka.errors import KafkaError, MessageSizeTooLargeError

        pending: set[asyncio.Future] = set()
        window = self._window
        while not self._stop_sender:
            if self._retry:  # failed deliveries go first, in their original order
                self._retry.sort(key=lambda r: r[0])
                window.extendleft(reversed(self._retry))
                self._retry.clear()
            if not window:
                self._refill()
            if not window:
                await self._wait_ready(self.IDLE_POLL)
                continue
            record = window.popleft()
            try:
                fut = await producer.send(self.topic, value=record[2], key=self._key)
            except MessageSizeTooLargeError as exc:
                self._fail(record, exc, record[3])
                self.spool.ack(record[0], record[1])  # never sendable: don't let it block the frontier
                continue
            except KafkaError as exc:  # metadata timeout, broker gone: retry later
                self.last_error = exc
                window.appendleft(record)
                self.counters.retried += 1
                await self._wait_ready(self.RETRY_MIN)
                continue
            self.counters.sent += record[3]
            pending.add(fut)
            fut.add_done_callback(lambda f, r=record: self._delivered(f, r, pending))
        if pending:  # closing: give what is in flight a moment; the rest stays in the spool
            await asyncio.wait(pending, timeout=self.STOP_WAIT)

    def _delivered(self, fut: asyncio.Future, record: tuple[int, int, bytes], pending: set) -> None:
        pending.discard(fut)
        exc = None if fut.cancelled() else fut.exception()
        if fut.cancelled() or exc is not None:
            self.last_error = exc
            self.counters.sent -= record[3]
            if not self._stop_sender:
                self._retry.append(record)  # try again, in spool order
                self.counters.retried += 1
                if self._ready is not None:
                    self._ready.set()
            return
        self.spool.ack(record[0], record[1])
        with self._cond:
            self.counters.acked += record[3]
            self._cond.notify_all()

    def _fail(self, item: Any, exc: BaseException, rows: int = 1) -> None:
        """Count ``rows`` rows as failed and say why. ``item``: a typed event, raw rows from
        log() that could not be built (they never got an id), or a spooled record."""
        self.last_error = exc
        raw = item[0] if type(item) is list else item
        if type(raw) is tuple and len(raw) == 6:
            event_type, ref, _, seq, _, _ = raw
            log.error("runlog: could not build %s event seq %d of run %s; it is NOT spooled or sent "
                      "(the consumer will see a gap at this seq): %r", event_type, seq, ref.path, exc)
        elif type(raw) is tuple:  # a spooled record (index, end, bytes, rows)
            log.error("runlog: dropping spooled record %d (%d row(s)): %r", raw[0], rows, exc)
        else:
            log.error("runlog: dropping event %s (%s seq %s): %r", getattr(item, "id", "?"),
                      getattr(item, "type", "?"), getattr(item, "seq", "?"), exc)
        with self._cond:
            self.counters.failed += rows
            self._cond.notify_all()

    @classmethod
    async def _stop_quietly(cls, producer: Any) -> None:
        try:
            await asyncio.wait_for(producer.stop(), cls.STOP_WAIT)
        except BaseException:  # noqa: BLE001 - stopping must never raise
            pass
