"""The notifier: delivers alerts to the webhooks configured for their project, at least once.

Every ``notifier_interval`` seconds it asks PostgreSQL which (alert, webhook) pairs are due: the
alert was not suppressed, is not yet delivered there, happened after the webhook was added, and
its last failed attempt is older than the backoff (``webhook_backoff`` doubling per attempt, at
most ``webhook_max_backoff``). Each attempt is an HTTP POST of JSON and is recorded, answer or
not, in ``alert_deliveries``. A crash between a POST and its record means the POST is repeated:
at least once, never at most once, so receivers dedupe by the ``id`` field (the alert's event id).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson

from events.settings import Settings
from projections.db import create_pool

from ._service import serve

log = logging.getLogger("runlog.notifier")

DUE_SQL = """
SELECT a.event_id, a.title, a.text, a.level, a.event_time, r.entity, r.project, r.run_id,
       w.id AS webhook_id, w.url, coalesce(d.attempts, 0) AS attempts
FROM alerts a
JOIN runs r ON r.pk = a.run_pk
JOIN webhooks w ON w.entity = r.entity AND w.project = r.project AND w.active AND a.event_time >= w.created_at
LEFT JOIN LATERAL (
    SELECT count(*) AS attempts, max(attempted_at) AS last_at, bool_or(delivered) AS done
    FROM alert_deliveries d WHERE d.alert_event_id = a.event_id AND d.webhook_id = w.id
) d ON true
WHERE NOT a.suppressed
  AND NOT coalesce(d.done, false)
  AND (coalesce(d.attempts, 0) = 0
       OR d.last_at + make_interval(secs => least($1::float8 * 2 ^ (d.attempts - 1), $2::float8)) <= now())
ORDER BY a.event_time
LIMIT 200
"""


def body(row: asyncpg.Record | dict[str, Any]) -> bytes:
    """The JSON a webhook receives; ``id`` is stable across retries (and replays) for dedupe."""
    return orjson.dumps({
        "id": str(row["event_id"]),
        "run": f"{row['entity']}/{row['project']}/{row['run_id']}",
        "title": row["title"],
        "text": row["text"],
        "level": row["level"],
        "time": row["event_time"].isoformat(),
    })


class Notifier:
    def __init__(self, settings: Settings, ready_file: Path | None = None) -> None:
        self.settings = settings
        self.ready_file = ready_file
        self.pool: asyncpg.Pool | None = None
        self.http: httpx.AsyncClient | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.http = httpx.AsyncClient(timeout=self.settings.webhook_timeout)
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self.http is not None:
            await self.http.aclose()
        if self.pool is not None:
            await self.pool.close()
        if self.ready_file is not None:
            self.ready_file.unlink(missing_ok=True)

    async def _loop(self) -> None:
        while True:
            try:
                if self.pool is None:
                    self.pool = await create_pool(self.settings.database_url, max_size=2)
                await self.deliver_due()
                if self.ready_file is not None and not self.ready_file.exists():
                    self.ready_file.touch()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("cannot scan for alerts to deliver (%r); trying again", exc)
            await asyncio.sleep(self.settings.notifier_interval)

    async def deliver_due(self) -> int:
        """One scan: POST every due (alert, webhook) pair once; return how many were delivered."""
        assert self.pool is not None and self.http is not None
        due = await self.pool.fetch(DUE_SQL, self.settings.webhook_backoff, self.settings.webhook_max_backoff)
        results = await asyncio.gather(*(self._attempt(row) for row in due))
        return sum(results)

    async def _attempt(self, row: asyncpg.Record) -> bool:
        assert self.pool is not None and self.http is not None
        status: int | None = None
        error: str | None = None
        try:
            response = await self.http.post(row["url"], content=body(row),
                                            headers={"content-type": "application/json"})
            status = response.status_code
            if not 200 <= status < 300:
                error = f"HTTP {status}"
        except httpx.HTTPError as exc:
            error = f"{exc.__class__.__name__}: {exc}"[:500]
        delivered = error is None
        await self.pool.execute(
            """INSERT INTO alert_deliveries (alert_event_id, webhook_id, attempt, status, error, delivered)
               VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING""",
            row["event_id"], row["webhook_id"], row["attempts"] + 1, status, error, delivered,
        )
        if not delivered:
            log.warning("webhook %s for alert %s failed (attempt %d): %s", row["url"], row["event_id"],
                        row["attempts"] + 1, error)
        return delivered


if __name__ == "__main__":
    serve("notifier", Notifier)
