"""How events leave the process.

``Run`` stamps events and hands them to a :class:`Transport`; the transport owns everything
slow (network, batching, compression, retries). ``send`` never blocks and never does I/O on
the caller's thread, because it is called from ``log()`` on the training hot path.

- :class:`KafkaTransport` -- a daemon thread running its own asyncio loop that owns an
  ``aiokafka.AIOKafkaProducer``; fed by a thread-safe deque.
- :class:`DisabledTransport` -- ``mode="disabled"``: accepts and forgets.
- :class:`MemoryTransport` -- keeps every event in a list (tests, dry runs).

Durability seam: every event passes through a :class:`Spool` (``append`` before it is queued,
``ack`` once Kafka acknowledged it). Today the only spool is :class:`NoSpool`, so events still
queued when the process dies are lost; the on-disk spool (and ``runlog sync``) plugs in there
without changing ``Run`` or the transport's interface.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover
    from events.settings import Settings

log = logging.getLogger("producer.transport")


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
    """Progress of a transport. ``written - acked`` is what is still at risk."""

    written: int = 0  # accepted by send()
    sent: int = 0  # handed to the Kafka producer (in a batch, maybe not yet on the wire)
    acked: int = 0  # acknowledged by the broker (acks=all)
    retried: int = 0  # delivery failed and the event was queued again
    failed: int = 0  # could never be sent (e.g. bigger than the broker accepts)

    @property
    def pending(self) -> int:
        return self.written - self.acked - self.failed


class Spool(Protocol):
    """The durability seam (see module docstring). Called on the transport's threads."""

    def append(self, event: Any) -> None: ...

    def ack(self, event: Any) -> None: ...

    def close(self) -> None: ...


class NoSpool:
    """No durability: events live only in memory until Kafka acknowledges them."""

    def append(self, event: Any) -> None:
        pass

    def ack(self, event: Any) -> None:
        pass

    def close(self) -> None:
        pass


class DisabledTransport:
    """``mode="disabled"``: the same API, nothing leaves the process, nothing is kept."""

    def __init__(self) -> None:
        self.counters = Counters()

    def send(self, event: Any) -> None:
        self.counters.written += 1
        self.counters.acked += 1

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
    """Background-thread Kafka producer. ``send`` appends to a deque and returns.

    The thread runs its own asyncio loop owning one ``AIOKafkaProducer`` (acks=all,
    idempotent, gzip, linger 20 ms). If the broker is unreachable it keeps trying to connect
    with back-off, forever, without blocking the caller; ``flush``/``close`` are the only calls
    that wait, and only up to their timeout. Events whose delivery failed are queued again
    (at the front, so the retry goes first), so they may arrive out of ``seq`` order after a
    broker outage; consumers detect that from (writer, seq).
    """

    RETRY_MIN = 0.2  # seconds between connection attempts, doubling up to RETRY_MAX
    RETRY_MAX = 5.0
    IDLE_POLL = 0.05  # how long the loop sleeps when the queue is empty (a send also wakes it)

    def __init__(
        self,
        settings: Settings,
        *,
        topic: str | None = None,
        spool: Spool | None = None,
        producer_options: dict[str, Any] | None = None,
    ) -> None:
        self.bootstrap_servers = settings.bootstrap_servers
        self.topic = topic or settings.events_topic
        self.counters = Counters()
        self.last_error: BaseException | None = None
        self.connected = False
        self._spool: Spool = spool or NoSpool()
        self._options = dict(
            bootstrap_servers=self.bootstrap_servers,
            acks="all",
            enable_idempotence=True,
            linger_ms=20,
            compression_type="gzip",
        )
        self._options.update(producer_options or {})
        self._queue: collections.deque[Any] = collections.deque()
        self._retry: list[Any] = []  # failed deliveries; touched only by the loop thread
        self._cond = threading.Condition()  # guards nothing but wakes flush() on progress
        self._closing = threading.Event()
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._idle = False
        self._thread = threading.Thread(target=self._thread_main, name="runlog-kafka", daemon=True)
        self._thread.start()

    # -- caller side (any thread) -------------------------------------------------------

    def send(self, event: Any) -> None:
        if self._closed:
            raise RuntimeError("transport is closed")
        self._spool.append(event)  # seam: the on-disk spool writes here, before queuing
        self._queue.append(event)
        self.counters.written += 1  # only the sending thread writes this (Run holds a lock)
        if self._idle:  # only pay for a cross-thread wake-up when the loop is asleep
            self._idle = False
            self._wakeup()

    def flush(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self.counters.pending > 0 and self._thread.is_alive():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._cond.wait(0.1 if left is None else min(left, 0.1))
            return self.counters.pending

    def close(self, timeout: float | None = None) -> int:
        if self._closed:
            return self.counters.pending
        deadline = None if timeout is None else time.monotonic() + timeout
        remaining = self.flush(timeout)
        self._closed = True
        self._closing.set()
        self._wakeup()
        left = None if deadline is None else max(deadline - time.monotonic(), 0.0) + 1.0
        self._thread.join(left)
        self._spool.close()
        if remaining:
            log.warning(
                "runlog: %d event(s) were not acknowledged by Kafka at %s and are lost "
                "(no spool yet); last error: %r",
                remaining,
                self.bootstrap_servers,
                self.last_error,
            )
        return remaining

    def _wakeup(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            try:
                loop.call_soon_threadsafe(wake.set)
            except RuntimeError:  # loop already closed
                pass

    # -- background thread ----------------------------------------------------------------

    def _thread_main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except BaseException as exc:  # never let the thread die silently
            self.last_error = exc
            log.exception("runlog: Kafka transport thread stopped")
        finally:
            self._loop = None
            loop.close()
            with self._cond:
                self._cond.notify_all()

    async def _main(self) -> None:
        from aiokafka import AIOKafkaProducer  # imported here: the SDK's import stays cheap

        self._wake = asyncio.Event()
        delay = self.RETRY_MIN
        while not self._closing.is_set():
            producer = AIOKafkaProducer(**self._options)
            try:
                await producer.start()
            except Exception as exc:
                self.last_error = exc
                if delay == self.RETRY_MIN:  # once per outage, not once per attempt
                    log.warning("runlog: Kafka at %s unreachable (%r); retrying in the background", self.bootstrap_servers, exc)
                await self._stop_quietly(producer)
                await self._sleep(delay)
                delay = min(delay * 2, self.RETRY_MAX)
                continue
            self.connected = True
            delay = self.RETRY_MIN
            try:
                await self._pump(producer)
            finally:
                self.connected = False
                await self._stop_quietly(producer)

    async def _pump(self, producer: Any) -> None:
        from aiokafka.errors import KafkaError, MessageSizeTooLargeError

        from events.codec import encode

        pending: set[asyncio.Future] = set()
        while True:
            if self._retry:  # failed deliveries go first, in their original order
                self._retry.sort(key=lambda e: e.seq)
                self._queue.extendleft(reversed(self._retry))
                self._retry.clear()
            if not self._queue:
                if self._closing.is_set():
                    break
                self._idle = True
                self._wake.clear()
                if not self._queue:  # re-check: a send may have slipped in before _idle
                    try:
                        await asyncio.wait_for(self._wake.wait(), self.IDLE_POLL)
                    except asyncio.TimeoutError:
                        pass
                self._idle = False
                continue
            event = self._queue.popleft()
            try:
                fut = await producer.send(self.topic, value=encode(event), key=event.key)
            except MessageSizeTooLargeError as exc:
                self._fail(event, exc)
                continue
            except KafkaError as exc:  # metadata timeout, broker gone: retry later
                self.last_error = exc
                self._queue.appendleft(event)
                self.counters.retried += 1
                if self._closing.is_set():
                    break  # close() already waited as long as it was allowed to
                await self._sleep(self.RETRY_MIN)
                continue
            except Exception as exc:  # could not encode: a bug, never retry
                self._fail(event, exc)
                continue
            self.counters.sent += 1
            pending.add(fut)
            fut.add_done_callback(lambda f, e=event: self._delivered(f, e, pending))
        if pending:
            await asyncio.wait(pending)

    def _delivered(self, fut: asyncio.Future, event: Any, pending: set) -> None:
        pending.discard(fut)
        exc = None if fut.cancelled() else fut.exception()
        if fut.cancelled() or exc is not None:
            self.last_error = exc
            self._retry.append(event)  # try again; see the class docstring on ordering
            self.counters.retried += 1
            self._wakeup()
            return
        self._spool.ack(event)
        with self._cond:
            self.counters.acked += 1
            self._cond.notify_all()

    def _fail(self, event: Any, exc: BaseException) -> None:
        self.last_error = exc
        log.error("runlog: dropping event %s (%s): %r", getattr(event, "id", "?"), getattr(event, "type", "?"), exc)
        with self._cond:
            self.counters.failed += 1
            self._cond.notify_all()

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake early when closing (a send or close sets the wake event)."""
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except asyncio.TimeoutError:
            pass
        self._wake.clear()

    @staticmethod
    async def _stop_quietly(producer: Any) -> None:
        try:
            await producer.stop()
        except Exception:
            pass
