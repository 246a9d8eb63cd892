"""The local stack: Kafka, PostgreSQL, the projection consumer, the watchdog and the API.

``up`` starts whatever of it is not running, in dependency order, and waits until each part
is really ready (Kafka accepts topic creation, PostgreSQL accepts a connection and is
migrated, the consumer has joined its group, the API answers ``/ready``). ``down`` stops, in
reverse order, exactly the processes ``up`` recorded. Both are idempotent.
"""

from __future__ import annotations

import asyncio
import os
import sys
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from events.settings import HOME_FLAG, Settings
from projections.migrate import migrate_url

from . import kafka, postgres, process
from .process import StackError


@dataclass(frozen=True)
class Service:
    name: str
    module: str
    what: str


OTHER_SERVICES = [
    Service("watchdog", "consumers.watchdog", "watchdog"),
    Service("notifier", "consumers.notifier", "alert notifier"),
    Service("api", "api", "HTTP API"),
]


def consumer_names(s: Settings) -> list[str]:
    """``consumer``, ``consumer-2``, ...: the projection consumers (one group, partitions shared).

    The API and the consumers each hold a core's worth of Python at most; several consumers let
    one fold while another waits on PostgreSQL or Kafka."""
    if s.consumers > s.events_partitions:
        raise StackError(f"RUNLOG_CONSUMERS={s.consumers} is more than the {s.events_partitions} partitions of "
                         f"{s.events_topic}: the extra consumers would sit idle and never become ready.")
    return ["consumer", *(f"consumer-{i}" for i in range(2, s.consumers + 1))]


def python_services(s: Settings) -> list[Service]:
    return [*(Service(name, "consumers", "projection consumer") for name in consumer_names(s)), *OTHER_SERVICES]


def order(s: Settings) -> list[str]:
    """Every part in start order; consumers left over from a larger RUNLOG_CONSUMERS are included
    (after the configured ones) so that ``down`` and ``status`` still see them."""
    consumers = consumer_names(s)
    extra = sorted((p.stem for p in process.run_dir(s.home).glob("consumer-*.pid") if p.stem not in consumers),
                   key=lambda name: int(name.rsplit("-", 1)[1]) if name.rsplit("-", 1)[1].isdigit() else 0)
    return ["postgres", "kafka", *consumers, *extra, "watchdog", "notifier", "api"]


def ready_file(s: Settings, name: str):
    return process.run_dir(s.home) / f"{name}.ready"


def _marker(s: Settings) -> str:
    return f"{HOME_FLAG}{s.home}"


def _start_python(s: Settings, svc: Service) -> bool:
    if process.running(s.home, svc.name):
        return False
    if svc.name == "api":
        process.ensure_port_free(s.api_host, s.api_port, "The API", "RUNLOG_API_URL")
    ready_file(s, svc.name).unlink(missing_ok=True)
    env = {**os.environ, "RUNLOG_HOME": str(s.home), "PYTHONUNBUFFERED": "1", "RUNLOG_SERVICE": svc.name}
    argv = [sys.executable, "-m", svc.module, _marker(s)]
    process.spawn(s.home, svc.name, argv, marker=_marker(s), env=env)
    return True


def _wait_python(s: Settings, svc: Service, timeout: float = 60.0) -> None:
    if svc.name == "api":
        check: Callable[[], bool] = lambda: _http_ok(f"{s.api_url}/api/v1/ready")  # noqa: E731
    else:
        check = ready_file(s, svc.name).exists
    ok = process.wait_until(lambda: check() or not process.running(s.home, svc.name), timeout, 0.2)
    if not ok or not process.running(s.home, svc.name):
        log = process.log_path(s.home, svc.name)
        raise StackError(f"The {svc.what} did not become ready; last lines of {log}:\n{process.tail(log)}")


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def preflight(s: Settings) -> None:
    """Before starting anything: every port we are about to bind is free, and the tools exist."""
    st = status(s)
    if st["postgres"] is None:
        process.ensure_port_free(s.pg_host, s.pg_port, "PostgreSQL", "RUNLOG_DATABASE_URL")
    if st["kafka"] is None:
        process.ensure_port_free(s.kafka_host, s.kafka_port, "Kafka", "RUNLOG_BOOTSTRAP_SERVERS")
        process.ensure_port_free(s.kafka_host, s.controller_port, "Kafka's controller",
                                 "RUNLOG_KAFKA_CONTROLLER_PORT")
        kafka.check_tools()
    if st["api"] is None:
        process.ensure_port_free(s.api_host, s.api_port, "The API", "RUNLOG_API_URL")


def up(s: Settings, say: Callable[[str], None] = print) -> None:
    """Start every part that is not running and wait until all are ready.

    If a part fails, the parts this call started are stopped again, so a failed ``up``
    leaves the machine as it found it.
    """
    s.home.mkdir(parents=True, exist_ok=True)
    preflight(s)
    before = {name for name, pid in status(s).items() if pid is not None}
    try:
        _up(s, say)
    except BaseException:
        for name in reversed(order(s)):
            if name not in before:
                _stop(s, name)
        raise


def _up(s: Settings, say: Callable[[str], None]) -> None:
    started = postgres.start(s)
    postgres.ensure_database(s)
    applied = asyncio.run(migrate_url(s.database_url))
    say(f"postgres  {'started' if started else 'running'}  {s.database_url}"
        + (f"  (applied {', '.join(applied)})" if applied else ""))

    started = kafka.start(s)
    kafka.wait_ready(s)
    say(f"kafka     {'started' if started else 'running'}  {s.bootstrap_servers}  "
        f"topics {s.events_topic} ({s.events_partitions} partitions), {s.dlq_topic}")

    services = python_services(s)
    svc_started: dict[str, bool] = {}
    for svc in services:  # start all, then wait: the consumers join their group together
        svc_started[svc.name] = _start_python(s, svc)
    for svc in services:
        _wait_python(s, svc)
        where = s.api_url if svc.name == "api" else f"group {s.consumer_group}" if svc.module == "consumers" else ""
        say(f"{svc.name:<9} {'started' if svc_started[svc.name] else 'running'}  {where}".rstrip())
    say(f"state and logs in {s.home}")


def down(s: Settings, say: Callable[[str], None] = print) -> None:
    """Stop, in reverse order, exactly the processes that ``up`` recorded."""
    for name in reversed(order(s)):
        say(f"{name:<9} {'stopped' if _stop(s, name) else 'not running'}")


def _stop(s: Settings, name: str) -> bool:
    if name == "kafka":
        return kafka.stop(s)
    if name == "postgres":
        return postgres.stop(s)
    stopped = process.stop(s.home, name, timeout=20)
    ready_file(s, name).unlink(missing_ok=True)
    return stopped


def status(s: Settings) -> dict[str, int | None]:
    """Pid of each part that runs (None for the ones that do not)."""
    result: dict[str, int | None] = {}
    for name in order(s):
        if name == "postgres":
            pid = postgres._postmaster_pid(s)
            result[name] = pid if pid is not None and process.is_alive(pid, postgres.marker(s)) else None
        else:
            rec = process.running(s.home, name)
            result[name] = rec.pid if rec else None
    return result


def is_up(s: Settings) -> bool:
    return all(pid is not None for pid in status(s).values()) and _http_ok(f"{s.api_url}/api/v1/ready")
