"""The watchdog: turns silence (heartbeats that stopped) into ``run.crashed`` / ``run.preempted`` events.

This is the slot ``runlog up`` starts; the detection itself lands with the projections issue.
For now it only marks itself ready and idles, so the stack's shape is final.
"""

from __future__ import annotations

from pathlib import Path

from events.settings import Settings

from ._service import serve


class Watchdog:
    def __init__(self, settings: Settings, ready_file: Path) -> None:
        self.settings = settings
        self.ready_file = ready_file

    async def start(self) -> None:
        self.ready_file.touch()

    async def stop(self) -> None:
        self.ready_file.unlink(missing_ok=True)


if __name__ == "__main__":
    serve("watchdog", Watchdog)
