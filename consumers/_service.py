"""Shared main loop of the long-running Python services started by ``runlog up``."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from typing import Any, Protocol

import uvloop

from events.settings import Settings, apply_home_flag, get_settings, tune_service_gc


class Service(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


def serve(name: str, factory: Any) -> None:
    """Build the service, start it, mark it ready, and stop it cleanly on SIGTERM/SIGINT."""
    apply_home_flag(sys.argv[1:])
    name = os.environ.get("RUNLOG_SERVICE", name)  # `runlog up` names each of several consumers
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s")
    logging.getLogger("faststream").setLevel(logging.WARNING)  # it logs every batch at INFO
    settings = get_settings()
    ready = settings.home / "run" / f"{name}.ready"
    ready.parent.mkdir(parents=True, exist_ok=True)
    tune_service_gc()
    uvloop.run(_run(factory(settings, ready)))  # asyncio on libuv: less CPU per Kafka fetch and query


async def _run(service: Service) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await service.start()
    try:
        await stop.wait()
    finally:
        await service.stop()


__all__ = ["serve"]
