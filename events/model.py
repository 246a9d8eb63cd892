"""The typed events: an envelope (id, type, run, source, seq, time, v) around one payload per type.

Models are frozen and strict where it matters on the wire: no "1" -> 1 coercion, no bool/int
confusion, no extra fields. Value mappings follow the rules in ``events.values``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from operator import itemgetter
from typing import Annotated, Any, ClassVar, Literal, NamedTuple, Union
from uuid import UUID

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    StrictBool,
    StrictFloat,
    StringConstraints,
    ValidationInfo,
)

from .ids import new_event_id, utcnow
from .values import (
    INT64_MAX,
    INT64_MIN,
    MAX_KEY_LENGTH,
    MAX_STRING_LENGTH,
    JSON,
    Scalar,
    Value,
    check_scalar,
    check_key,
    check_key_count,
    check_values,
    check_values_many,
    normalize_config,
)

# --- field types -------------------------------------------------------------------------------

Int64 = Annotated[int, Field(strict=True, ge=INT64_MIN, le=INT64_MAX)]
NonNegInt = Annotated[int, Field(strict=True, ge=0, le=INT64_MAX)]
Text = Annotated[str, StringConstraints(strict=True, max_length=MAX_STRING_LENGTH)]
Name = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=MAX_KEY_LENGTH)]
Tag = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=64)]


def _key(key: Any) -> str:
    """A payload key (1..MAX_KEY_LENGTH chars, no leading '$')."""
    return check_key(key)


def _values(data: Any) -> dict[str, Value]:
    """A flat mapping of log/summary values."""
    return check_values(data)


def _config(data: Any) -> dict[str, JSON]:
    """A nested JSON config mapping."""
    return normalize_config(data)


def _host(data: Any) -> dict[str, Scalar]:
    """A flat mapping of scalars describing the host."""
    if not isinstance(data, dict):
        raise ValueError(f"host must be a mapping, not {type(data).__name__}")
    check_key_count(data, "host")
    return {check_key(k): check_scalar(k, v) for k, v in data.items()}


def _wire_time(value: Any) -> Any:
    """Accept datetimes and ISO 8601 strings only (no unix numbers that lax parsing would take)."""
    if not isinstance(value, (datetime, str)):
        raise ValueError(f"must be an ISO 8601 string, not {type(value).__name__}")
    return value


def _path_part(value: str) -> str:
    """One component of a run path: printable and without '/'."""
    if "/" in value or not value.isprintable():
        raise ValueError(f"{value!r} must be printable and contain no '/'")
    return value


Key = Annotated[str, PlainValidator(_key)]
Values = Annotated[dict[str, Value], PlainValidator(_values)]
Config = Annotated[dict[str, Any], PlainValidator(_config)]  # values: nested JSON (see values.JSON)
Host = Annotated[dict[str, Scalar], PlainValidator(_host)]
Time = Annotated[AwareDatetime, BeforeValidator(_wire_time), AfterValidator(lambda t: t.astimezone(UTC))]
PathPart = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=128), AfterValidator(_path_part)]


class Frozen(BaseModel):
    """Base of every model here: immutable and closed to unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")


# --- envelope ----------------------------------------------------------------------------------


class RunRef(Frozen):
    """Which run an event is about; its path is the Kafka key, so one run stays in one partition."""

    entity: PathPart
    project: PathPart
    run_id: PathPart

    @property
    def path(self) -> str:
        """'entity/project/run_id'."""
        return f"{self.entity}/{self.project}/{self.run_id}"

    @classmethod
    def parse(cls, path: str) -> RunRef:
        """Parse 'entity/project/run_id' (raises ValueError)."""
        parts = path.split("/")
        if len(parts) != 3:
            raise ValueError(f"run path must look like 'entity/project/run_id', got {path!r}")
        return cls(entity=parts[0], project=parts[1], run_id=parts[2])


class Source(Frozen):
    """Who wrote an event: the kind of writer, its per-process id, and its rank where there is one."""

    kind: Literal["sdk", "api", "watchdog", "import"]
    writer: Name
    rank: NonNegInt | None = None


class Event(Frozen):
    """The envelope every event shares; subclasses fix ``type`` and the payload model."""

    id: UUID = Field(default_factory=new_event_id)
    type: str
    run: RunRef
    source: Source
    seq: NonNegInt
    time: Time = Field(default_factory=utcnow)
    v: Annotated[int, Field(strict=True, ge=1)] = 1
    payload: Frozen

    @property
    def key(self) -> bytes:
        """The Kafka message key: the run path in UTF-8."""
        return self.run.path.encode()

    @property
    def last_seq(self) -> int:
        """The last seq this event stands for (a packed ``run.log`` stands for one per row)."""
        return self.seq


# --- payloads ----------------------------------------------------------------------------------


class EmptyPayload(Frozen):
    """Payload of events whose type says it all."""


class InitPayload(Frozen):
    """A run starts (or resumes): its descriptive fields, config and host."""

    name: Text | None = None
    group: Text | None = None
    job_type: Text | None = None
    tags: list[Tag] = []
    notes: Text | None = None
    config: Config = {}
    resumed: StrictBool = False
    starting_step: NonNegInt = 0
    state: Literal["running", "pending"] = "running"
    host: Host = {}


MAX_PACKED_ROWS = 1000  # rows after the first in one run.log event (bounds one event's fold)


class LogRow(NamedTuple):
    """A history row: flat keys to values at ``step`` (an item of ``LogPayload.more``).

    A tuple, not a model: a pack holds up to MAX_PACKED_ROWS of them, and one pydantic model per
    row cost ~2.5 us to validate, most of the time it took to decode a pack. ``more`` is checked
    as a whole by :func:`_rows` instead, with the same rules."""

    step: int
    values: dict[str, Value]


_ROW_FIELDS = dict.fromkeys(LogRow._fields).keys()
# The validation context that says a pack's rows passed check_values already: an event read back
# from the event store (it passed decode when it was accepted), or a pack the SDK builds from rows
# its log() checked.
ROWS_CHECKED: dict[str, bool] = {"rows_checked": True}
_steps, _row_values = itemgetter("step"), itemgetter("values")


def _rows(data: Any, info: ValidationInfo) -> list[LogRow]:
    """``more``: a list of rows, each ``{"step": int >= 0, "values": {...}}`` (the wire) or a LogRow.

    Rows that passed these checks already (``ROWS_CHECKED``: read back from the event store with
    ``codec.decode(..., stored=True)``, or packed by the SDK from rows its ``log()`` checked) are
    only turned into LogRows: replay decodes every stored row again, and the checks were a tenth
    of its time; in the SDK's sender thread they were a seventh."""
    if info.context is ROWS_CHECKED and type(data) is list:
        return list(map(LogRow, map(_steps, data), map(_row_values, data)))
    if not isinstance(data, (list, tuple)):
        raise ValueError(f"must be a list of rows, not {type(data).__name__}")
    if len(data) > MAX_PACKED_ROWS:
        raise ValueError(f"holds {len(data)} rows; a pack holds at most {MAX_PACKED_ROWS}")
    if set(map(type, data)) <= {dict} and all(map(_ROW_FIELDS.__eq__, map(dict.keys, data))):
        steps, values = list(map(_steps, data)), list(map(_row_values, data))
    else:
        steps, values = [], []
        for i, row in enumerate(data):
            if isinstance(row, LogRow):
                row = row._asdict()
            if not isinstance(row, dict) or row.keys() != _ROW_FIELDS:
                raise ValueError(f"row {i} must be an object with exactly the fields step and values")
            steps.append(row["step"])
            values.append(row["values"])
    if not (set(map(type, steps)) <= {int} and min(steps, default=0) >= 0 and max(steps, default=0) <= INT64_MAX):
        i, step = next((i, s) for i, s in enumerate(steps) if type(s) is not int or not 0 <= s <= INT64_MAX)
        raise ValueError(f"row {i}: step must be an integer from 0 to {INT64_MAX}, got {step!r}")
    try:
        checked = check_values_many(values)
    except ValueError:  # say which row
        for i, v in enumerate(values):
            try:
                check_values(v)
            except ValueError as e:
                raise ValueError(f"row {i}: {e}") from None
        raise
    return list(map(LogRow, steps, checked))


def _dump_rows(rows: list[LogRow]) -> list[dict[str, Any]]:
    return [{"step": step, "values": values} for step, values in rows]


Rows = Annotated[
    list[LogRow],
    PlainValidator(_rows, json_schema_input_type=list[dict[str, Any]]),
    PlainSerializer(_dump_rows, return_type=list[dict[str, Any]]),
]


class LogPayload(Frozen):
    """One history row (``step``, ``values``), and in ``more`` the rows its writer logged right
    after it, when the SDK found them queued together (it packs them into one event: the costs
    of an event are paid once for all of them). The rows keep their own seqs: the first row is
    the event's ``seq``, row i of ``more`` is ``seq + 1 + i``; they are folded in that order."""

    step: NonNegInt
    values: Values
    more: Rows = []


class ConfigPayload(Frozen):
    """Config keys to merge (nested) into the run's config."""

    values: Config


class SummaryPayload(Frozen):
    """Summary keys set and removed (explicit keys, so concurrent updates merge)."""

    set: Values = {}
    remove: list[Key] = []


class TagsPayload(Frozen):
    """Tag deltas, so edits from a rank and from the UI commute."""

    add: list[Tag] = []
    remove: list[Tag] = []


class MetricPayload(Frozen):
    """``define_metric``: how a metric is stepped, summarized and shown."""

    name: Name
    step_metric: Name | None = None
    step_sync: StrictBool | None = None
    hidden: StrictBool | None = None
    summary: list[Literal["min", "max", "mean", "best", "last", "none", "first"]] = []
    goal: Literal["minimize", "maximize"] | None = None
    overwrite: StrictBool | None = None


class AlertPayload(Frozen):
    """``run.alert``: a notification; ``wait_duration`` suppresses repeats of the same title."""

    title: Annotated[str, StringConstraints(strict=True, min_length=1, max_length=64)]
    text: Text
    level: Literal["INFO", "WARN", "ERROR"] = "INFO"
    wait_duration: Annotated[StrictFloat, Field(ge=0, allow_inf_nan=False)] | None = None


class HeartbeatPayload(Frozen):
    """The writer is alive; ``step`` is its latest step if it knows one."""

    step: NonNegInt | None = None


class FinishPayload(Frozen):
    """The process ended; ``signal`` is set when SIGTERM/SIGINT killed it."""

    exit_code: Int64 = 0
    signal: Int64 | None = None


class StateChangePayload(Frozen):
    """A state move asked for through the API."""

    to: Literal["pending", "failed"]
    reason: Text | None = None


class LostPayload(Frozen):
    """The watchdog's verdict that heartbeats stopped (crashed, or preempted after preempting)."""

    reason: Text
    last_heartbeat: Time | None = None


class UpdatePayload(Frozen):
    """Edits of name/notes; None leaves a field unchanged."""

    name: Text | None = None
    notes: Text | None = None


# --- events ------------------------------------------------------------------------------------


class RunInit(Event):
    """A run starts or resumes."""

    type: Literal["run.init"] = "run.init"
    payload: InitPayload = InitPayload()


class RunLog(Event):
    """History rows: one, or several consecutive ones of the same writer (``payload.more``)."""

    type: Literal["run.log"] = "run.log"
    payload: LogPayload

    @property
    def last_seq(self) -> int:
        return self.seq + len(self.payload.more)


class RunConfig(Event):
    """Config update."""

    type: Literal["run.config"] = "run.config"
    payload: ConfigPayload


class RunSummary(Event):
    """Summary update."""

    type: Literal["run.summary"] = "run.summary"
    payload: SummaryPayload = SummaryPayload()


class RunTags(Event):
    """Tag delta."""

    type: Literal["run.tags"] = "run.tags"
    payload: TagsPayload = TagsPayload()


class RunMetric(Event):
    """Metric definition (define_metric)."""

    type: Literal["run.metric"] = "run.metric"
    payload: MetricPayload


class RunAlert(Event):
    """Alert raised by the run."""

    type: Literal["run.alert"] = "run.alert"
    payload: AlertPayload


class RunHeartbeat(Event):
    """Liveness signal."""

    type: Literal["run.heartbeat"] = "run.heartbeat"
    payload: HeartbeatPayload = HeartbeatPayload()


class RunPreempting(Event):
    """The run was told it will be preempted (mark_preempting)."""

    type: Literal["run.preempting"] = "run.preempting"
    payload: EmptyPayload = EmptyPayload()


class RunFinish(Event):
    """The run's process ended."""

    type: Literal["run.finish"] = "run.finish"
    payload: FinishPayload = FinishPayload()


class RunStateChange(Event):
    """State move asked for through the API (pending: requeue; failed)."""

    type: Literal["run.state"] = "run.state"
    payload: StateChangePayload


class RunCrashed(Event):
    """Watchdog: heartbeats of a running run stopped."""

    type: Literal["run.crashed"] = "run.crashed"
    payload: LostPayload


class RunPreempted(Event):
    """Watchdog: a preempting run stopped (or exited)."""

    type: Literal["run.preempted"] = "run.preempted"
    payload: LostPayload


class RunUpdate(Event):
    """Name/notes edit."""

    type: Literal["run.update"] = "run.update"
    payload: UpdatePayload = UpdatePayload()


class RunDelete(Event):
    """Soft delete."""

    type: Literal["run.delete"] = "run.delete"
    payload: EmptyPayload = EmptyPayload()


class RunUndelete(Event):
    """Undo a soft delete."""

    type: Literal["run.undelete"] = "run.undelete"
    payload: EmptyPayload = EmptyPayload()


AnyEvent = Annotated[
    Union[  # noqa: UP007 - a discriminated union reads best spelled out
        RunInit, RunLog, RunConfig, RunSummary, RunTags, RunMetric, RunAlert, RunHeartbeat,
        RunPreempting, RunFinish, RunStateChange, RunCrashed, RunPreempted, RunUpdate,
        RunDelete, RunUndelete,
    ],
    Field(discriminator="type"),
]

EVENT_TYPES: dict[str, type[Event]] = {
    cls.model_fields["type"].default: cls for cls in AnyEvent.__origin__.__args__  # type: ignore[attr-defined]
}
