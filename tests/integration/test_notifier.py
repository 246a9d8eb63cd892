"""Alerts reach the project's webhooks at least once, retried with backoff, every attempt recorded.

Delivered by the notifier service that the session's stack runs, as in production.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from events import AlertPayload, InitPayload, RunAlert, RunInit, RunRef, Source, utcnow
from events.settings import Settings

from .helpers import eventually_async, send

pytestmark = pytest.mark.integration


class Receiver(BaseHTTPRequestHandler):
    """A webhook endpoint that fails its first ``failures`` requests with 503."""

    failures = 0
    received: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = orjson.loads(self.rfile.read(int(self.headers["content-length"])))
        type(self).received.append(body)
        ok = len(type(self).received) > type(self).failures
        self.send_response(200 if ok else 503)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, type[Receiver]]]:
    handler = type("Handler", (Receiver,), {"failures": 2, "received": []})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", handler
    server.shutdown()
    server.server_close()


async def test_alert_is_retried_until_delivered_and_suppressed_ones_are_not_sent(
        local_stack: Settings, pool: asyncpg.Pool, project: str, receiver: tuple[str, type[Receiver]],
        kafka_producer: AIOKafkaProducer) -> None:
    url, handler = receiver
    hook = await pool.fetchval("INSERT INTO webhooks (entity, project, url, created_at) "
                               "VALUES ('tester', $1, $2, now() - interval '1 hour') RETURNING id", project, url)
    run = RunRef(entity="tester", project=project, run_id="r1")
    src = Source(kind="sdk", writer=uuid.uuid4().hex, rank=0)
    now = utcnow()
    events = [RunInit(run=run, source=src, seq=0, time=now, payload=InitPayload()),
              RunAlert(run=run, source=src, seq=1, time=now, payload=AlertPayload(
                  title="loss diverged", text="NaN at step 7", level="ERROR", wait_duration=600.0)),
              RunAlert(run=run, source=src, seq=2, time=now + timedelta(seconds=5), payload=AlertPayload(
                  title="loss diverged", text="again", level="ERROR", wait_duration=600.0))]
    await send(kafka_producer, local_stack, *events)

    async def two_alerts() -> bool:
        return bool(await pool.fetchval("SELECT count(*) FROM alerts a JOIN runs r ON r.pk = a.run_pk "
                                        "WHERE r.project = $1", project) == 2)

    await eventually_async(two_alerts)

    # The stack's own notifier service delivers (scan every 1 s, retries after 2 s then 4 s).
    async def delivered() -> bool:
        return bool(await pool.fetchval("SELECT bool_or(delivered) FROM alert_deliveries WHERE webhook_id = $1", hook))

    await eventually_async(delivered, timeout=45)
    await asyncio.sleep(1.5)  # nothing more may be sent once delivered
    attempts = await pool.fetch("SELECT attempt, status, delivered FROM alert_deliveries WHERE webhook_id = $1 "
                                "ORDER BY attempt", hook)
    assert [(a["attempt"], a["status"], a["delivered"]) for a in attempts] == [
        (1, 503, False), (2, 503, False), (3, 200, True)]
    assert len(handler.received) == 3
    assert {b["text"] for b in handler.received} == {"NaN at step 7"}  # the suppressed repeat is not sent
    assert handler.received[0]["run"] == f"tester/{project}/r1" and handler.received[0]["level"] == "ERROR"
