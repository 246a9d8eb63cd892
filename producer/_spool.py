"""The on-disk spool: every event of a run, in ``seq`` order, before it is handed to Kafka.

Layout (see :func:`run_dir`)::

    $RUNLOG_HOME/spool/<entity>+<project>+<run_id>/<writer>.spool   append-only records
    $RUNLOG_HOME/spool/<entity>+<project>+<run_id>/<writer>.acked   {"records": n, "offset": bytes}

(``init(dir=D)`` puts the run directory under ``D/runlog/`` instead.) One file per run and
writer (process): ranks writing into one run never share a file.

A record is ``[4-byte big-endian length][4-byte big-endian crc32 of the data][data]`` where
the data is the event's wire bytes (``events.codec.encode``), sent to Kafka unchanged. A
reader stops at the first record that is incomplete or fails its checksum: a torn last write
(power loss, SIGKILL in the middle of a write) costs that record and nothing before it.

The ``.acked`` side file holds the highest *contiguous* acknowledged position: the first
``records`` records (``offset`` bytes) were acknowledged by Kafka. It is replaced atomically
(write a temporary file, then ``rename``), so it is always either the old or the new value;
losing an update only means ``runlog sync`` resends a few events, which is harmless (the
consumer dedupes by event id and by (writer, run, seq)).

Durability trade-off: the background thread writes each batch of events to the OS as soon as
it takes them off the in-memory queue (a ``write``; this survives the process being killed,
SIGKILL included) and calls ``fsync`` at most every ``sdk_fsync_interval`` seconds (default
0.1 s) and at finish. So a process crash loses nothing that reached the spool, while a
machine crash (power loss, kernel panic) can lose up to the last ~100 ms of events. Fsyncing
every event would cost a disk flush per ``log()`` (milliseconds on many disks).

A live spool is held with an exclusive ``flock``; ``runlog sync`` skips spools that a
running process holds (it sends them itself). The lock dies with the process.
"""

from __future__ import annotations

import fcntl
import os
import struct
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

HEADER = struct.Struct(">II")  # length, crc32
SPOOL_SUFFIX = SUFFIX = ".spool"
ACKED_SUFFIX = ".acked"
MAX_RECORD = 64 * 1024 * 1024  # a length beyond this is corruption, not a record


def run_dir(home: Path, entity: str, project: str, run_id: str, base: str | os.PathLike[str] | None = None) -> Path:
    """The directory holding a run's spool files (``base`` is ``init(dir=...)``)."""
    root = Path(base) / "runlog" if base is not None else Path(home) / "spool"
    return root / f"{entity}+{project}+{run_id}"


def frame(data: bytes) -> bytes:
    """One record: header + data."""
    return HEADER.pack(len(data), zlib.crc32(data)) + data


def iter_records(path: Path | str, offset: int = 0) -> Iterator[tuple[int, bytes]]:
    """Yield ``(end_offset, data)`` for each intact record from ``offset`` on; stop at a torn one."""
    with open(path, "rb") as f:
        f.seek(offset)
        pos = offset
        while True:
            header = f.read(HEADER.size)
            if len(header) < HEADER.size:
                return
            length, crc = HEADER.unpack(header)
            if length > MAX_RECORD:
                return
            data = f.read(length)
            if len(data) < length or zlib.crc32(data) != crc:
                return
            pos += HEADER.size + length
            yield pos, data


def read_acked(spool_path: Path | str) -> tuple[int, int]:
    """``(records, offset)`` acknowledged so far according to the side file (0, 0 if none)."""
    try:
        obj = orjson.loads(Path(spool_path).with_suffix(ACKED_SUFFIX).read_bytes())
        return int(obj["records"]), int(obj["offset"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0, 0


def write_acked(spool_path: Path | str, records: int, offset: int) -> None:
    """Replace the side file atomically."""
    final = Path(spool_path).with_suffix(ACKED_SUFFIX)
    tmp = final.with_name(f"{final.name}.tmp{os.getpid()}")
    tmp.write_bytes(orjson.dumps({"records": records, "offset": offset}))
    os.replace(tmp, final)


def find_spools(paths: list[Path]) -> list[Path]:
    """Every ``*.spool`` file in ``paths`` (files, or directories searched recursively), sorted."""
    found: set[Path] = set()
    for p in paths:
        p = Path(p)
        if p.is_file() and p.suffix == SUFFIX:
            found.add(p.resolve())
        elif p.is_dir():
            found.update(q.resolve() for q in p.rglob(f"*{SUFFIX}") if q.is_file())
    return sorted(found)


def try_lock(fd: int) -> bool:
    """Take the exclusive lock on an open spool file without waiting."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False


class SpoolFile:
    """The writer's side of one spool file. ``write`` is called from one thread at a time (the
    transport holds ``lock``); ``read`` and ``ack`` only from the transport's thread."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        if not try_lock(self._fd):
            os.close(self._fd)
            raise RuntimeError(f"spool {self.path} is in use by another process")
        # Continue an existing file (same writer re-opening its run): count its intact records
        # and cut off a torn tail so new records follow the last good one.
        count, end = 0, 0
        if os.fstat(self._fd).st_size:
            for end, _ in iter_records(self.path):
                count += 1
            os.ftruncate(self._fd, end)
        self.records = count  # records written (index of the next one)
        self.end = end  # bytes written to the OS
        self._buf: list[bytes] = []
        self._buf_bytes = 0
        self.synced_end = end
        acked_records, acked_offset = read_acked(self.path)
        if acked_records > count or acked_offset > end:
            acked_records, acked_offset = 0, 0
        self.acked_records, self.acked_offset = acked_records, acked_offset
        self._saved = (acked_records, acked_offset)
        self._acked_above: dict[int, int] = {}  # index -> end offset, acked beyond the frontier
        self.closed = False

    # writing ------------------------------------------------------------------------------

    def write(self, data: bytes) -> tuple[int, int, int]:
        """Buffer one record; returns ``(index, start_offset, end_offset)``. Call :meth:`flush`
        to hand the buffer to the OS."""
        record = frame(data)
        start = self.end + self._buf_bytes
        self._buf.append(record)
        self._buf_bytes += len(record)
        index = self.records
        self.records += 1
        return index, start, start + len(record)

    def flush(self) -> None:
        """Write the buffered records to the OS (survives the process, not the machine)."""
        if self._buf:
            data = b"".join(self._buf)
            self._buf.clear()
            self._buf_bytes = 0
            view = memoryview(data)
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
            self.end += len(data)

    def sync(self) -> None:
        """Flush and fsync (survives the machine), and save the acknowledged position."""
        self.flush()
        if self.synced_end != self.end:
            os.fsync(self._fd)
            self.synced_end = self.end
        self.save_acked()

    # reading back (records that did not fit in memory) ---------------------------------

    def read(self, offset: int, index: int, max_records: int) -> list[tuple[int, int, bytes]]:
        """Up to ``max_records`` records from ``offset`` (whose first is record ``index``) as
        ``(index, end_offset, data)``; only what was flushed to the OS."""
        out: list[tuple[int, int, bytes]] = []
        if offset >= self.end:
            return out
        size = min(self.end - offset, 8 * 1024 * 1024)
        chunk = os.pread(self._fd, size, offset)
        pos = 0
        while len(out) < max_records and pos + HEADER.size <= len(chunk):
            length, crc = HEADER.unpack_from(chunk, pos)
            start = pos + HEADER.size
            if start + length > len(chunk):
                if not out:  # one record bigger than the chunk
                    data = os.pread(self._fd, length, offset + start)
                    out.append((index, offset + start + length, data))
                break
            data = bytes(chunk[start:start + length])
            if zlib.crc32(data) != crc:
                raise RuntimeError(f"spool {self.path} is corrupt at byte {offset + pos}")
            pos = start + length
            out.append((index, offset + pos, data))
            index += 1
        return out

    # acknowledgements ----------------------------------------------------------------------

    def ack(self, index: int, end_offset: int) -> None:
        """Kafka acknowledged record ``index`` (ending at ``end_offset``); move the frontier."""
        if index < self.acked_records:
            return
        self._acked_above[index] = end_offset
        above = self._acked_above
        while self.acked_records in above:
            self.acked_offset = above.pop(self.acked_records)
            self.acked_records += 1

    def save_acked(self) -> None:
        current = (self.acked_records, self.acked_offset)
        if current != self._saved:
            write_acked(self.path, *current)
            self._saved = current

    @property
    def unacked(self) -> int:
        return self.records - self.acked_records

    def close(self) -> None:
        if self.closed:
            return
        try:
            self.sync()
        finally:
            self.closed = True
            os.close(self._fd)  # releases the flock


def describe(data: bytes) -> dict[str, Any]:
    """The parsed JSON of one record (for the run path / writer / seq; no validation)."""
    return orjson.loads(data)  # type: ignore[no-any-return]
