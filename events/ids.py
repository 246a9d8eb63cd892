"""Identifiers and clock: time-ordered event ids (UUIDv7), deterministic ids, writer ids, UTC now."""

from __future__ import annotations

import os
import secrets
import threading
import time
import uuid
from datetime import UTC, datetime

import orjson

#: Fixed namespace of deterministic event ids (never change it: ids already written depend on it).
EVENT_NAMESPACE = uuid.UUID("6f1c5a52-3c1e-4f7b-9a3e-2b8d8e0f7c41")

_lock = threading.Lock()
_last_ms = 0
_counter = 0


def _reset_after_fork() -> None:
    """Give a forked child a fresh lock (the parent's may have been held at fork time)."""
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_after_fork)


def new_event_id() -> uuid.UUID:
    """A UUIDv7 (RFC 9562): unix ms, then a 12-bit counter so ids of one process always increase."""
    global _last_ms, _counter
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms > _last_ms:
            _last_ms, _counter = ms, secrets.randbits(11)  # random start, headroom to count up
        else:  # same ms, or the clock went back: keep counting on the last timestamp
            _counter += 1
            if _counter > 0xFFF:
                _last_ms, _counter = _last_ms + 1, secrets.randbits(11)
        ms, rand_a = _last_ms, _counter
    value = (ms & (1 << 48) - 1) << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | secrets.randbits(62)
    return uuid.UUID(int=value)


def deterministic_event_id(*parts: str) -> uuid.UUID:
    """A uuid5 of the parts, so a writer that repeats a decision (the watchdog) repeats its id."""
    return uuid.uuid5(EVENT_NAMESPACE, orjson.dumps(parts).decode())  # JSON: parts can't run together


def new_writer_id() -> str:
    """A random id for one writing process (the ``source.writer`` of its events)."""
    return uuid.uuid4().hex


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(UTC)
