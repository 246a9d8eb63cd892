"""The watchdog's decision, without Kafka or PostgreSQL: who is silent, and the verdict's id/seq/time."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from consumers.watchdog import Watchdog, find_silent, last_sign_of_life, next_seq, verdict
from events import RunCrashed, RunPreempted, decode, encode
from events.settings import Settings
from projections.fold import RunState, fold

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
STATES = ["pending", "running", "preempting", "preempted", "finished", "failed", "crashed", "killed"]


def row(state: str = "running", heartbeat_ago: float | None = 400.0, updated_ago: float = 400.0,
        run_id: str = "r1", watchdog_seq: int | None = None) -> dict:
    return {
        "entity": "e", "project": "p", "run_id": run_id, "state": state,
        "heartbeat_at": None if heartbeat_ago is None else NOW - timedelta(seconds=heartbeat_ago),
        "updated_at": NOW - timedelta(seconds=updated_ago), "watchdog_seq": watchdog_seq,
    }


def test_a_running_run_silent_past_the_timeout_is_crashed():
    [silence] = find_silent([row(heartbeat_ago=312, updated_ago=320)], NOW, 300)
    event = verdict(silence, 300)
    assert isinstance(event, RunCrashed)
    assert event.run.path == "e/p/r1" and event.key == b"e/p/r1"
    assert event.source.kind == "watchdog" and event.source.writer == "watchdog" and event.source.rank is None
    assert event.payload.reason == "no heartbeat for 312s (timeout 300s)"
    assert event.payload.last_heartbeat == NOW - timedelta(seconds=312)
    assert event.time == NOW - timedelta(seconds=12)  # last sign of life + timeout, not the scan's clock
    assert decode(encode(event)) == event


def test_a_silent_preempting_run_is_preempted():
    [silence] = find_silent([row(state="preempting")], NOW, 300)
    event = verdict(silence, 300)
    assert isinstance(event, RunPreempted)
    assert event.payload.reason == "no heartbeat for 400s (timeout 300s) after preempting"


def test_any_event_is_a_sign_of_life():
    # heartbeats stopped long ago, but the run logged 10 s ago: alive
    assert find_silent([row(heartbeat_ago=3600, updated_ago=10)], NOW, 300) == []
    # heartbeat recent, other events old: alive
    assert find_silent([row(heartbeat_ago=10, updated_ago=3600)], NOW, 300) == []
    # never a heartbeat (no init seen): updated_at counts
    assert len(find_silent([row(heartbeat_ago=None, updated_ago=301)], NOW, 300)) == 1


def test_exactly_at_the_timeout_is_not_yet_silent():
    assert find_silent([row(heartbeat_ago=300, updated_ago=300)], NOW, 300) == []
    assert len(find_silent([row(heartbeat_ago=300.001, updated_ago=300.001)], NOW, 300)) == 1


def test_other_states_are_never_reported():
    rows = [row(state=s, run_id=s) for s in STATES]
    assert sorted(s.run.run_id for s in find_silent(rows, NOW, 300)) == ["preempting", "running"]


def test_two_scans_of_the_same_silence_agree_on_everything_but_the_measured_silence():
    first = verdict(find_silent([row(heartbeat_ago=400)], NOW, 300)[0], 300)
    later = verdict(find_silent([row(heartbeat_ago=400)], NOW + timedelta(seconds=55), 300)[0], 300)
    assert (first.id, first.seq, first.time, first.type) == (later.id, later.seq, later.time, later.type)
    assert first.payload.last_heartbeat == later.payload.last_heartbeat


def test_a_new_silence_gets_a_new_id_and_a_larger_seq():
    old = verdict(find_silent([row(heartbeat_ago=4000, updated_ago=4000)], NOW, 300)[0], 300)
    # the run resumed and went quiet again, later
    new = verdict(find_silent([row(heartbeat_ago=400, updated_ago=400, watchdog_seq=old.seq)], NOW, 300)[0], 300)
    assert new.id != old.id and new.seq > old.seq


def test_seq_is_the_silence_start_in_ms_but_never_below_the_last_accepted_one():
    start = datetime(2025, 1, 1, tzinfo=UTC)
    assert next_seq(start, None) == int(start.timestamp() * 1000)
    assert next_seq(start, 5) == int(start.timestamp() * 1000)
    # a resumed run whose writer's clock is behind the previous verdict: still accepted
    assert next_seq(start, int(start.timestamp() * 1000) + 50) == int(start.timestamp() * 1000) + 51


def test_the_verdict_folds_into_the_crashed_state_with_the_watchdog_as_actor():
    silence = find_silent([row()], NOW, 300)[0]
    before = RunState(entity="e", project="p", run_id="r1", state="running",
                      created_at=NOW - timedelta(hours=1), updated_at=silence.last_seen,
                      heartbeat_at=silence.last_seen)
    after, [transition] = fold(before, verdict(silence, 300))
    assert after is not None and after.state == "crashed"
    assert transition.accepted and transition.actor == "watchdog" and transition.from_state == "running"


AGO = st.one_of(st.none(), st.floats(min_value=0, max_value=10 * 86400, allow_nan=False))
ROWS = st.lists(
    st.builds(row, state=st.sampled_from(STATES), heartbeat_ago=AGO,
              updated_ago=st.floats(min_value=0, max_value=10 * 86400, allow_nan=False),
              run_id=st.uuids().map(lambda u: u.hex[:8])),
    max_size=20,
)


@given(rows=ROWS, timeout=st.floats(min_value=0.001, max_value=86400, allow_nan=False))
def test_reported_iff_watched_and_last_sign_of_life_older_than_the_timeout(rows, timeout):
    reported = {s.run.run_id for s in find_silent(rows, NOW, timeout)}
    expected = {
        r["run_id"] for r in rows
        if r["state"] in ("running", "preempting")
        and NOW - last_sign_of_life(r["heartbeat_at"], r["updated_at"]) > timedelta(seconds=timeout)
    }
    assert reported == expected


@given(rows=ROWS, timeout=st.floats(min_value=0.001, max_value=86400, allow_nan=False),
       later=st.floats(min_value=0, max_value=3600, allow_nan=False))
def test_equal_silences_give_equal_ids_seqs_and_times(rows, timeout, later):
    """Two watchdogs (or one restarted) scanning the same rows, at different moments, write the
    same events for the runs both see as silent; different silences never share an id."""
    first = {s.run.run_id: verdict(s, timeout) for s in find_silent(rows, NOW, timeout)}
    second = {s.run.run_id: verdict(s, timeout)
              for s in find_silent(rows, NOW + timedelta(seconds=later), timeout)}
    for run_id, event in first.items():
        again = second[run_id]  # still silent later
        assert (again.id, again.seq, again.time, again.type) == (event.id, event.seq, event.time, event.type)
    ids = [e.id for e in second.values()]
    keys = {(e.run.path, e.type, e.payload.last_heartbeat) for e in second.values()}
    assert len(set(ids)) == len(keys)


async def test_postgres_and_kafka_away_the_watchdog_keeps_trying_and_stops_cleanly(tmp_path):
    ready = tmp_path / "watchdog.ready"
    settings = Settings(database_url="postgresql://nobody@127.0.0.1:1/none", bootstrap_servers="127.0.0.1:1",
                        watchdog_interval=0.05)
    dog = Watchdog(settings, ready)
    await dog.start()
    await asyncio.sleep(0.3)  # several failed scans
    assert dog._task is not None and not dog._task.done()
    assert not ready.exists()
    await dog.stop()
    assert dog._task is None
