"""The run state machine of DESIGN.md: which moves are allowed, and why a move is refused."""

from __future__ import annotations

from typing import Literal

State = Literal["pending", "running", "preempting", "preempted", "finished", "failed", "crashed", "killed"]
STATES: tuple[State, ...] = ("pending", "running", "preempting", "preempted", "finished", "failed", "crashed", "killed")

# target -> the states it may be entered from (None = the run does not exist yet)
ALLOWED: dict[State, frozenset[State | None]] = {
    "running": frozenset({None, "pending", "crashed", "preempted", "failed", "finished"}),
    "pending": frozenset({None, "running", "failed", "crashed", "preempted"}),
    "finished": frozenset({"running"}),
    "failed": frozenset({"running", "pending"}),
    "killed": frozenset({"running"}),
    "preempting": frozenset({"running"}),
    "crashed": frozenset({"running"}),
    "preempted": frozenset({"preempting"}),
}


def check_move(current: State | None, target: State) -> str | None:
    """None when ``current -> target`` is allowed, else the reason it is refused."""
    if current == target:
        return f"run is already {target}"
    if current in ALLOWED[target]:
        return None
    allowed = sorted(s or "new" for s in ALLOWED[target])
    return f"{current or 'a new run'} cannot move to {target} (only from {', '.join(allowed)})"
