"""Kafka stops in the middle of training: log() keeps going, and every event arrives afterwards.

A private single-node Kafka (deploy/kafka.py, own ports and state dir) is stopped and restarted
under a logging SDK, so the shared session stack is not disturbed.
"""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

import producer
from deploy import kafka
from events import decode
from events.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def read_all(s: Settings) -> list:
    consumer = AIOKafkaConsumer(bootstrap_servers=s.bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = [TopicPartition(s.events_topic, p) for p in range(s.events_partitions)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        events = []
        while any([await consumer.position(tp) < end for tp, end in ends.items()]):
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                events += [decode(r.value) for r in records]
        return events
    finally:
        await consumer.stop()


def test_logging_through_a_kafka_outage_loses_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      record_property) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    env = {"RUNLOG_HOME": str(tmp_path / "home"), "RUNLOG_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}",
           "RUNLOG_KAFKA_CONTROLLER_PORT": str(free_port()), "RUNLOG_EVENTS_PARTITIONS": "2"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    s = Settings()
    kafka.start(s)
    try:
        kafka.wait_ready(s)
        run = producer.init(project="outage", id="kafka-down")
        latencies: list[float] = []

        def log_for(seconds: float) -> None:
            until = time.monotonic() + seconds
            step = 0
            while time.monotonic() < until:
                t0 = time.perf_counter()
                run.log({"loss": 1.0 / (len(latencies) + 1), "x": float(step)})
                latencies.append(time.perf_counter() - t0)
                step += 1
                time.sleep(0.0005)

        log_for(1.0)
        kafka.stop(s)  # the broker goes away mid-training
        log_for(3.0)
        kafka.start(s)  # and comes back
        kafka.wait_ready(s)
        log_for(1.0)
        run.finish(timeout=120, quiet=True)
        status = run.status()
        events = asyncio.run(read_all(s))
    finally:
        kafka.stop(s)

    mine = [e for e in events if e.source.writer == run.writer_id]
    seqs = sorted({seq for e in mine for seq in range(e.seq, e.last_seq + 1)})  # a packed log: one seq a row
    assert status.spooled_unsent == 0
    assert seqs == list(range(status.written))  # nothing lost; resends (same ids) are the consumer's to drop
    assert len({(e.seq, e.last_seq) for e in mine if e.type == "run.log"}) <= len(latencies)
    latencies.sort()
    worst, p99 = latencies[-1] * 1e6, latencies[int(len(latencies) * 0.99)] * 1e6
    record_property("log_calls", len(latencies))
    record_property("log_p99_us", round(p99, 1))
    record_property("log_worst_us", round(worst, 1))
    print(f"\n{len(latencies)} log() calls through a Kafka outage: p99 {p99:.0f} us, worst {worst:.0f} us")
