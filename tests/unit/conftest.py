"""Fixtures shared by the SDK's unit tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import producer
from producer import _run
from producer._transport import DisabledTransport, MemoryTransport


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> Iterator[list]:
    """Every transport a run gets is a MemoryTransport; yields the list of events sent, in order.

    The SDK's environment defaults (entity, project, rank) are cleared so tests see its own."""
    events: list = []

    class Recording(MemoryTransport):
        def send(self, event):  # type: ignore[no-untyped-def]
            super().send(event)
            events.append(event)

    def make(mode, settings, spool_path=None):  # type: ignore[no-untyped-def]
        return DisabledTransport() if mode == "disabled" else Recording()

    monkeypatch.setattr(_run, "_make_transport", make)
    for var in ("RUNLOG_ENTITY", "RUNLOG_PROJECT", "RANK"):
        monkeypatch.delenv(var, raising=False)
    yield events
    if producer.run is not None:
        producer.run.finish()
