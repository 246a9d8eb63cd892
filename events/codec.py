"""Events to bytes and back: orjson with tagged non-finite floats, size limit, upcasting, clean errors.

``decode`` turns any input bytes into an event or an ``EventError`` (never anything else), so a
consumer can send what it cannot read to the dead-letter topic with ``error.reason``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from pydantic import ValidationError

from .errors import EventError, InvalidEvent, OversizedEvent, TooManyKeys, UndecodableEvent, UnknownEventType
from .model import EVENT_TYPES, ROWS_CHECKED, AnyEvent, Event
from .values import MAX_EVENT_BYTES, tag_nonfinite, untag_nonfinite

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]

#: (type, v) -> function turning an event dict of version v into version v + 1 (``v`` is bumped for it).
UPCASTERS: dict[tuple[str, int], Upcaster] = {}

#: The schema version this code writes and validates, per event type.
SCHEMA_VERSIONS: dict[str, int] = {t: cls.model_fields["v"].default for t, cls in EVENT_TYPES.items()}

_MAX_PROBLEMS = 8


def dumps(obj: Any, option: int = 0) -> bytes:
    """JSON bytes of ``obj`` with non-finite floats tagged (UUIDs and datetimes become strings)."""
    return orjson.dumps(tag_nonfinite(obj), option=orjson.OPT_UTC_Z | option)


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """Parse JSON and turn ``$f`` tags back into floats.

    Text without a '$' and without a backslash (a \\u escape could spell one) holds no tag, and the
    walk over every value is skipped: it was most of the parse of a typical ``run.log``. Both are
    single bytes, found with memchr (a search for the two bytes backslash-u took a fifth as long as
    the parse).
    """
    obj = orjson.loads(data)
    raw = data.encode() if isinstance(data, str) else bytes(data)
    if b"$" in raw or b"\\" in raw:
        return untag_nonfinite(obj)
    return obj


def to_jsonable(event: Event) -> dict[str, Any]:
    """The event as a JSON-safe dict (strings for ids and times, tagged floats), as the API serves it."""
    return tag_nonfinite(event.model_dump(mode="json"))  # type: ignore[no-any-return]


def encode(event: Event) -> bytes:
    """The wire bytes of an event; raises OversizedEvent above MAX_EVENT_BYTES."""
    try:
        data = orjson.dumps(tag_nonfinite(event.model_dump()), option=orjson.OPT_UTC_Z)
    except orjson.JSONEncodeError as e:  # only reachable for events built without validation
        raise InvalidEvent(f"cannot encode {event.type} event: {e}") from e
    if len(data) > MAX_EVENT_BYTES:
        raise OversizedEvent(len(data), MAX_EVENT_BYTES)
    return data


def decode(data: bytes, *, stored: bool = False) -> AnyEvent:
    """Parse wire bytes into a typed event; raises only EventError subclasses.

    ``stored``: the bytes come from the event store, so they passed this decode when accepted; a
    packed log's rows are then not checked again (see ``events.model._rows``). An event of an
    older version is still checked in full after its upcast."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise UndecodableEvent(f"expected bytes, got {type(data).__name__}")
    if len(data) > MAX_EVENT_BYTES:
        raise OversizedEvent(len(data), MAX_EVENT_BYTES)
    try:
        obj = loads(data)
    except orjson.JSONDecodeError as e:
        raise UndecodableEvent(f"not UTF-8 JSON: {e}") from None
    except RecursionError:
        raise UndecodableEvent("JSON nested too deeply") from None
    return decode_dict(obj, stored=stored)


def decode_dict(obj: Any, *, stored: bool = False) -> AnyEvent:
    """Validate already parsed (and untagged) JSON into a typed event; raises only EventError subclasses."""
    if not isinstance(obj, dict):
        raise UndecodableEvent(f"an event is a JSON object, got {_json_kind(obj)}")
    event_type = obj.get("type")
    if event_type is None:
        raise InvalidEvent("invalid event: type: field required", ["type: field required"])
    cls = EVENT_TYPES.get(event_type) if isinstance(event_type, str) else None
    if cls is None:
        raise UnknownEventType(event_type, EVENT_TYPES)
    version = SCHEMA_VERSIONS[event_type]
    current = obj.get("v", version) == version
    try:
        return cls.model_validate(_upcast(event_type, obj),  # type: ignore[return-value]
                                  context=ROWS_CHECKED if stored and current else None)
    except ValidationError as e:
        raise _invalid(event_type, e) from None
    except EventError:
        raise
    except RecursionError:
        raise InvalidEvent(f"invalid {event_type} event: nested too deeply") from None
    except Exception as e:  # a bug must not stop a consumer: report it as a dead letter instead
        raise InvalidEvent(f"invalid {event_type} event: {type(e).__name__}: {e}") from e


def _upcast(event_type: str, obj: dict[str, Any]) -> dict[str, Any]:
    """Bring an event dict from its version up to the current one through UPCASTERS."""
    current = SCHEMA_VERSIONS[event_type]
    v = obj.get("v", current)
    if type(v) is not int:
        return obj  # validation reports the bad version
    if v > current:
        raise InvalidEvent(f"invalid {event_type} event: version {v} is newer than this reader's {current}")
    while v < current:
        upcaster = UPCASTERS.get((event_type, v))
        if upcaster is None:
            raise InvalidEvent(f"invalid {event_type} event: no upcaster from version {v}")
        obj = {**upcaster(dict(obj)), "v": v + 1}
        v += 1
    return obj


def _invalid(event_type: str, error: ValidationError) -> EventError:
    """A TooManyKeys if a mapping was too big, else an InvalidEvent listing each bad field in one line."""
    problems = []
    for err in error.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "(event)"
        cause = err.get("ctx", {}).get("error")
        if isinstance(cause, TooManyKeys):
            return TooManyKeys(f"{event_type} {loc}", cause.count, cause.limit)
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] not in ("missing", "extra_forbidden", "value_error") and "input" in err:
            msg += f" (got {_short(err['input'])})"
        problems.append(f"{loc}: {msg}")
    shown = "; ".join(problems[:_MAX_PROBLEMS])
    if len(problems) > _MAX_PROBLEMS:
        shown += f"; and {len(problems) - _MAX_PROBLEMS} more"
    return InvalidEvent(f"invalid {event_type} event: {shown}", problems)


def _short(value: Any) -> str:
    """A short description of an offending input: its type and a clipped repr."""
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def _json_kind(obj: Any) -> str:
    """JSON's name for the kind of a parsed value."""
    kinds = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if obj is None else kinds.get(type(obj), type(obj).__name__)
