"""``runlog sync``: send what local spools hold and Kafka never acknowledged.

For each spool file (see ``_spool``) the records after the acknowledged position are read back
and sent in order, exactly as written (same event ids, writers and seqs), with an idempotent
``acks=all`` producer; once Kafka acknowledged them the ``.acked`` side file moves forward.
Sending an event twice is harmless: the consumer dedupes by event id and by (writer, run,
seq). A spool that a live process holds (its ``flock``) is skipped: that process sends it.

Light on purpose: aiokafka, orjson and ``events.settings``; nothing from the server side.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._spool import iter_records, read_acked, try_lock, write_acked
from ._spool import find_spools as _find_spools
from .errors import CommError


@dataclass
class SpoolState:
    """One spool file and what it still has to send."""

    path: Path
    run_path: str | None = None
    total: int = 0  # intact records in the file
    acked: int = 0  # acknowledged (contiguous from the start)
    acked_offset: int = 0
    busy: bool = False  # held by a live process
    sent: int = 0  # acknowledged during this sync
    error: str | None = None
    records: list[tuple[int, bytes]] = field(default_factory=list, repr=False)  # (end offset, data) unacked

    @property
    def unsent(self) -> int:
        return self.total - self.acked


def find_spools(dirs: Iterable[str | os.PathLike[str]] | None = None, home: Path | None = None) -> list[Path]:
    """Spool files under ``dirs`` (default: ``$RUNLOG_HOME/spool``)."""
    if not dirs:
        if home is None:
            from events.settings import get_settings

            home = get_settings().home
        dirs = [Path(home) / "spool"]
    return _find_spools([Path(d) for d in dirs])


def inspect(path: Path) -> SpoolState:
    """Read a spool's unacknowledged records (without locking; see :func:`sync`)."""
    state = SpoolState(path=Path(path))
    acked, offset = read_acked(path)
    records = list(iter_records(path))
    state.total = len(records)
    if acked > len(records) or (acked and records[acked - 1][0] != offset):
        acked, offset = 0, 0  # a side file that does not match the spool: resend everything
    state.acked, state.acked_offset = acked, offset
    state.records = records[acked:]
    if records:
        from ._spool import describe

        run = describe(records[0][1]).get("run") or {}
        state.run_path = f"{run.get('entity')}/{run.get('project')}/{run.get('run_id')}"
    return state


async def _send(states: list[SpoolState], settings: Any, on_ack: Callable[[int], None]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all",
                                enable_idempotence=True, linger_ms=20, compression_type="zstd")
    try:
        await asyncio.wait_for(producer.start(), 30)
    except Exception as exc:
        await _stop(producer)
        raise CommError(f"cannot reach Kafka at {settings.bootstrap_servers}: {exc!r}") from None
    try:
        for state in states:
            if not state.records:
                continue
            key = (state.run_path or "").encode()
            futures = []
            for end, data in state.records:
                fut = await producer.send(settings.events_topic, value=data, key=key)
                fut.add_done_callback(lambda f: on_ack(1) if not f.cancelled() and f.exception() is None else None)
                futures.append((end, fut))
            await asyncio.wait([f for _, f in futures], timeout=120)
            # the frontier moves over the contiguous acknowledged prefix only
            acked, offset = state.acked, state.acked_offset
            for end, fut in futures:
                if not fut.done() or fut.cancelled() or fut.exception() is not None:
                    if fut.done() and not fut.cancelled() and fut.exception() is not None:
                        state.error = repr(fut.exception())
                    else:
                        state.error = state.error or "not acknowledged in time"
                    break
                acked, offset = acked + 1, end
            state.sent = acked - state.acked
            state.acked, state.acked_offset = acked, offset
            write_acked(state.path, acked, offset)
            state.records = state.records[state.sent:]
    finally:
        await _stop(producer)


async def _stop(producer: Any) -> None:
    try:
        await asyncio.wait_for(producer.stop(), 10)
    except BaseException:  # noqa: BLE001
        pass


def sync(paths: list[Path], settings: Any = None, *, on_start: Callable[[list[SpoolState]], None] | None = None,
         on_ack: Callable[[int], None] | None = None) -> list[SpoolState]:
    """Send every unacknowledged event of the spool files ``paths``; returns their states.

    ``on_start`` gets the states before sending (for a progress total); ``on_ack(n)`` is called
    as events are acknowledged. Spools held by a live process come back with ``busy`` set."""
    if settings is None:
        from events.settings import get_settings

        settings = get_settings()
    states: list[SpoolState] = []
    fds: list[int] = []
    try:
        for path in paths:
            fd = os.open(path, os.O_RDONLY)
            if not try_lock(fd):
                os.close(fd)
                states.append(SpoolState(path=Path(path), busy=True))
                continue
            fds.append(fd)  # held until the sync is done: a new writer cannot open it meanwhile
            states.append(inspect(Path(path)))
        if on_start is not None:
            on_start(states)
        todo = [s for s in states if not s.busy and s.records]
        if todo:
            asyncio.run(_send(todo, settings, on_ack or (lambda n: None)))
    finally:
        for fd in fds:
            os.close(fd)
    return states
