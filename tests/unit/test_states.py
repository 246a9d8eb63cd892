"""The run state machine (projections.states) against an independent copy of DESIGN.md "Run states"."""

from __future__ import annotations

import itertools

import pytest

from projections.states import ALLOWED, STATES, check_move

EIGHT = ("pending", "running", "preempting", "preempted", "finished", "failed", "crashed", "killed")

# DESIGN.md "Run states", written out pair by pair (None = the run does not exist yet).
DESIGN_MOVES: frozenset[tuple[str | None, str]] = frozenset({
    # start: -> running (init), -> pending (created ahead of scheduling)
    (None, "running"), (None, "pending"),
    # running -> finished | failed | killed | preempting | crashed
    ("running", "finished"), ("running", "failed"), ("running", "killed"),
    ("running", "preempting"), ("running", "crashed"),
    # preempting -> preempted
    ("preempting", "preempted"),
    # pending | crashed | preempted | failed | finished -> running (resume)
    ("pending", "running"), ("crashed", "running"), ("preempted", "running"),
    ("failed", "running"), ("finished", "running"),
    # running | failed | crashed | preempted -> pending (requeue via API)
    ("running", "pending"), ("failed", "pending"), ("crashed", "pending"), ("preempted", "pending"),
    # pending | running -> failed (via API)
    ("pending", "failed"), ("running", "failed"),
})

ALL_PAIRS = [(a, b) for a, b in itertools.product((None, *EIGHT), EIGHT)]


def test_the_eight_states():
    assert STATES == EIGHT
    assert set(ALLOWED) == set(EIGHT)


def test_design_table_has_eighteen_distinct_moves():
    # guards the literal copy above against a typo that would silently shrink it
    assert len(DESIGN_MOVES) == 18  # running -> failed is listed twice in DESIGN.md
    assert all(b in EIGHT and (a is None or a in EIGHT) for a, b in DESIGN_MOVES)


@pytest.mark.parametrize(("current", "target"), sorted(DESIGN_MOVES, key=str))
def test_design_moves_are_allowed(current, target):
    assert check_move(current, target) is None


@pytest.mark.parametrize(("current", "target"), [p for p in ALL_PAIRS if p not in DESIGN_MOVES])
def test_other_moves_are_refused_with_a_reason_naming_both_states(current, target):
    reason = check_move(current, target)
    assert isinstance(reason, str) and reason
    assert target in reason
    if current is None:
        assert "new run" in reason
    else:
        assert current in reason


def test_allowed_table_equals_design_table():
    from_table = {(src, dst) for dst, sources in ALLOWED.items() for src in sources}
    assert from_table == DESIGN_MOVES


@pytest.mark.parametrize("state", EIGHT)
def test_same_state_move_is_refused(state):
    reason = check_move(state, state)
    assert reason == f"run is already {state}"


def test_refusal_lists_the_states_a_target_may_be_entered_from():
    assert check_move("killed", "running") == (
        "killed cannot move to running (only from crashed, failed, finished, new, pending, preempted)"
    )
    assert check_move(None, "finished") == "a new run cannot move to finished (only from running)"
    assert check_move("running", "preempted") == "running cannot move to preempted (only from preempting)"


@pytest.mark.parametrize("state", EIGHT)
def test_killed_is_terminal(state):
    assert check_move("killed", state) is not None
