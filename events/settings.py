"""The one settings object: every knob of runlog, read from ``RUNLOG_*`` environment variables.

It lives beside the wire contract because both sides need it (the SDK to find Kafka and the
API, the server to find PostgreSQL) and ``events`` is the only package both sides import.
Defaults match the local stack that ``runlog up`` starts, so nothing needs configuring there.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RUNLOG_", frozen=True, extra="ignore")

    home: Path = Field(default_factory=lambda: Path.home() / ".runlog", description="state directory")
    bootstrap_servers: str = "127.0.0.1:9092"
    kafka_controller_port: int | None = Field(default=None, description="default: Kafka port + 1")
    database_url: str = "postgresql://runlog@127.0.0.1:5432/runlog"
    api_url: str = "http://127.0.0.1:8080"
    api_key: str | None = None
    api_auth_reads: bool = Field(default=False, description="reads need an API key with the read scope too")
    entity: str | None = None
    project: str | None = None
    api_runs_index: int = Field(default=100_000, ge=0, description="runs the API holds in memory (~2.4 KB each) to "
                                "filter and sort runs lists (api/runs_index.py); bigger projects go to SQL; 0: off")

    events_topic: str = "runlog.events"
    dlq_topic: str = "runlog.events.dlq"
    events_partitions: int = 6
    consumer_group: str = "runlog-projections"
    # Two: with history in blocks the consumer's Python, not PostgreSQL, limits ingest, and on
    # this 2-core machine a second consumer took 4 writers from ~447k to ~559k points/s with
    # freshness p99 0.40 s at half load (bench/README.md). More cores, more consumers (at most
    # one per partition; one run's events all go to one partition, so one run uses one).
    consumers: int = Field(default=2, ge=1, le=64, description="projection consumer processes `runlog up` starts, "
                           "in one consumer group (more than events_partitions would leave some idle)")
    kafka_heap: str = "512m"

    # the SDK (producer/)
    sdk_queue_max: int = Field(default=10_000, ge=1, description="events the SDK keeps in memory; the rest wait in the spool")
    sdk_linger_ms: int = Field(default=20, ge=0, description="how long the SDK's Kafka producer waits to fill a batch")
    sdk_fsync_interval: float = Field(default=0.1, gt=0, description="seconds between fsyncs of the SDK's spool")
    heartbeat_interval: float = Field(default=30.0, gt=0, description="seconds between a run's heartbeat events")
    crash_timeout: float = Field(default=300.0, gt=0, description="seconds without any sign of life "
                                 "before the watchdog marks a running run crashed (W&B: about 5 minutes)")
    watchdog_interval: float = Field(default=10.0, gt=0, description="seconds between two watchdog scans")
    notifier_interval: float = Field(default=1.0, gt=0, description="seconds between two scans for alerts to deliver")
    webhook_backoff: float = Field(default=2.0, gt=0, description="first retry delay of a failed webhook; doubles")
    webhook_max_backoff: float = Field(default=300.0, gt=0, description="longest delay between two webhook attempts")
    webhook_timeout: float = Field(default=10.0, gt=0, description="seconds one webhook POST may take")

    @cached_property
    def kafka_host(self) -> str:
        return self.bootstrap_servers.split(",")[0].rsplit(":", 1)[0]

    @cached_property
    def kafka_port(self) -> int:
        return int(self.bootstrap_servers.split(",")[0].rsplit(":", 1)[1])

    @cached_property
    def controller_port(self) -> int:
        return self.kafka_controller_port or self.kafka_port + 1

    @cached_property
    def pg_host(self) -> str:
        return urlsplit(self.database_url).hostname or "127.0.0.1"

    @cached_property
    def pg_port(self) -> int:
        return urlsplit(self.database_url).port or 5432

    @cached_property
    def pg_user(self) -> str:
        return urlsplit(self.database_url).username or "runlog"

    @cached_property
    def pg_database(self) -> str:
        return urlsplit(self.database_url).path.lstrip("/") or "runlog"

    @cached_property
    def api_host(self) -> str:
        return urlsplit(self.api_url).hostname or "127.0.0.1"

    @cached_property
    def api_port(self) -> int:
        return urlsplit(self.api_url).port or 8080


HOME_FLAG = "--runlog-home="


def apply_home_flag(argv: list[str]) -> None:
    """``--runlog-home=PATH`` (the marker ``runlog up`` puts on a service's command line) sets RUNLOG_HOME."""
    for arg in argv:
        if arg.startswith(HOME_FLAG):
            os.environ["RUNLOG_HOME"] = arg[len(HOME_FLAG):]


def tune_service_gc() -> None:
    """For the long-running services only (consumer, watchdog, notifier, API), never the SDK.

    Python's cyclic GC runs a young collection every 700 container allocations; a consumer batch
    allocates hundreds of thousands (rows, dicts) that reference counting frees anyway, and the
    collections cost ~20 % of the consumer's time (isolated apply of 10k events: 74-79k ->
    96-98k points/s with this). Objects alive after start-up are frozen out of every collection.
    """
    import gc

    gc.freeze()
    gc.set_threshold(100_000, 50, 100)


def get_settings() -> Settings:
    """Settings as the environment says now (not cached: tests change the environment)."""
    return Settings()
