"""The HTTP API under ``/api/v1`` (OpenAPI at ``/api/v1/openapi.json``): reads here, commands in ``commands.py``.

The asyncpg pool lives in typed lifespan state. Every error is JSON ``{"error": code,
"message": text}``: 4xx for what the client got wrong, 503 when PostgreSQL is away, and
never a stack trace. Values with NaN or infinities are tagged (``{"$f": "NaN"}``) because
JSON has no literal for them.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypedDict

import asyncpg
import orjson
import pydantic
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from events.errors import EventError
from events.settings import Settings, get_settings
from events.values import tag_nonfinite
from projections.db import create_pool

from . import commands, queries
from .auth import AuthError, authorize, ensure_dev_key
from .filters import FilterError, parse_field, parse_filters, parse_order
from .runs_index import RunsIndex
from .writer import KafkaUnavailable, Writer

log = logging.getLogger("runlog.api")
PREFIX = "/api/v1"


FiltersParam = Annotated[str | None, Query(
    description='JSON filter in W&B\'s MongoDB-like form, e.g. {"$and": [{"state": "finished"}, '
                '{"config.lr": {"$lt": 0.01}}]}', max_length=100_000)]


class State(TypedDict):
    pool: asyncpg.Pool
    writer: Writer
    runs_index: RunsIndex


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(tag_nonfinite(content))


class ReadyJSONResponse(Response):
    """Content whose floats are all finite already (history rows built by ``queries.json_value``):
    rendered without the tag walk, which cost more than the encoding on a scan."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[State]:
        pool = await create_pool(settings.database_url)
        writer = Writer(settings)
        try:
            try:
                async with pool.acquire() as conn:
                    await ensure_dev_key(conn, settings)
            except (OSError, asyncpg.PostgresError) as exc:  # not migrated yet, or no database: reads say so
                log.warning("could not ensure the development API key: %r", exc)
            index = RunsIndex(queries.LIST_COLUMNS, queries.run_dict, max_runs=settings.api_runs_index)
            # What startup made (modules, classes, the app) lives as long as the process: frozen
            # out of the collector, a full collection no longer walks it (15.7 ms a time here).
            gc.collect()
            gc.freeze()
            yield {"pool": pool, "writer": writer, "runs_index": index}
        finally:
            await writer.close()
            await pool.close()

    async def read_auth(request: Request) -> None:
        """With RUNLOG_API_AUTH_READS=true, reads of an entity need a key with the read scope."""
        if not settings.api_auth_reads or request.method not in ("GET", "HEAD"):
            return
        entity = request.path_params.get("entity")
        if entity is None and not request.url.path.startswith(f"{PREFIX}/commands/"):
            return  # health, ready, the OpenAPI document
        async with request.state.pool.acquire() as conn:
            try:
                if entity is None:  # a command token: any live key
                    from .auth import bearer, lookup
                    text = bearer(request.headers.get("authorization"))
                    if text is None or await lookup(conn, text[:500]) is None:
                        raise AuthError(401, "an API key is needed")
                else:
                    await authorize(conn, request.headers.get("authorization"), entity, "read")
            except AuthError as exc:
                raise HTTPException(exc.status, str(exc)) from None

    app = FastAPI(
        title="runlog", version="1", lifespan=lifespan, default_response_class=JSONResponse,
        openapi_url=f"{PREFIX}/openapi.json", docs_url=f"{PREFIX}/docs", redoc_url=None,
        dependencies=[Depends(read_auth)],
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

    @app.exception_handler(pydantic.ValidationError)
    async def invalid_event(request: Request, exc: pydantic.ValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors(include_url=False)
        )
        return error(422, "invalid_request", problems[:2000])

    @app.exception_handler(EventError)
    async def invalid_event_value(request: Request, exc: EventError) -> JSONResponse:
        return error(422, "invalid_request", str(exc)[:2000])

    @app.exception_handler(KafkaUnavailable)
    async def kafka_away(request: Request, exc: KafkaUnavailable) -> JSONResponse:
        log.warning("kafka unavailable: %s", exc)
        return error(503, "unavailable", f"the command was not accepted: {exc}; try again shortly")

    @app.exception_handler(FilterError)
    async def bad_filter(request: Request, exc: FilterError) -> JSONResponse:
        return error(400, "bad_request", str(exc))

    @app.exception_handler(asyncpg.DataError)
    async def bad_value(request: Request, exc: asyncpg.DataError) -> JSONResponse:
        # A value PostgreSQL refused: an invalid regular expression, a number out of range...
        return error(400, "bad_request", f"a value in the request was refused: {exc}")

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

    @app.get(f"{PREFIX}/projects/{{entity}}", tags=["projects"])
    async def list_projects(entity: str, request: Request) -> Any:
        """The entity's projects with their overview figures (empty list if it has none)."""
        async with pool(request).acquire() as conn:
            found = await queries.projects(conn, entity)
        return JSONResponse({"projects": found})

    @app.get(f"{PREFIX}/projects/{{entity}}/{{project}}", tags=["projects"])
    async def get_project(entity: str, project: str, request: Request) -> Any:
        """One project: created_at, last_active, total_runs, total_compute, runs_by_state, contributors."""
        async with pool(request).acquire() as conn:
            found = await queries.project(conn, entity, project)
        if found is None:
            raise HTTPException(404, f"project {entity}/{project} not found")
        return JSONResponse(found)

    async def require_project(conn: asyncpg.Connection, entity: str, project: str) -> None:
        if not await queries.project_exists(conn, entity, project):
            raise HTTPException(404, f"project {entity}/{project} not found")

    async def run_or_404(conn: asyncpg.Connection, entity: str, project: str, run_id: str) -> dict[str, Any]:
        run = await queries.run(conn, entity, project, run_id)
        if run is None:
            raise HTTPException(404, f"run {entity}/{project}/{run_id} not found")
        return run

    async def run_pk_or_404(conn: asyncpg.Connection, entity: str, project: str, run_id: str) -> int:
        pk = await queries.run_pk(conn, entity, project, run_id)
        if pk is None:
            raise HTTPException(404, f"run {entity}/{project}/{run_id} not found")
        return pk

    @app.get(f"{PREFIX}/runs/{{entity}}/{{project}}", tags=["runs"])
    async def list_runs(
        entity: str, project: str, request: Request,
        filters: FiltersParam = None,
        order: Annotated[str, Query(description="field to sort by, '-' for descending", max_length=600)] = "-created_at",
        per_page: Annotated[int, Query(ge=1, le=1000)] = 50,
        cursor: Annotated[str | None, Query(description="next_cursor of the previous page", max_length=4000)] = None,
        include_deleted: bool = False,
    ) -> Any:
        """Runs of a project, filtered, sorted and paged by a keyset cursor: ``{runs, next_cursor, total}``."""
        parsed, sort = parse_filters(filters), parse_order(order)
        async with pool(request).acquire() as conn:
            page = await queries.runs_page(conn, entity, project, filters=parsed, sort=sort, per_page=per_page,
                                           cursor=cursor, include_deleted=include_deleted,
                                           index=request.state.runs_index)
            if not page["runs"]:  # a project with runs needs no check of its own
                await require_project(conn, entity, project)
        return ReadyJSONResponse(page)

    @app.get(f"{PREFIX}/runs/{{entity}}/{{project}}/groups", tags=["runs"])
    async def group_runs(
        entity: str, project: str, request: Request,
        by: Annotated[str, Query(description="field to group by: state, group, job_type, tags, config.x, ...",
                                 max_length=600)],
        filters: FiltersParam = None,
        limit: Annotated[int, Query(ge=1, le=1000, description="most groups returned, largest first")] = 100,
        include_deleted: bool = False,
    ) -> Any:
        """Runs grouped by a field: per value the count and min/mean/max of the numeric summary keys."""
        field, parsed = parse_field(by), parse_filters(filters)
        async with pool(request).acquire() as conn:
            await require_project(conn, entity, project)
            groups = await queries.run_groups(conn, entity, project, by=field, filters=parsed,
                                              include_deleted=include_deleted, limit=limit)
        return JSONResponse({"by": by, "groups": groups})


    @app.get(f"{PREFIX}/runs/{{entity}}/{{project}}/{{run_id}}", tags=["runs"])
    async def get_run(entity: str, project: str, run_id: str, request: Request) -> Any:
        """One run: state, config, tags, summary and times."""
        async with pool(request).acquire() as conn:
            return JSONResponse(await run_or_404(conn, entity, project, run_id))

    @app.get(f"{PREFIX}/runs/{{entity}}/{{project}}/{{run_id}}/summary", tags=["runs"])
    async def get_summary(entity: str, project: str, run_id: str, request: Request) -> Any:
        """The run's summary (NaN and infinities tagged)."""
        async with pool(request).acquire() as conn:
            return JSONResponse((await run_or_404(conn, entity, project, run_id))["summary"])

    @app.get(f"{PREFIX}/runs/{{entity}}/{{project}}/{{run_id}}/transitions", tags=["runs"])
    async def get_transitions(entity: str, project: str, run_id: str, request: Request) -> Any:
        """The state-transition audit: accepted and refused moves, oldest first."""
        async with pool(request).acquire() as conn:
            found = await queries.transitions(conn, await run_pk_or_404(conn, entity, project, run_id))
        return JSONResponse({"transitions": found})

    @app.get(f"{PREFIX}/runs/{{entity}}/{{project}}/{{run_id}}/alerts", tags=["runs"])
    async def get_alerts(entity: str, project: str, run_id: str, request: Request) -> Any:
        """Every alert of the run, suppressed ones included (with the reason), oldest first."""
        async with pool(request).acquire() as conn:
            found = await queries.alerts(conn, await run_pk_or_404(conn, entity, project, run_id))
        return JSONResponse({"alerts": found})

    @app.get(f"{PREFIX}/runs/{{entity}}/{{project}}/{{run_id}}/events", tags=["runs"])
    async def get_events(
        entity: str, project: str, run_id: str, request: Request,
        page_size: Annotated[int, Query(ge=1, le=10_000)] = 1000,
        cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
    ) -> Any:
        """The raw events of the run as stored (the audit), in store order, paged."""
        after = _position_cursor(cursor, 0)
        async with pool(request).acquire() as conn:
            await run_pk_or_404(conn, entity, project, run_id)
            found, next_pos = await queries.events_page(conn, f"{entity}/{project}/{run_id}", after, page_size)
        return JSONResponse({"events": found, "next_cursor": None if next_pos is None else str(next_pos)})

    @app.get(f"{PREFIX}/runs/{{entity}}/{{project}}/{{run_id}}/history/keys", tags=["runs"])
    async def get_history_keys(entity: str, project: str, run_id: str, request: Request) -> Any:
        """The keys of the run's history, with per-key stats where the run has them, and the last step."""
        async with pool(request).acquire() as conn:
            row = await conn.fetchrow(
                "SELECT pk, stats, last_step FROM runs WHERE entity = $1 AND project = $2 AND run_id = $3",
                entity, project, run_id)
            if row is None:
                raise HTTPException(404, f"run {entity}/{project}/{run_id} not found")
            keys = await queries.history_keys(conn, row["pk"])
        stats = row["stats"] or {}
        return JSONResponse({"keys": {k: stats.get(k, {}) for k in keys}, "lastStep": row["last_step"]})

    @app.get(f"{PREFIX}/runs/{{entity}}/{{project}}/{{run_id}}/history/sampled", tags=["runs"])
    async def sampled_history(
        entity: str, project: str, run_id: str, request: Request,
        samples: Annotated[int, Query(ge=2, le=100_000, description="most points per key")] = 500,
        keys: Annotated[str | None, Query(description="comma-separated metric keys; all when absent")] = None,
        x_axis: Annotated[str, Query(min_length=1, max_length=256, description="_step or any logged metric")] = "_step",
    ) -> Any:
        """At most ``samples`` points per key that keep each bucket's lowest and highest value (peaks survive).

        Rows ``{"_step": s, key: value, ...}`` in step order; with another ``x_axis`` each row also
        holds that metric's value at the same step (steps without it are left out)."""
        wanted = [k for k in keys.split(",") if k] if keys else None
        async with pool(request).acquire() as conn:
            pk = await run_pk_or_404(conn, entity, project, run_id)
            if wanted is None or x_axis != "_step":
                present = await queries.history_keys(conn, pk)
                if x_axis != "_step" and x_axis not in present:
                    raise HTTPException(400, f"x_axis {x_axis[:80]!r} is not a metric of this run")
                if wanted is None:
                    wanted = [k for k in present if k != x_axis]
            rows = await queries.history_sampled(conn, pk, wanted, samples, x_axis)
        return ReadyJSONResponse({"rows": rows, "samples": samples, "x_axis": x_axis})

    @app.get(f"{PREFIX}/runs/{{entity}}/{{project}}/{{run_id}}/history", tags=["runs"])
    async def scan_history(
        entity: str, project: str, run_id: str, request: Request,
        keys: Annotated[str | None, Query(description="comma-separated metric keys; all when absent")] = None,
        min_step: Annotated[int, Query(ge=0)] = 0,
        max_step: Annotated[int | None, Query(ge=0)] = None,
        page_size: Annotated[int, Query(ge=1, le=10_000)] = 1000,
        cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
    ) -> Any:
        """Full history in step order, one row per step, paged by a cursor.

        With ``Accept: application/x-ndjson`` the whole range (``min_step``..``max_step``) is
        streamed instead, one JSON row per line; ``page_size`` and ``cursor`` are ignored."""
        start = max(min_step, _position_cursor(cursor, min_step))
        wanted = [k for k in keys.split(",") if k] if keys else None
        stream = "application/x-ndjson" in request.headers.get("accept", "")
        async with pool(request).acquire() as conn:
            pk = await run_pk_or_404(conn, entity, project, run_id)
            if not stream:
                rows, next_step = await queries.history_json(conn, pk, wanted, start, max_step, page_size)
        if stream:
            return StreamingResponse(_stream_history(pool(request), pk, wanted, start, max_step),
                                     media_type="application/x-ndjson")
        return ReadyJSONResponse({"rows": rows, "next_cursor": None if next_step is None else str(next_step)})

    commands.register(app, settings, JSONResponse)
    return app


def _position_cursor(cursor: str | None, default: int) -> int:
    """A step or store position handed out as ``next_cursor``; anything else is a 400."""
    if cursor is None:
        return default
    if not cursor.isdigit() or len(cursor) > 18:  # 18 digits always fit a bigint
        raise HTTPException(400, "cursor must be the next_cursor of a previous page")
    return int(cursor)


async def _stream_history(pool: asyncpg.Pool, pk: int, keys: list[str] | None, start: int,
                          max_step: int | None) -> AsyncIterator[bytes]:
    """History rows as NDJSON, fetched in large pages so memory stays bounded."""
    while True:
        async with pool.acquire() as conn:
            lines, next_step = await queries.history_ndjson(conn, pk, keys, start, max_step, 10_000)
        if lines:
            yield lines
        if next_step is None:
            return
        start = next_step
