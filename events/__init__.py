"""runlog's wire contract: typed events, their JSON codec, value rules and errors (SDK and server share it)."""

from .codec import SCHEMA_VERSIONS, UPCASTERS, decode, decode_dict, dumps, encode, loads, to_jsonable
from .errors import EventError, InvalidEvent, OversizedEvent, TooManyKeys, UndecodableEvent, UnknownEventType
from .ids import deterministic_event_id, new_event_id, new_writer_id, utcnow
from .model import (
    EVENT_TYPES,
    AlertPayload,
    AnyEvent,
    ConfigPayload,
    EmptyPayload,
    Event,
    FinishPayload,
    HeartbeatPayload,
    InitPayload,
    LogPayload,
    LogRow,
    LostPayload,
    MetricPayload,
    RunAlert,
    RunConfig,
    RunCrashed,
    RunDelete,
    RunFinish,
    RunHeartbeat,
    RunInit,
    RunLog,
    RunMetric,
    RunPreempted,
    RunPreempting,
    RunRef,
    RunStateChange,
    RunSummary,
    RunTags,
    RunUndelete,
    RunUpdate,
    Source,
    StateChangePayload,
    SummaryPayload,
    TagsPayload,
    UpdatePayload,
)
from .values import (
    MAX_EVENT_BYTES,
    MAX_KEY_LENGTH,
    MAX_KEYS,
    MAX_STRING_LENGTH,
    check_key,
    check_value,
    flatten,
    normalize_config,
    normalize_values,
    tag_nonfinite,
    untag_nonfinite,
)

__all__ = [
    # codec
    "SCHEMA_VERSIONS", "UPCASTERS", "decode", "decode_dict", "dumps", "encode", "loads", "to_jsonable",
    # errors
    "EventError", "InvalidEvent", "OversizedEvent", "TooManyKeys", "UndecodableEvent", "UnknownEventType",
    # ids
    "deterministic_event_id", "new_event_id", "new_writer_id", "utcnow",
    # envelope and events
    "EVENT_TYPES", "AnyEvent", "Event", "RunRef", "Source",
    "RunInit", "RunLog", "RunConfig", "RunSummary", "RunTags", "RunMetric", "RunAlert", "RunHeartbeat",
    "RunPreempting", "RunFinish", "RunStateChange", "RunCrashed", "RunPreempted", "RunUpdate",
    "RunDelete", "RunUndelete",
    # payloads
    "InitPayload", "LogPayload", "LogRow", "ConfigPayload", "SummaryPayload", "TagsPayload", "MetricPayload",
    "AlertPayload", "HeartbeatPayload", "EmptyPayload", "FinishPayload", "StateChangePayload",
    "LostPayload", "UpdatePayload",
    # values
    "MAX_EVENT_BYTES", "MAX_KEYS", "MAX_KEY_LENGTH", "MAX_STRING_LENGTH", "check_key", "check_value",
    "flatten", "normalize_config", "normalize_values", "tag_nonfinite", "untag_nonfinite",
]
