"""Why an event could not be decoded or encoded; ``reason`` is the dead-letter reason code.

    ValueError
    └── EventError              reason "error"     (base: catch this one)
        ├── UndecodableEvent    "undecodable"      not UTF-8, not JSON, or not a JSON object
        ├── UnknownEventType    "unknown_type"     ``type`` names no event this reader knows
        ├── InvalidEvent        "invalid"          schema violation (field paths and problems)
        ├── OversizedEvent      "oversized"        encoded event larger than MAX_EVENT_BYTES
        └── TooManyKeys         "too_many_keys"    a payload mapping holds more than MAX_KEYS keys
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar


class EventError(ValueError):
    """Base of every event contract error; subclasses a ValueError so callers may catch either."""

    reason: ClassVar[str] = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UndecodableEvent(EventError):
    """The bytes are not UTF-8 JSON holding an object."""

    reason = "undecodable"


class UnknownEventType(EventError):
    """The event's ``type`` is not one this reader knows (e.g. a newer producer)."""

    reason = "unknown_type"

    def __init__(self, event_type: object, known: Iterable[str]) -> None:
        self.event_type = event_type
        shown = repr(event_type) if len(repr(event_type)) <= 60 else repr(event_type)[:57] + "..."
        super().__init__(f"unknown event type {shown}; known types: {', '.join(sorted(known))}")


class InvalidEvent(EventError):
    """The event breaks the schema; ``problems`` holds one 'path: what is wrong' per bad field."""

    reason = "invalid"

    def __init__(self, message: str, problems: Iterable[str] = ()) -> None:
        self.problems = tuple(problems)
        super().__init__(message)


class OversizedEvent(EventError):
    """The encoded event is larger than the limit (Kafka and the event store cap message size)."""

    reason = "oversized"

    def __init__(self, size: int, limit: int) -> None:
        self.size, self.limit = size, limit
        super().__init__(f"event is {size:,} bytes encoded; the limit is {limit:,} bytes")


class TooManyKeys(EventError):
    """A payload mapping (log values, config, summary) holds more keys than allowed."""

    reason = "too_many_keys"

    def __init__(self, where: str, count: int, limit: int) -> None:
        self.count, self.limit = count, limit
        super().__init__(f"{where} has {count:,} keys; the limit is {limit:,}")


class UnappliableEvent(EventError):
    """A valid event the consumer could not apply to the read models (PostgreSQL refused a value,
    or a bug): dead-lettered with the error, so the events after it are not held up or lost."""

    reason = "unappliable"
