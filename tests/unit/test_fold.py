"""The pure fold (projections.fold): one event at a time, then hypothesis properties over sequences."""

from __future__ import annotations

import copy
import dataclasses
import math
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import hypothesis
from hypothesis import HealthCheck, given, settings
import hypothesis
from hypothesis import strategies as st

from events import (
    ConfigPayload,
    FinishPayload,
    HeartbeatPayload,
    InitPayload,
    LogPayload,
    LogRow,
    LostPayload,
    MetricPayload,
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
from projections.fold import HistoryColumn, HistoryRow, RunState, TransitionRow, fold, fold_logs, history_points
from projections.states import STATES, check_move

RUN = RunRef(entity="ent", project="proj", run_id="r1")
T0 = datetime(2024, 1, 1, tzinfo=UTC)
_counter = iter(range(1, 10**9))


def ev(cls, payload=None, *, kind="sdk", writer="w1", rank=0, seq=None, t=None, **kw):
    """An event of ``cls`` for RUN with a fixed id and time (both derived from a counter)."""
    n = next(_counter)
    args = dict(
        id=uuid.UUID(int=n), run=RUN, source=Source(kind=kind, writer=writer, rank=rank),
        seq=n if seq is None else seq, time=T0 + timedelta(seconds=n) if t is None else t, **kw,
    )
    if payload is not None:
        args["payload"] = payload
    return cls(**args)


def same(a, b) -> bool:
    """Equal, where a NaN equals a NaN (statistics can hold one: the sum of inf and -inf). Key
    order does not count, as with ``==`` (jsonb keeps none): comparing reprs, as this did before,
    took a summary's keys in another order for a difference."""
    return a == b or _nan_free(a) == _nan_free(b)


def _nan_free(x):
    """``x`` with every NaN replaced by a marker that equals itself."""
    if isinstance(x, float) and x != x:
        return "<NaN>"
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return type(x).__name__, {f.name: _nan_free(getattr(x, f.name)) for f in dataclasses.fields(x)}
    if isinstance(x, dict):
        return {k: _nan_free(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x).__name__, [_nan_free(v) for v in x]
    return x


def fold_all(events, state=None):
    rows = []
    for e in events:
        state, more = fold(state, e)
        rows.extend(more)
    return state, rows


def normal(folded):
    """(state, rows) with the history columns as each (rank, key)'s points in the order logged:
    how the points are cut into columns depends on how the events were grouped, not what they are."""
    state, rows = folded
    points: dict = {}
    for p in history_points(rows):
        points.setdefault((p.rank, p.key), []).append(p)
    return state, [r for r in rows if not isinstance(r, HistoryColumn)], sorted(points.items())


def transitions(rows):
    return [r for r in rows if isinstance(r, TransitionRow)]


def running(**init):
    """A run that init moved to running."""
    state, _ = fold(None, ev(RunInit, InitPayload(**init)))
    assert state.state == "running"
    return state


def state_in(target):
    """A run brought to ``target`` through allowed moves only."""
    paths = {
        "running": [],
        "pending": [ev(RunStateChange, StateChangePayload(to="pending"), kind="api")],
        "preempting": [ev(RunPreempting)],
        "preempted": [ev(RunPreempting), ev(RunPreempted, LostPayload(reason="gone"), kind="watchdog")],
        "finished": [ev(RunFinish, FinishPayload(exit_code=0))],
        "failed": [ev(RunFinish, FinishPayload(exit_code=1))],
        "crashed": [ev(RunCrashed, LostPayload(reason="no heartbeat"), kind="watchdog")],
        "killed": [ev(RunFinish, FinishPayload(exit_code=143, signal=15))],
    }
    state, rows = fold_all(paths[target], running())
    assert state.state == target and all(r.accepted for r in transitions(rows))
    return state


# --- init ----------------------------------------------------------------------------------------


def test_init_creates_a_running_run_with_its_fields_and_one_accepted_transition():
    e = ev(RunInit, InitPayload(name="n", group="g", job_type="train", tags=["a", "b", "a"],
                                notes="hi", config={"lr": 0.1, "opt": {"m": 0.9}}, host={"cpu": 8}))
    state, rows = fold(None, e)
    assert (state.entity, state.project, state.run_id) == ("ent", "proj", "r1")
    assert state.state == "running"
    assert (state.name, state.group, state.job_type, state.notes) == ("n", "g", "train", "hi")
    assert state.tags == ("a", "b")
    assert state.config == {"lr": 0.1, "opt": {"m": 0.9}}
    assert state.host == {"cpu": 8}
    assert state.created_at == state.updated_at == state.heartbeat_at == e.time
    assert state.deleted is False and state.last_step is None and state.summary == {}
    assert rows == [TransitionRow(from_state=None, to_state="running", accepted=True, event_time=e.time,
                                  event_id=e.id, actor="sdk", reason="run.init")]


def test_init_with_state_pending_creates_a_pending_run():
    e = ev(RunInit, InitPayload(state="pending"), kind="api")
    state, rows = fold(None, e)
    assert state.state == "pending"
    assert [(r.from_state, r.to_state, r.accepted, r.actor) for r in rows] == [(None, "pending", True, "api")]


@pytest.mark.parametrize("current", ["running", "preempting"])
def test_second_init_while_alive_is_a_rank_joining_no_transition(current):
    before = state_in(current)
    e = ev(RunInit, InitPayload(tags=["rank1"], config={"world": 2}), writer="w2", rank=1)
    after, rows = fold(before, e)
    assert rows == []
    assert after.state == current
    assert after.tags == (*before.tags, "rank1")
    assert after.config == {**before.config, "world": 2}
    assert after.heartbeat_at == e.time


def test_second_init_keeps_fields_it_does_not_set():
    before = running(name="first", group="g", tags=["a"], config={"lr": 1})
    after, _ = fold(before, ev(RunInit, InitPayload(tags=["a", "b"], config={"bs": 2}), writer="w2", rank=1))
    assert after.name == "first" and after.group == "g"
    assert after.tags == ("a", "b")
    assert after.config == {"lr": 1, "bs": 2}


@pytest.mark.parametrize("current", ["finished", "crashed", "failed", "preempted", "pending"])
def test_init_after_a_stop_resumes_to_running(current):
    before = state_in(current)
    e = ev(RunInit, InitPayload(resumed=True, tags=["resumed"], config={"lr": 0.5}))
    after, rows = fold(before, e)
    assert after.state == "running"
    assert after.tags == ("resumed",) and after.config == {"lr": 0.5} and after.heartbeat_at == e.time
    assert rows == [TransitionRow(from_state=current, to_state="running", accepted=True, event_time=e.time,
                                  event_id=e.id, actor="sdk", reason="resumed")]


def test_init_after_killed_is_refused():
    before = state_in("killed")
    after, rows = fold(before, ev(RunInit, InitPayload(resumed=True)))
    assert after.state == "killed"
    assert len(rows) == 1 and rows[0].accepted is False
    assert rows[0].reason == check_move("killed", "running")


# --- log -----------------------------------------------------------------------------------------


def test_log_writes_one_history_row_per_key_with_numbers_as_float():
    before = running()
    e = ev(RunLog, LogPayload(step=3, values={"loss": 1, "acc": 0.5, "name": "x", "ok": True,
                                              "hist": [1, 2], "none": None}))
    after, rows = fold(before, e)
    assert rows[0] == HistoryColumn("loss", 0, [3], [1])  # one column per key, values as logged
    assert history_points(rows) == [
        HistoryRow("loss", 3, 1.0, None),
        HistoryRow("acc", 3, 0.5, None),
        HistoryRow("name", 3, None, "x"),
        HistoryRow("ok", 3, None, True),
        HistoryRow("hist", 3, None, [1, 2]),
        HistoryRow("none", 3, None, None),
    ]
    assert type(history_points(rows)[0].value) is float
    assert after.summary == {"loss": 1, "acc": 0.5, "name": "x", "ok": True, "hist": [1, 2], "none": None,
                             "_step": 3}
    assert after.last_step == 3
    assert after.updated_at == e.time
    assert before.summary == {} and before.last_step is None  # the old state is untouched


def test_log_keeps_non_finite_floats_as_numbers():
    after, rows = fold(running(), ev(RunLog, LogPayload(step=0, values={"a": math.nan, "b": -math.inf})))
    rows = history_points(rows)
    assert math.isnan(rows[0].value) and rows[0].value_json is None
    assert rows[1] == HistoryRow("b", 0, -math.inf, None)


def test_log_summary_is_the_value_at_the_highest_step_and_last_step_is_the_max_step():
    state, _ = fold_all([
        ev(RunLog, LogPayload(step=5, values={"loss": 3.0})),
        ev(RunLog, LogPayload(step=7, values={"loss": 2.0, "acc": 0.1})),
        ev(RunLog, LogPayload(step=6, values={"acc": 0.2}), writer="w2", rank=1),  # a slower rank, behind
        ev(RunLog, LogPayload(step=7, values={"loss": 9.0}), writer="w2", rank=1),  # same step: rank 0 wins
    ], running())
    assert state.last_step == 7
    assert state.summary == {"loss": 2.0, "acc": 0.1, "_step": 7}


# --- tags, config, summary, update ---------------------------------------------------------------


def test_tags_add_and_remove():
    state, rows = fold(running(tags=["a", "b"]), ev(RunTags, TagsPayload(add=["c", "a"], remove=["b"])))
    assert rows == []
    assert state.tags == ("a", "c")


def test_tag_deltas_from_two_writers_commute():
    base = running(tags=["b", "d", "x"])
    e1 = ev(RunTags, TagsPayload(add=["a"], remove=["b"]), writer="rank0")
    e2 = ev(RunTags, TagsPayload(add=["c"], remove=["d"]), kind="api", writer="ui", rank=None)
    one, _ = fold_all([e1, e2], base)
    two, _ = fold_all([e2, e1], base)
    assert set(one.tags) == set(two.tags) == {"a", "c", "x"}
    assert len(one.tags) == len(two.tags) == 3


def test_config_merges_top_level_keys():
    state, rows = fold(running(config={"lr": 0.1, "bs": 32}), ev(RunConfig, ConfigPayload(values={"lr": 0.2, "opt": {"m": 1}})))
    assert rows == []
    assert state.config == {"lr": 0.2, "bs": 32, "opt": {"m": 1}}


def test_summary_set_and_remove():
    state, _ = fold(running(), ev(RunLog, LogPayload(step=0, values={"a": 1, "b": 2})))
    state, rows = fold(state, ev(RunSummary, SummaryPayload(set={"best": 0.9, "a": 5}, remove=["b", "missing"])))
    assert rows == []
    assert state.summary == {"a": 5, "_step": 0, "best": 0.9}


def test_update_sets_name_and_notes_only_when_given():
    state, _ = fold(running(name="old", notes="n"), ev(RunUpdate, UpdatePayload(name="new")))
    assert (state.name, state.notes) == ("new", "n")


def test_heartbeat_moves_heartbeat_at_only():
    before = running()
    e = ev(RunHeartbeat, HeartbeatPayload(step=4))
    after, rows = fold(before, e)
    assert rows == []
    assert after.heartbeat_at == after.updated_at == e.time
    assert after.state == "running" and after.last_step is None


# --- finish and other moves ----------------------------------------------------------------------


@pytest.mark.parametrize(("payload", "target", "reason"), [
    (FinishPayload(exit_code=0), "finished", "exit code 0"),
    (FinishPayload(exit_code=1), "failed", "exit code 1"),
    (FinishPayload(exit_code=0, signal=2), "killed", "signal 2"),
    (FinishPayload(exit_code=130, signal=15), "killed", "signal 15"),
])
def test_finish_of_a_running_run(payload, target, reason):
    e = ev(RunFinish, payload)
    state, rows = fold(running(), e)
    assert state.state == target
    assert state.exit_code == payload.exit_code
    assert state.finished_at == e.time
    assert rows == [TransitionRow(from_state="running", to_state=target, accepted=True, event_time=e.time,
                                  event_id=e.id, actor="sdk", reason=reason)]


@pytest.mark.parametrize("payload", [FinishPayload(exit_code=0), FinishPayload(exit_code=1, signal=15)])
def test_finish_after_preempting_is_preempted(payload):
    state, rows = fold(state_in("preempting"), ev(RunFinish, payload))
    assert state.state == "preempted"
    assert [(r.from_state, r.to_state, r.accepted) for r in rows] == [("preempting", "preempted", True)]


def test_finish_of_a_finished_run_is_refused_and_changes_nothing():
    before = state_in("finished")
    e = ev(RunFinish, FinishPayload(exit_code=3))
    after, rows = fold(before, e)
    assert after == before
    assert after.exit_code == 0
    assert len(rows) == 1
    row = rows[0]
    assert (row.from_state, row.to_state, row.accepted, row.event_id) == ("finished", "failed", False, e.id)
    assert row.reason and "finished" in row.reason and "failed" in row.reason


def test_second_finish_exit_zero_is_refused_as_already_finished():
    before = state_in("finished")
    after, rows = fold(before, ev(RunFinish, FinishPayload(exit_code=0)))
    assert after == before
    assert [(r.accepted, r.reason) for r in rows] == [(False, "run is already finished")]


def test_state_change_to_failed_from_pending_is_allowed():
    e = ev(RunStateChange, StateChangePayload(to="failed", reason="bad node"), kind="api", rank=None)
    state, rows = fold(state_in("pending"), e)
    assert state.state == "failed"
    assert rows == [TransitionRow(from_state="pending", to_state="failed", accepted=True, event_time=e.time,
                                  event_id=e.id, actor="api", reason="bad node")]


def test_state_change_to_pending_from_finished_is_refused():
    before = state_in("finished")
    after, rows = fold(before, ev(RunStateChange, StateChangePayload(to="pending"), kind="api"))
    assert after == before
    assert len(rows) == 1 and rows[0].accepted is False
    assert rows[0].reason == check_move("finished", "pending")


@pytest.mark.parametrize("current", sorted(STATES))
def test_crashed_only_from_running(current):
    before = state_in(current)
    e = ev(RunCrashed, LostPayload(reason="heartbeats stopped"), kind="watchdog", rank=None)
    after, rows = fold(before, e)
    assert len(rows) == 1 and rows[0].actor == "watchdog"
    if current == "running":
        assert after.state == "crashed" and rows[0].accepted and rows[0].reason == "heartbeats stopped"
    else:
        assert after == before and not rows[0].accepted


@pytest.mark.parametrize("current", sorted(STATES))
def test_preempted_only_from_preempting(current):
    before = state_in(current)
    after, rows = fold(before, ev(RunPreempted, LostPayload(reason="gone"), kind="watchdog"))
    assert after.state == ("preempted" if current in ("preempting", "preempted") else current)
    assert rows[0].accepted is (current == "preempting")


def test_events_before_init_create_the_run_implicitly_as_running():
    e = ev(RunLog, LogPayload(step=2, values={"loss": 1.5}))
    state, rows = fold(None, e)
    assert state.state == "running"
    assert (state.entity, state.project, state.run_id) == ("ent", "proj", "r1")
    assert state.created_at == e.time
    assert rows == [
        TransitionRow(from_state=None, to_state="running", accepted=True, event_time=e.time, event_id=e.id,
                      actor="sdk", reason="implicit start: no run.init seen"),
        HistoryColumn("loss", 0, [2], [1.5], plain=True),
    ]
    assert state.summary == {"loss": 1.5, "_step": 2} and state.last_step == 2


def test_finish_before_init_is_not_dropped():
    state, rows = fold(None, ev(RunFinish, FinishPayload(exit_code=1)))
    assert state.state == "failed" and state.exit_code == 1
    assert [(r.from_state, r.to_state, r.accepted) for r in rows] == [(None, "running", True), ("running", "failed", True)]


def test_delete_and_undelete_flip_deleted():
    deleted, rows = fold(running(), ev(RunDelete, kind="api"))
    assert deleted.deleted is True and deleted.state == "running" and rows == []
    back, rows = fold(deleted, ev(RunUndelete, kind="api"))
    assert back.deleted is False and rows == []


# --- properties ----------------------------------------------------------------------------------

TAGS = st.sampled_from(["a", "b", "c", "d"])
KEYS = st.sampled_from(["loss", "acc", "lr", "note"])
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False), st.text(max_size=5),
)
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=3))
KIND = st.sampled_from(["sdk", "api", "watchdog"])

PAYLOADS = st.one_of(
    st.builds(lambda p: (RunInit, p), st.builds(
        InitPayload, name=st.none() | st.text(max_size=3), tags=st.lists(TAGS, max_size=3),
        config=st.dictionaries(KEYS, SCALARS, max_size=2), resumed=st.booleans(),
        state=st.sampled_from(["running", "pending"]))),
    st.builds(lambda p: (RunLog, p), st.builds(
        LogPayload, step=st.integers(0, 20), values=st.dictionaries(KEYS, VALUES, max_size=3))),
    st.builds(lambda p: (RunTags, p), st.builds(TagsPayload, add=st.lists(TAGS, max_size=3),
                                                remove=st.lists(TAGS, max_size=2))),
    st.builds(lambda p: (RunConfig, p), st.builds(ConfigPayload, values=st.dictionaries(KEYS, SCALARS, max_size=2))),
    st.builds(lambda p: (RunSummary, p), st.builds(SummaryPayload, set=st.dictionaries(KEYS, VALUES, max_size=2),
                                                   remove=st.lists(KEYS, max_size=2))),
    st.builds(lambda p: (RunFinish, p), st.builds(FinishPayload, exit_code=st.integers(-1, 2),
                                                  signal=st.none() | st.sampled_from([2, 15]))),
    st.just((RunPreempting, None)),
    st.builds(lambda p: (RunStateChange, p), st.builds(StateChangePayload, to=st.sampled_from(["pending", "failed"]))),
    st.builds(lambda r: (RunCrashed, LostPayload(reason=r)), st.sampled_from(["hb", "lost"])),
    st.builds(lambda r: (RunPreempted, LostPayload(reason=r)), st.sampled_from(["hb", "exited"])),
    st.builds(lambda p: (RunHeartbeat, p), st.builds(HeartbeatPayload, step=st.none() | st.integers(0, 20))),
    st.just((RunDelete, None)),
    st.just((RunUndelete, None)),
    st.builds(lambda p: (RunUpdate, p), st.builds(UpdatePayload, name=st.none() | st.text(max_size=3))),
)


@st.composite
def event_lists(draw, max_size=25, payloads=PAYLOADS, ranks=2, skew=0):
    """Events of RUN from two writers; ``skew`` moves every other writer's clock back (late events)."""
    specs = draw(st.lists(st.tuples(payloads, KIND, st.integers(0, 3)), max_size=max_size))
    events = []
    for i, ((cls, payload), kind, secs) in enumerate(specs):
        args = dict(id=uuid.UUID(int=i + 1), run=RUN, source=Source(kind=kind, writer=f"w{i % 2}", rank=i % ranks),
                    seq=i, time=T0 + timedelta(seconds=secs * i - skew * (i % 2)))
        if payload is not None:
            args["payload"] = payload
        events.append(cls(**args))
    return events


PROPS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPS
@given(event_lists())
def test_fold_is_deterministic(events):
    assert same(fold_all(events), fold_all(events))


@PROPS
@given(event_lists())
def test_transition_rows_describe_exactly_the_moves(events):
    state = None
    for e in events:
        before = state
        snapshot, event_dump = copy.deepcopy(before), e.model_dump()
        state, rows = fold(before, e)
        assert before == snapshot and e.model_dump() == event_dump  # pure: inputs are never mutated
        current = None if before is None else before.state
        for row in transitions(rows):
            assert row.from_state == current
            assert row.event_id == e.id and row.event_time == e.time and row.actor == e.source.kind
            if row.accepted:
                assert row.to_state != current
                current = row.to_state
            else:
                assert row.reason  # a refusal always says why
        assert state is not None and state.state == current
        assert state.state in STATES
        assert len(state.tags) == len(set(state.tags))
        if before is not None and not any(isinstance(r, TransitionRow) and r.accepted for r in rows):
            assert state.state == before.state
        if isinstance(e, RunLog):
            assert history_points(rows) == [
                HistoryRow(k, e.payload.step, float(v), None, e.source.rank or 0)
                if isinstance(v, (int, float)) and not isinstance(v, bool)
                else HistoryRow(k, e.payload.step, None, v, e.source.rank or 0)
                for k, v in e.payload.values.items()
            ]


@PROPS
@given(event_lists(), st.data())
def test_fold_of_a_split_list_equals_fold_of_the_whole(events, data):
    cut = data.draw(st.integers(0, len(events)))
    whole_state, whole_rows = fold_all(events)
    head_state, head_rows = fold_all(events[:cut])
    tail_state, tail_rows = fold_all(events[cut:], head_state)
    assert tail_state == whole_state
    assert head_rows + tail_rows == whole_rows


@PROPS
@given(st.lists(st.tuples(st.lists(TAGS, max_size=2), st.lists(TAGS, max_size=2)), min_size=2, max_size=2),
       st.lists(TAGS, max_size=4))
def test_tag_deltas_touching_different_tags_commute(deltas, initial):
    (add1, rem1), (add2, rem2) = deltas
    if (set(add1) | set(rem1)) & (set(add2) | set(rem2)):
        add2 = [t for t in add2 if t not in set(add1) | set(rem1)]
        rem2 = [t for t in rem2 if t not in set(add1) | set(rem1)]
    base = running(tags=initial)
    e1 = ev(RunTags, TagsPayload(add=add1, remove=rem1), writer="w1")
    e2 = ev(RunTags, TagsPayload(add=add2, remove=rem2), writer="w2")
    one, _ = fold_all([e1, e2], base)
    two, _ = fold_all([e2, e1], base)
    assert set(one.tags) == set(two.tags) == (set(initial) | set(add1) | set(add2)) - set(rem1) - set(rem2)
    assert len(one.tags) == len(set(one.tags))


def test_run_state_is_frozen():
    with pytest.raises(AttributeError):
        running().state = "failed"  # type: ignore[misc]
    assert isinstance(running(), RunState)


# --- shared runs: several ranks, one run id ------------------------------------------------------


def test_a_shared_run_finishes_when_its_last_writer_does():
    state, rows = fold_all([
        ev(RunInit, InitPayload(), writer="w0", rank=0),
        ev(RunInit, InitPayload(), writer="w1", rank=1),
        ev(RunInit, InitPayload(), writer="w2", rank=2),
        ev(RunFinish, FinishPayload(exit_code=0), writer="w0", rank=0),
    ])
    assert state.state == "running" and state.open_writers == ("w1", "w2")
    state, more = fold_all([ev(RunFinish, FinishPayload(exit_code=0), writer="w2", rank=2),
                            ev(RunFinish, FinishPayload(exit_code=0), writer="w1", rank=1)], state)
    assert state.state == "finished" and state.open_writers == ()
    (last,) = [r for r in more if isinstance(r, TransitionRow)]
    assert last.accepted and "last of 3 writers" in (last.reason or "")


def test_one_failed_rank_makes_the_shared_run_failed():
    state, _ = fold_all([
        ev(RunInit, InitPayload(), writer="w0", rank=0),
        ev(RunInit, InitPayload(), writer="w1", rank=1),
        ev(RunFinish, FinishPayload(exit_code=3), writer="w1", rank=1),
        ev(RunFinish, FinishPayload(exit_code=0), writer="w0", rank=0),
    ])
    assert (state.state, state.exit_code) == ("failed", 3)


def test_same_key_same_step_lowest_rank_wins_in_history_rows_order_independent():
    from projections.fold import HistoryRow

    a = ev(RunLog, LogPayload(step=3, values={"loss": 1.0}), writer="w0", rank=0)
    b = ev(RunLog, LogPayload(step=3, values={"loss": 2.0}), writer="w1", rank=1)
    for order in ([a, b], [b, a]):
        state, rows = fold_all(order, running())
        assert state.summary["loss"] == 1.0
        assert {r.rank: r.value for r in history_points(rows)} == {0: 1.0, 1: 2.0}


def test_creating_a_pending_run_that_already_exists_is_refused_and_changes_nothing():
    state = running()
    new, rows = fold(state, ev(RunInit, InitPayload(state="pending"), kind="api", writer="api-1"))
    assert new == state
    (row,) = rows
    assert not row.accepted and row.to_state == "pending" and "already exists" in row.reason


# Logs dominate, with define_metric, summary overrides, crashes and NaN/inf mixed in: the cases
# where fold_logs' single summary recomputation could differ from one per event.
LOG_HEAVY = st.one_of(
    st.builds(lambda p: (RunLog, p), st.builds(
        LogPayload, step=st.integers(0, 20),
        values=st.dictionaries(KEYS, st.one_of(VALUES, st.floats(), st.integers(-5, 5)), max_size=3))),
    st.builds(lambda p: (RunLog, p), st.builds(LogPayload, step=st.integers(0, 20),
                                               values=st.dictionaries(KEYS, st.floats(), min_size=1, max_size=4))),
    st.builds(lambda p: (RunMetric, p), st.builds(
        MetricPayload, name=st.sampled_from(["loss", "acc", "l*", "*"]),
        summary=st.lists(st.sampled_from(["min", "max", "mean", "best", "last", "none", "first"]), max_size=2,
                         unique=True),
        goal=st.none() | st.sampled_from(["minimize", "maximize"]), overwrite=st.none() | st.booleans())),
    PAYLOADS,
)


@PROPS
@given(event_lists(max_size=30, payloads=LOG_HEAVY, ranks=3, skew=3))
def test_folding_runs_of_logs_at_once_equals_folding_them_one_by_one(events):
    expected_state, expected_rows = fold_all(events)
    state, rows, group = None, [], []
    for e in [*events, None]:
        if isinstance(e, RunLog):
            group.append(e)
            continue
        if group:
            before = copy.deepcopy(state)
            folded, more = fold_logs(state, group)
            assert state == before  # pure: the input state (and its stats dicts) is never mutated
            state = folded
            rows += more
            group = []
        if e is not None:
            state, more = fold(state, e)
            rows += more
    assert same(normal((state, rows)), normal((expected_state, expected_rows)))


MOSTLY_LOGS = st.one_of(*[st.builds(lambda p: (RunLog, p), st.builds(
    LogPayload, step=st.integers(0, 20),
    values=st.dictionaries(KEYS, st.one_of(VALUES, st.floats(), st.integers(-5, 5)), max_size=3)))] * 3, LOG_HEAVY)


@PROPS
@given(event_lists(max_size=30, payloads=MOSTLY_LOGS, ranks=3, skew=3), st.data())
def test_a_packed_log_folds_like_its_rows_one_by_one(events, data):
    """The SDK packs consecutive rows of a writer into one run.log (``LogPayload.more``) with the
    first row's id and seq and the last row's time: the same state and rows as those rows logged
    one by one at that time, through ``fold`` and ``fold_logs`` alike."""
    packed: list = []
    unpacked: list = []
    i = 0
    while i < len(events):
        e = events[i]
        if not isinstance(e, RunLog):
            packed.append(e)
            unpacked.append(e)
            i += 1
            continue
        group = [e]  # the strategy alternates writers: a pack's rows take the first row's writer
        for nxt in events[i + 1:i + data.draw(st.integers(1, 6))]:
            if not isinstance(nxt, RunLog):
                break
            group.append(nxt)
        hypothesis.event(f"a pack of {len(group)} row(s)")
        t = group[-1].time
        more = [LogRow(step=g.payload.step, values=g.payload.values) for g in group[1:]]
        packed.append(e.model_copy(update={"time": t, "payload": LogPayload(
            step=e.payload.step, values=e.payload.values, more=more)}))
        unpacked += [g.model_copy(update={"time": t, "source": e.source}) for g in group]
        i += len(group)
    expected = fold_all(unpacked)
    assert same(normal(fold_all(packed)), normal(expected))
    assert same(normal(fold_grouped(packed)), normal(expected))


@st.composite
def uniform_packs(draw):
    """Packed logs as a training loop makes them: every row logs the same 2-4 keys (the transposed
    path of ``_gather``); now and then a row swaps one key for another or drops one (the
    point-by-point path: same count but a different key, or a different count)."""
    keys = draw(st.lists(st.sampled_from(["loss", "acc", "lr", "note", "t"]), min_size=2, max_size=4, unique=True))
    numbers = st.floats() | st.integers(-5, 5) | st.none()
    events, seq = [], 0
    for _ in range(draw(st.integers(1, 4))):
        rows = []
        for _ in range(draw(st.integers(1, 8))):
            values = {k: draw(numbers) for k in keys}
            change = draw(st.sampled_from(["none"] * 6 + ["swap", "drop"]))
            if change == "swap":
                values.pop(keys[0])
                values["other"] = 1.0
            elif change == "drop":
                values.pop(keys[-1])
            rows.append(LogRow(step=draw(st.integers(0, 30)), values=values))
        events.append(ev(RunLog, LogPayload(step=rows[0].step, values=rows[0].values, more=rows[1:]), seq=seq,
                         rank=draw(st.sampled_from([0, 0, 1]))))
        seq += len(rows)
    return events


@PROPS
@given(uniform_packs())
def test_packs_of_rows_with_the_same_keys_fold_like_their_rows_one_by_one(packs):
    start = running()
    unpacked = [e.model_copy(update={"payload": LogPayload(step=step, values=values)})
                for e in packs for step, values in [(e.payload.step, e.payload.values), *e.payload.more]]
    expected = fold_all(unpacked, start)
    assert same(normal(fold_logs(start, packs)), normal(expected))
    assert same(normal(fold_all(packs, start)), normal(expected))


@PROPS
@given(event_lists(max_size=30, payloads=LOG_HEAVY, ranks=3, skew=3), uniform_packs())
def test_a_column_said_plain_holds_only_floats_without_nan(events, packs):
    """The consumer skips its own value checks for a ``plain`` column (consumers.postgres)."""
    for folded in (fold_grouped(events), fold_logs(running(), packs)):
        for c in folded[1]:
            if isinstance(c, HistoryColumn) and c.plain:
                assert all(type(v) is float and v == v for v in c.values), c
    assert any(c.plain for c in fold_logs(running(), [ev(RunLog, LogPayload(step=1, values={"a": 1.0}))])[1])


def fold_grouped(events):
    """Fold as the consumer does: each run of consecutive run.log events at once (fold_logs)."""
    state, rows, group = None, [], []
    for e in [*events, None]:
        if isinstance(e, RunLog):
            group.append(e)
            continue
        if group:
            state, more = fold_logs(state, group)
            rows += more
            group = []
        if e is not None:
            state, more = fold(state, e)
            rows += more
    return state, rows


def test_a_packed_log_of_both_infinities_folds_like_its_rows():
    """hypothesis found this one in CI: the key's sum becomes NaN (inf + -inf) on both paths,
    and a NaN never equals a NaN, so the comparison must be ``same``, not ``==``."""
    packed = ev(RunLog, LogPayload(step=9, values={"loss": -math.inf}, more=[LogRow(step=1, values={"loss": math.inf})]))
    rows = [ev(RunLog, LogPayload(step=9, values={"loss": -math.inf})),
            ev(RunLog, LogPayload(step=1, values={"loss": math.inf}))]
    rows = [r.model_copy(update={"time": packed.time}) for r in rows]
    start = running()
    got, expected = fold(start, packed), fold_all(rows, start)
    assert math.isnan(got[0].stats["loss"]["sum"]) and got[0].stats["loss"]["count"] == 2
    assert normal(got) != normal(expected) and same(normal(got), normal(expected))
