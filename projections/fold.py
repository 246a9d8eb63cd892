"""The pure fold: ``(run state, event) -> (new run state, rows to write)``.

No I/O and no clock: the same events always give the same state and rows, which is what
makes a replay equal the live projection. One applier per event type, picked by
``functools.singledispatch``; the consumer (``consumers/postgres.py``) does the reading and
writing around it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import singledispatch
from operator import itemgetter
from typing import Any, NamedTuple

from events import (
    Event,
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
    RunStateChange,
    RunSummary,
    RunTags,
    RunUndelete,
    RunUpdate,
)

from .states import State, check_move
from .summary import accumulate, accumulate_many, match, merge_definition, recompute, update_stats


@dataclass(frozen=True)
class RunState:
    """One row of the ``runs`` read model, as the fold sees it."""

    entity: str
    project: str
    run_id: str
    state: State
    created_at: datetime
    updated_at: datetime
    name: str | None = None
    group: str | None = None
    job_type: str | None = None
    tags: tuple[str, ...] = ()
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    notes: str | None = None
    host: dict[str, Any] = field(default_factory=dict)
    heartbeat_at: datetime | None = None
    finished_at: datetime | None = None
    exit_code: int | None = None
    last_step: int | None = None
    deleted: bool = False
    runtime: float = 0.0  # seconds between the first and the latest event of the training process
    metrics: dict[str, Any] = field(default_factory=dict)  # define_metric definitions by name or glob
    stats: dict[str, Any] = field(default_factory=dict)  # per-key min/max/sum/count/first/last
    overrides: tuple[str, ...] = ()  # summary keys set explicitly: logs do not change them
    alerts_sent: dict[str, str] = field(default_factory=dict)  # alert title -> time of the last one sent
    # Writers (processes) that sent run.init and no run.finish yet: a shared run ends with the last.
    open_writers: tuple[str, ...] = ()
    # The finish outcome so far of a shared run whose other writers are still open.
    pending_exit: dict[str, Any] = field(default_factory=dict)


class HistoryRow(NamedTuple):
    """One point of history, as stored: see :func:`history_points`."""

    key: str
    step: int
    value: float | None  # numbers, NaN and infinities included
    value_json: Any  # anything that is not a number (strings, bools, lists), else None
    rank: int = 0  # for ranks of a shared run logging one key at one step: the lowest rank wins


class HistoryColumn(NamedTuple):
    """The points one fold logged for one key by one rank: steps and values as logged, in order
    (a step may come twice: the later value wins; a lower rank wins over a higher one at a step).
    Columns rather than a row per point: points are most of what the consumer handles, and a
    column lets it store them as a few list operations."""

    key: str
    rank: int
    steps: list[int]
    values: list[Any]  # as logged: int or float (NaN and infinities included), or any other JSON value
    plain: bool = False  # known: every value a float, none NaN (the writer then skips its own checks)


def history_points(rows: list[Any]) -> list[HistoryRow]:
    """The points of the :class:`HistoryColumn` rows in ``rows``, one :class:`HistoryRow` each:
    column by column, in the order logged."""
    out = []
    for row in rows:
        if isinstance(row, HistoryColumn):
            for step, value in zip(row.steps, row.values):
                number = type(value) is float or type(value) is int
                out.append(HistoryRow(row.key, step, float(value) if number else None, None if number else value,
                                      row.rank))
    return out


@dataclass(frozen=True)
class TransitionRow:
    from_state: State | None
    to_state: State
    accepted: bool
    event_time: datetime
    event_id: Any
    actor: str
    reason: str | None


@dataclass(frozen=True)
class MetricRow:
    name: str
    definition: dict[str, Any]
    event_time: datetime


@dataclass(frozen=True)
class AlertRow:
    title: str
    text: str
    level: str
    wait_duration: float | None
    event_time: datetime
    event_id: Any
    actor: str
    suppressed: bool
    reason: str | None


Row = HistoryColumn | TransitionRow | MetricRow | AlertRow


def fold(state: RunState | None, event: Event) -> tuple[RunState | None, list[Row]]:
    """Apply one event to one run; a run that does not exist yet starts from ``None``."""
    if state is None and not isinstance(event, RunInit):
        # The run's init never arrived (lost or dead-lettered): create it so nothing is dropped.
        state, rows = _move(_blank(event, "running"), event, None, "running", "implicit start: no run.init seen")
        new_state, more = _apply(event, state)
        return _runtime(state, new_state, event), rows + more
    new_state, rows = _apply(event, state)
    return _runtime(state, new_state, event), rows


def _runtime(before: RunState | None, state: RunState | None, event: Event) -> RunState | None:
    """Runtime follows the training process's own clock (SDK events only) while the run is live."""
    if state is None or event.source.kind != "sdk":
        return state
    if before is not None and before.state not in ("running", "preempting") and state.state != "running":
        return state
    seconds = (event.time - state.created_at).total_seconds()
    return replace(state, runtime=seconds) if seconds > state.runtime else state


def _revive(state: RunState, event: Event) -> tuple[RunState, list[Row]]:
    """The documented late-event rule: a crashed run that speaks again (a log or a heartbeat
    from its process) was not dead after all, so it moves back to running, as in W&B."""
    if state.state == "crashed" and event.source.kind == "sdk":
        return _move(state, event, "crashed", "running", f"{event.type} after crash")
    return state, []


def _blank(event: Event, initial: State) -> RunState:
    return RunState(
        entity=event.run.entity, project=event.run.project, run_id=event.run.run_id,
        state=initial, created_at=event.time, updated_at=event.time,
    )


def _move(state: RunState, event: Event, current: State | None, target: State,
          reason: str | None) -> tuple[RunState, list[Row]]:
    """Try ``current -> target``; the audit row says whether it was accepted and why not."""
    refused = check_move(current, target)
    row = TransitionRow(
        from_state=current, to_state=target, accepted=refused is None, event_time=event.time,
        event_id=event.id, actor=event.source.kind, reason=refused if refused else reason,
    )
    if refused:
        return state, [row]
    return replace(state, state=target, updated_at=event.time), [row]


@singledispatch
def _apply(event: Event, state: RunState | None) -> tuple[RunState | None, list[Row]]:
    # Event types without a read-model effect yet are kept in the event store only.
    assert state is not None
    return replace(state, updated_at=event.time), []


@_apply.register
def _(event: RunInit, state: RunState | None) -> tuple[RunState | None, list[Row]]:
    p = event.payload
    if state is None:
        base = _blank(event, p.state)
        base = replace(base, name=p.name, group=p.group, job_type=p.job_type, tags=tuple(dict.fromkeys(p.tags)),
                       notes=p.notes, config=dict(p.config), host=dict(p.host), heartbeat_at=event.time,
                       open_writers=_writer_of(event))
        return _move(base, event, None, p.state, "run.init")
    if p.state == "pending":
        # "Create a pending run" for a run that already exists (two creates raced): refused, audited.
        return state, [TransitionRow(from_state=state.state, to_state="pending", accepted=False,
                                     event_time=event.time, event_id=event.id, actor=event.source.kind,
                                     reason="the run already exists; a pending run can only be created")]
    merged = replace(
        state,
        name=p.name or state.name, group=p.group or state.group, job_type=p.job_type or state.job_type,
        tags=tuple(dict.fromkeys((*state.tags, *p.tags))), notes=p.notes or state.notes,
        config={**state.config, **p.config}, heartbeat_at=event.time, updated_at=event.time,
    )
    if state.state in ("running", "preempting"):
        # Another rank joining a shared run: no move, but the run now waits for its finish too.
        joined = tuple(dict.fromkeys((*state.open_writers, *_writer_of(event))))
        return replace(merged, open_writers=joined), []
    resumed = replace(merged, open_writers=_writer_of(event), pending_exit={})
    return _move(resumed, event, state.state, "running", "resumed" if p.resumed else "run.init")


def _writer_of(event: Event) -> tuple[str, ...]:
    return (event.source.writer,) if event.source.kind == "sdk" else ()


@_apply.register
def _(event: RunLog, state: RunState | None) -> tuple[RunState | None, list[Row]]:
    assert state is not None
    state, rows = _revive(state, event)
    state, points = _absorb_logs(state, [event])
    return state, rows + points


def fold_logs(state: RunState | None, events: list[RunLog]) -> tuple[RunState | None, list[Row]]:
    """Fold consecutive ``run.log`` events of one run: the same state and rows as folding them
    one by one (a property test holds it to that), without a ``RunState`` copy, a stats copy and a
    summary recomputation per event. Logs are most events, so this is the consumer's hot path.
    A run that does not exist yet or is crashed (a log revives it) takes the general path."""
    if state is None or state.state == "crashed" or len(events) == 1:
        rows: list[Row] = []
        for event in events:
            state, more = fold(state, event)
            rows += more
        return state, rows
    new, rows = _absorb_logs(state, events)
    if state.state in ("running", "preempting"):  # runtime grows only while the run is live (_runtime)
        runtime = max([state.runtime, *((e.time - state.created_at).total_seconds()
                                         for e in events if e.source.kind == "sdk")])
        new = replace(new, runtime=runtime)
    return new, rows


def _absorb_logs(state: RunState, events: list[RunLog]) -> tuple[RunState, list[Row]]:
    """The history rows, statistics, summary and last step of ``events`` (logs of one run, in
    order; no state move). Each key's statistics are copied once and then updated in place, and
    the summary is recomputed once: a key's entry depends only on its final statistics.

    Events of one rank (the usual case) update each key's statistics from its column at once
    (``accumulate_many``); events of several ranks go point by point, since the order in which
    the ranks' values arrived decides sums and ties."""
    columns, top = _gather(events)
    stats = dict(state.stats)
    rank = events[0].source.rank
    plain: set[str] = set()  # keys whose column is all floats without NaN (one rank only)
    if all(e.source.rank == rank for e in events):
        keys = list(columns[rank or 0])
        for key, (steps, values) in columns[rank or 0].items():
            first = values[0]
            stats[key] = st = update_stats(stats.get(key), first, steps[0], rank)  # a copy of its own
            if (accumulate_many(st, steps[1:], values[1:], rank) if len(steps) > 1 else True) and (
                    type(first) is float and first == first):
                plain.add(key)
    else:
        touched: dict[str, None] = {}  # in first-touch order
        for event in events:
            for step, values in _logged_rows(event):
                for key, value in values.items():
                    if key in touched:  # this call's own copy already: update it in place
                        accumulate(stats[key], value, step, event.source.rank)
                    else:
                        stats[key] = update_stats(stats.get(key), value, step, event.source.rank)
                        touched[key] = None
        keys = list(touched)
    last = top if state.last_step is None else max(state.last_step, top)
    summary = recompute(state.summary, keys, state.metrics, stats, state.overrides)
    summary["_step"] = last
    rows: list[Row] = [HistoryColumn(key, r, steps, values, key in plain)
                       for r, by_key in columns.items() for key, (steps, values) in by_key.items()]
    return replace(state, summary=summary, stats=stats, last_step=last, updated_at=events[-1].time), rows


def _gather(events: list[RunLog]) -> tuple[dict[int, dict[str, tuple[list[int], list[Any]]]], int]:
    """Each rank's columns (key -> (steps, values), keys in first-touch order) and the highest
    step logged (rows without values count too).

    An event whose rows all hold the same keys (a packed log of one training loop: the usual
    case) is transposed at once, with ``itemgetter`` and ``zip`` in C, instead of point by point:
    if every row has as many keys as its first and each of those keys, the key sets are equal."""
    columns: dict[int, dict[str, tuple[list[int], list[Any]]]] = {}
    top = -1
    for event in events:
        by_key = columns.setdefault(event.source.rank or 0, {})
        p = event.payload
        keys = list(p.values)
        if p.more and len(keys) > 1:
            steps = [p.step, *map(_STEP, p.more)]
            rows = [p.values, *map(_VALUES, p.more)]
            if len(set(map(len, rows))) == 1:
                try:
                    picked = list(map(itemgetter(*keys), rows))
                except KeyError:
                    pass
                else:
                    for key, values in zip(keys, zip(*picked)):
                        column = by_key.get(key)
                        if column is None:
                            column = by_key[key] = ([], [])
                        column[0].extend(steps)
                        column[1].extend(values)
                    top = max(top, max(steps))
                    continue
        for step, values in _logged_rows(event):
            for key, value in values.items():
                column = by_key.get(key)
                if column is None:
                    column = by_key[key] = ([], [])
                column[0].append(step)
                column[1].append(value)
            if step > top:
                top = step
    return columns, top


_STEP, _VALUES = itemgetter(0), itemgetter(1)  # of a LogRow


def _logged_rows(event: RunLog) -> list[tuple[int, dict[str, Any]]]:
    """(step, values) of each row the event holds: its own, then a packed event's ``more``, in order."""
    p = event.payload
    logged = [(p.step, p.values)]
    if p.more:
        logged += [(r.step, r.values) for r in p.more]
    return logged


@_apply.register
def _(event: RunConfig, state: RunState | None) -> tuple[RunState | None, list[Row]]:
    assert state is not None
    return replace(state, config={**state.config, **event.payload.values}, updated_at=event.time), []


@_apply.register
def _(event: RunSummary, state: RunState | None) -> tuple[RunState | None, list[Row]]:
    """Explicit keys win until the next explicit update; a removed key is gone until logged again."""
    assert state is not None
    removed = set(event.payload.remove)
    overrides = tuple(k for k in state.overrides if k not in removed and k not in event.payload.set)
    summary = {k: v for k, v in state.summary.items() if k not in removed}
    summary.update(event.payload.set)
    overrides = tuple(sorted((*overrides, *event.payload.set)))
    return replace(state, summary=summary, overrides=overrides, updated_at=event.time), []


@_apply.register
def _(event: RunTags, state: RunState | None) -> tuple[RunState | None, list[Row]]:
    assert state is not None
    removed = set(event.payload.remove)
    tags = tuple(t for t in dict.fromkeys((*state.tags, *event.payload.add)) if t not in removed)
    return replace(state, tags=tags, updated_at=event.time), []


@_apply.register
def _(event: RunUpdate, state: RunState | None) -> tuple[RunState | None, list[Row]]:
    assert state is not None
    p = event.payload
    return replace(state, name=p.name if p.name is not None else state.name,
                   notes=p.notes if p.notes is not None else state.notes, updated_at=event.time), []


@_apply.register
def _(event: RunHeartbeat, state: RunState | None) -> tuple[RunState | None, list[Row]]:
    assert state is not None
    state, rows = _revive(state, event)
    return replace(state, heartbeat_at=event.time, updated_at=event.time), rows


@_apply.register
def _(event: RunMetric, state: RunState | None) -> tuple[RunState | None, list[Row]]:
    """define_metric: store the definition and recompute the summary of the keys it covers."""
    assert state is not None
    p = event.payload.model_dump()
    definition = merge_definition(state.metrics.get(p["name"]), p)
    metrics = {**state.metrics, p["name"]: definition}
    covered = [k for k in state.stats if match(metrics, k) is definition]
    summary = recompute(state.summary, covered, metrics, state.stats, state.overrides)
    row = MetricRow(p["name"], definition, event.time)
    return replace(state, metrics=metrics, summary=summary, updated_at=event.time), [row]


@_apply.register
def _(event: RunAlert, state: RunState | None) -> tuple[RunState | None, list[Row]]:
    """An alert repeated within its wait_duration of the last one sent with the same title is
    stored as suppressed (with the reason), never dropped."""
    assert state is not None
    p = event.payload
    last = state.alerts_sent.get(p.title)
    suppressed, reason = False, None
    if p.wait_duration and last is not None:
        since = (event.time - datetime.fromisoformat(last)).total_seconds()
        if since < p.wait_duration:
            suppressed = True
            reason = f"same title sent {since:.1f}s ago, within wait_duration {p.wait_duration:g}s"
    row = AlertRow(p.title, p.text, p.level, p.wait_duration, event.time, event.id, event.source.kind,
                   suppressed, reason)
    sent = state.alerts_sent if suppressed else {**state.alerts_sent, p.title: event.time.isoformat()}
    return replace(state, alerts_sent=sent, updated_at=event.time), [row]


@_apply.register
def _(event: RunPreempting, state: RunState | None) -> tuple[RunState | None, list[Row]]:
    assert state is not None
    return _move(state, event, state.state, "preempting", "mark_preempting")


@_apply.register
def _(event: RunFinish, state: RunState | None) -> tuple[RunState | None, list[Row]]:
    """A run ends when the last of its open writers finishes (ranks of a shared run): until then
    the finishes are combined, so one failed or killed rank makes the whole run failed or killed."""
    assert state is not None
    outcome = _combine(state.pending_exit, event.payload.exit_code, event.payload.signal)
    others = tuple(w for w in state.open_writers if w != event.source.writer)
    if others and len(others) < len(state.open_writers):
        return replace(state, open_writers=others, pending_exit=outcome, updated_at=event.time), []
    target: State
    if state.state == "preempting":
        target, reason = "preempted", "exited after preemption"
    elif outcome.get("signal") is not None:
        target, reason = "killed", f"signal {outcome['signal']}"
    elif outcome["exit_code"] == 0:
        target, reason = "finished", "exit code 0"
    else:
        target, reason = "failed", f"exit code {outcome['exit_code']}"
    if state.pending_exit:
        reason += f" (last of {len(state.open_writers) + outcome['writers'] - 1} writers)"
    moved, rows = _move(state, event, state.state, target, reason)
    if moved is not state:
        moved = replace(moved, exit_code=outcome["exit_code"], finished_at=event.time, open_writers=(),
                        pending_exit={})
    return moved, rows


def _combine(pending: dict[str, Any], exit_code: int, signal: int | None) -> dict[str, Any]:
    """The first signal and the first non-zero exit code among a shared run's writers win."""
    return {
        "exit_code": pending["exit_code"] if pending.get("exit_code") else exit_code,
        "signal": pending["signal"] if pending.get("signal") is not None else signal,
        "writers": pending.get("writers", 0) + 1,
    }


@_apply.register
def _(event: RunStateChange, state: RunState | None) -> tuple[RunState | None, list[Row]]:
    assert state is not None
    return _move(state, event, state.state, event.payload.to, event.payload.reason)


@_apply.register
def _(event: RunCrashed, state: RunState | None) -> tuple[RunState | None, list[Row]]:
    assert state is not None
    return _silence_verdict(state, event, "crashed")


@_apply.register
def _(event: RunPreempted, state: RunState | None) -> tuple[RunState | None, list[Row]]:
    assert state is not None
    return _silence_verdict(state, event, "preempted")


def _silence_verdict(state: RunState, event: RunCrashed | RunPreempted, target: State) -> tuple[RunState, list[Row]]:
    """A watchdog verdict is refused when the run spoke after the silence it was based on
    (the verdict raced a late event); decided from event data only, so replays agree."""
    seen = event.payload.last_heartbeat
    latest = max(t for t in (state.heartbeat_at, state.updated_at) if t is not None)
    if seen is not None and latest > seen:
        row = TransitionRow(from_state=state.state, to_state=target, accepted=False, event_time=event.time,
                            event_id=event.id, actor=event.source.kind,
                            reason=f"stale verdict: the run was active at {latest.isoformat()}, "
                                   f"after the silence that began at {seen.isoformat()}")
        return state, [row]
    return _move(state, event, state.state, target, event.payload.reason)


@_apply.register
def _(event: RunDelete, state: RunState | None) -> tuple[RunState | None, list[Row]]:
    assert state is not None
    return replace(state, deleted=True, updated_at=event.time), []


@_apply.register
def _(event: RunUndelete, state: RunState | None) -> tuple[RunState | None, list[Row]]:
    assert state is not None
    return replace(state, deleted=False, updated_at=event.time), []

