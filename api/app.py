"""The read API: HTTP JSON under ``/api/v1`` with an OpenAPI document at ``/api/v1/openapi.json``.

The asyncpg pool lives in typed lifespan state. Every error is JSON ``{"error": code,
"message": text}``: 4xx for what the client got wrong, 503 when PostgreSQL is away, and
never a stack trace. Values with NaN or infinities are tagged (``{"$f": "NaN"}``) because
JSON has no literal for them.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypedDict

import asyncpg
import orjson
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from events.settings import Settings, get_settings
from events.values import tag_nonfinite
from projections.db import create_pool

from . import queries

log = logging.getLogger("runlog.api")
PREFIX = "/api/v1"


class State(TypedDict):
    pool: asyncpg.Pool


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(tag_nonfinite(content))


def error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[State]:
        pool = await create_pool(settings.database_url)
        try:
            yield {"pool": pool}
        finally:
            await pool.close()

    app = FastAPI(
        title="runlog", version="1", lifespan=lifespan, default_response_class=JSONResponse,
        openapi_url=f"{PREFIX}/openapi.json", docs_url=f"{PREFIX}/docs", redoc_url=None,
    )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                405: "method_not_allowed", 409: "conflict"}.get(exc.status_code, "error")
        return error(exc.status_code, code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        return error(422, "invalid_request", problems)

    @app.exception_handler(asyncpg.PostgresConnectionError)
    @app.exception_handler(ConnectionError)
    @app.exception_handler(OSError)
    async def database_away(request: Request, exc: Exception) -> JSONResponse:
        log.warning("database unavailable: %r", exc)
        return error(503, "unavailable", "the database is not reachable; try again shortly")

    def pool(request: Request) -> asyncpg.Pool:
        return request.state.pool  # type: ignore[no-any-return]

    @app.get(f"{PREFIX}/health", tags=["meta"])
    async def health() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get(f"{PREFIX}/ready", tags=["meta"])
    async def ready(request: Request) -> Any:
        """The process can reach PostgreSQL and the schema is migrated."""
        try:
            async with pool(request).acquire() as conn:
                await conn.fetchval("SELECT count(*) FROM schema_migrations")
        except (OSError, asyncpg.PostgresError) as exc:
            return error(503, "not_ready", f"database not ready: {exc.__class__.__name__}")
        return {"status": "ready"}

    @app.get(f"{PREFIX}/runs/{{entity}}/{{project}}/{{run_id}}", tags=["runs"])
    async def get_run(entity: str, project: str, run_id: str, request: Request) -> Any:
        """One run: state, config, tags, summary and times."""
        async with pool(request).acquire() as conn:
            run = await queries.run(conn, entity, project, run_id)
        if run is None:
            raise HTTPException(404, f"run {entity}/{project}/{run_id} not found")
        return JSONResponse(run)

    @app.get(f"{PREFIX}/runs/{{entity}}/{{project}}/{{run_id}}/history", tags=["runs"])
    async def scan_history(
        entity: str, project: str, run_id: str, request: Request,
        keys: Annotated[str | None, Query(description="comma-separated metric keys; all when absent")] = None,
        min_step: Annotated[int, Query(ge=0)] = 0,
        max_step: Annotated[int | None, Query(ge=0)] = None,
        page_size: Annotated[int, Query(ge=1, le=10_000)] = 1000,
        cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
    ) -> Any:
        """Full history in step order, one row per step, paged by a cursor."""
        start = min_step
        if cursor is not None:
            if not cursor.isdigit():
                raise HTTPException(400, "cursor must be the next_cursor of a previous page")
            start = max(start, int(cursor))
        wanted = [k for k in keys.split(",") if k] if keys else None
        async with pool(request).acquire() as conn:
            pk = await queries.run_pk(conn, entity, project, run_id)
            if pk is None:
                raise HTTPException(404, f"run {entity}/{project}/{run_id} not found")
            rows, next_step = await queries.history_page(conn, pk, wanted, start, max_step, page_size)
        return JSONResponse({"rows": rows, "next_cursor": None if next_step is None else str(next_step)})

    return app
