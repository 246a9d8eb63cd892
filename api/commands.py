"""Commands: edits of runs written to Kafka as events (source kind ``api``), answered once applied.

Every command is checked first (the run exists, the state move is allowed by
``projections.states``, the key may write to the entity), then written to Kafka through the
process's :class:`api.writer.Writer`, then (read-your-writes) answered once the consumer has
stored the event: the consumer inserts an event into ``event_store`` in the same transaction
as its effect on the read models, so "in the event store" means "applied".

``?wait=true`` (default: up to 10 s), ``?wait=<seconds>`` (at most 60) or ``?wait=false``
(202 at once with a token, the event id, to ask ``GET /api/v1/commands/{event_id}`` about).
A wait that runs out answers 504 ``command_pending``: Kafka has the event, it will be applied,
nothing is lost. A state move that was refused when applied (another writer moved the run
first) answers 409 with the reason from ``state_transitions``.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from typing import Annotated, Any, Literal
from uuid import UUID

import asyncpg
import orjson
from fastapi import FastAPI, HTTPException, Query, Request, Security
from fastapi.security import HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from events import (
    ConfigPayload,
    Event,
    InitPayload,
    RunConfig,
    RunDelete,
    RunInit,
    RunRef,
    RunStateChange,
    RunSummary,
    RunTags,
    RunUndelete,
    RunUpdate,
    StateChangePayload,
    SummaryPayload,
    TagsPayload,
    UpdatePayload,
    untag_nonfinite,
)
from events.settings import Settings
from projections.states import check_move

from . import queries
from .auth import AuthError, authorize
from .filters import parse_filters
from .writer import Writer

PREFIX = "/api/v1"
DEFAULT_WAIT = 10.0
MAX_WAIT = 60.0
MAX_BULK = 10_000
bearer_scheme = HTTPBearer(auto_error=False, description="an API key: rl_<entity>_<secret>")

WaitParam = Annotated[str, Query(
    pattern=r"^(true|false|[0-9]{1,4}(\.[0-9]{1,3})?)$",
    description="true: answer once applied (up to 10 s); false: answer 202 at once with a token; "
                "a number: wait up to that many seconds (at most 60)")]

TagList = Annotated[list[Annotated[str, Field(max_length=64)]], Field(max_length=1000)]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TagEdit(Body):
    add: TagList = []
    remove: TagList = []


class BulkTagEdit(TagEdit):
    run_ids: Annotated[list[Annotated[str, Field(max_length=128)]], Field(max_length=MAX_BULK)] | None = None
    filters: dict[str, Any] | None = Field(default=None, description="W&B-style filter, as for GET runs")


class SummaryEdit(Body):
    set: dict[str, Any] = {}
    remove: Annotated[list[Annotated[str, Field(max_length=256)]], Field(max_length=10_000)] = []


class ConfigEdit(Body):
    values: dict[str, Any]


class RunEdit(Body):
    name: Annotated[str, Field(max_length=10_000)] | None = None
    notes: Annotated[str, Field(max_length=100_000)] | None = None
    tags: TagEdit | None = None
    summary: SummaryEdit | None = None
    config: dict[str, Any] | None = None


class StateEdit(Body):
    state: Literal["pending", "failed"]
    reason: Annotated[str, Field(max_length=10_000)] | None = None


class CreateRun(Body):
    run_id: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^/]+$")] | None = None
    state: Literal["pending"] = "pending"
    name: Annotated[str, Field(max_length=10_000)] | None = None
    group: Annotated[str, Field(max_length=10_000)] | None = None
    job_type: Annotated[str, Field(max_length=10_000)] | None = None
    tags: TagList = []
    notes: Annotated[str, Field(max_length=100_000)] | None = None
    config: dict[str, Any] = {}


def wait_seconds(wait: str) -> float | None:
    if wait == "false":
        return None
    if wait == "true":
        return DEFAULT_WAIT
    return min(float(wait), MAX_WAIT)


def new_run_id() -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(secrets.choice(alphabet) for _ in range(8))


def register(app: FastAPI, settings: Settings, response: Callable[..., Any]) -> None:
    """Add the command routes; ``response(content, status_code=...)`` builds a JSON response."""

    def pool(request: Request) -> asyncpg.Pool:
        return request.state.pool  # type: ignore[no-any-return]

    def writer(request: Request) -> Writer:
        return request.state.writer  # type: ignore[no-any-return]

    async def allow(request: Request, conn: asyncpg.Connection, entity: str) -> None:
        try:
            await authorize(conn, request.headers.get("authorization"), entity, "write")
        except AuthError as exc:
            raise HTTPException(exc.status, str(exc)) from None

    async def current_run(conn: asyncpg.Connection, entity: str, project: str, run_id: str) -> asyncpg.Record:
        row = await conn.fetchrow("SELECT state, deleted FROM runs WHERE entity = $1 AND project = $2 AND run_id = $3",
                                  entity, project, run_id)
        if row is None:
            raise HTTPException(404, f"run {entity}/{project}/{run_id} not found")
        return row

    async def settle(request: Request, events: list[Event], wait: str, *, run: RunRef | None = None,
                     state_events: list[Event] = (), status: int = 200) -> Any:  # type: ignore[assignment]
        """Answer a written command: 202 with a token, or once applied, or 504 when the wait ran out."""
        ids = [e.id for e in events]
        token = str(ids[-1]) if ids else None
        base: dict[str, Any] = {"token": token, "event_ids": [str(i) for i in ids]}
        seconds = wait_seconds(wait)
        if seconds is None:
            return response({**base, "status": "pending",
                             "check": f"{PREFIX}/commands/{token}" if token else None}, status_code=202)
        deadline = time.monotonic() + seconds
        while ids:
            async with pool(request).acquire() as conn:
                found = await conn.fetchval("SELECT count(*) FROM event_store WHERE id = ANY($1::uuid[])", ids)
            if found >= len(set(ids)):
                break
            if time.monotonic() >= deadline:
                return response({**base, "error": "command_pending", "status": "pending",
                                 "message": f"the command was accepted by Kafka but not applied within {seconds:g}s; "
                                            f"it will be applied (nothing is lost): ask {PREFIX}/commands/{token}"},
                                status_code=504)
            await asyncio.sleep(0.02)
        async with pool(request).acquire() as conn:
            for e in state_events:
                row = await conn.fetchrow(
                    "SELECT accepted, reason FROM state_transitions WHERE event_id = $1 ORDER BY id DESC LIMIT 1", e.id)
                if row is not None and not row["accepted"]:
                    return response({**base, "error": "conflict", "status": "refused",
                                     "message": f"state move refused when applied: {row['reason']}"},
                                    status_code=409)
            out = {**base, "status": "applied"}
            if run is not None:
                out["run"] = await queries.run(conn, run.entity, run.project, run.run_id)
        return response(out, status_code=status)

    def ref(entity: str, project: str, run_id: str) -> RunRef:
        try:
            return RunRef(entity=entity, project=project, run_id=run_id)
        except ValueError as exc:
            raise HTTPException(400, f"not a valid run path: {exc}") from None

    def run_events(run: RunRef, source: Any, seq_of: Callable[[str], int], edit: RunEdit) -> list[Event]:
        common = {"run": run, "source": source}
        out: list[Event] = []
        if edit.name is not None or edit.notes is not None:
            out.append(RunUpdate(**common, seq=seq_of(run.path), payload=UpdatePayload(name=edit.name, notes=edit.notes)))
        if edit.tags is not None and (edit.tags.add or edit.tags.remove):
            out.append(RunTags(**common, seq=seq_of(run.path),
                               payload=TagsPayload(add=edit.tags.add, remove=edit.tags.remove)))
        if edit.summary is not None and (edit.summary.set or edit.summary.remove):
            out.append(RunSummary(**common, seq=seq_of(run.path), payload=SummaryPayload(
                set=untag_nonfinite(edit.summary.set), remove=edit.summary.remove)))
        if edit.config:
            out.append(RunConfig(**common, seq=seq_of(run.path),
                                 payload=ConfigPayload(values=untag_nonfinite(edit.config))))
        return out

    async def edit_run(request: Request, entity: str, project: str, run_id: str, edit: RunEdit, wait: str) -> Any:
        run = ref(entity, project, run_id)
        async with pool(request).acquire() as conn:
            await allow(request, conn, entity)
            await current_run(conn, entity, project, run_id)
        w = writer(request)
        events = await w.send(lambda seq_of: run_events(run, w.source(), seq_of, edit))
        return await settle(request, events, wait, run=run)

    auth = [Security(bearer_scheme)]
    run_path = f"{PREFIX}/runs/{{entity}}/{{project}}/{{run_id}}"

    @app.patch(run_path, tags=["commands"], dependencies=auth)
    async def update_run(entity: str, project: str, run_id: str, edit: RunEdit, request: Request,
                         wait: WaitParam = "true") -> Any:
        """Edit a run in one command: name, notes, tag deltas, summary set/remove, config values."""
        return await edit_run(request, entity, project, run_id, edit, wait)

    @app.post(f"{run_path}/tags", tags=["commands"], dependencies=auth)
    async def edit_tags(entity: str, project: str, run_id: str, edit: TagEdit, request: Request,
                        wait: WaitParam = "true") -> Any:
        """Add and remove tags of one run (a delta: concurrent edits from ranks and people commute)."""
        return await edit_run(request, entity, project, run_id, RunEdit(tags=edit), wait)

    @app.patch(f"{run_path}/tags", tags=["commands"], dependencies=auth, include_in_schema=False)
    async def edit_tags_patch(entity: str, project: str, run_id: str, edit: TagEdit, request: Request,
                              wait: WaitParam = "true") -> Any:
        return await edit_run(request, entity, project, run_id, RunEdit(tags=edit), wait)

    @app.patch(f"{run_path}/summary", tags=["commands"], dependencies=auth)
    async def edit_summary(entity: str, project: str, run_id: str, edit: SummaryEdit, request: Request,
                           wait: WaitParam = "true") -> Any:
        """Set and remove summary keys (set keys win over logged values until the next explicit update)."""
        return await edit_run(request, entity, project, run_id, RunEdit(summary=edit), wait)

    @app.patch(f"{run_path}/config", tags=["commands"], dependencies=auth)
    async def edit_config(entity: str, project: str, run_id: str, edit: ConfigEdit, request: Request,
                          wait: WaitParam = "true") -> Any:
        """Merge config values into the run's config."""
        return await edit_run(request, entity, project, run_id, RunEdit(config=edit.values), wait)

    @app.post(f"{run_path}/state", tags=["commands"], dependencies=auth)
    async def update_state(entity: str, project: str, run_id: str, edit: StateEdit, request: Request,
                           wait: WaitParam = "true") -> Any:
        """Move the run to ``pending`` (requeue) or ``failed``; a move the state machine forbids is a 409."""
        run = ref(entity, project, run_id)
        async with pool(request).acquire() as conn:
            await allow(request, conn, entity)
            row = await current_run(conn, entity, project, run_id)
        refused = check_move(row["state"], edit.state)
        if refused:
            raise HTTPException(409, refused)
        w = writer(request)
        events = await w.send(lambda seq_of: [RunStateChange(
            run=run, source=w.source(), seq=seq_of(run.path),
            payload=StateChangePayload(to=edit.state, reason=edit.reason or "update_state via API"))])
        return await settle(request, events, wait, run=run, state_events=events)

    @app.delete(run_path, tags=["commands"], dependencies=auth)
    async def delete_run(entity: str, project: str, run_id: str, request: Request, wait: WaitParam = "true") -> Any:
        """Soft-delete the run (hidden from lists unless include_deleted; undelete brings it back)."""
        return await simple(request, entity, project, run_id, RunDelete, wait)

    @app.post(f"{run_path}/undelete", tags=["commands"], dependencies=auth)
    async def undelete_run(entity: str, project: str, run_id: str, request: Request,
                           wait: WaitParam = "true") -> Any:
        """Undo a soft delete."""
        return await simple(request, entity, project, run_id, RunUndelete, wait)

    async def simple(request: Request, entity: str, project: str, run_id: str, cls: type[Event], wait: str) -> Any:
        run = ref(entity, project, run_id)
        async with pool(request).acquire() as conn:
            await allow(request, conn, entity)
            await current_run(conn, entity, project, run_id)
        w = writer(request)
        events = await w.send(lambda seq_of: [cls(run=run, source=w.source(), seq=seq_of(run.path))])
        return await settle(request, events, wait, run=run)

    @app.post(f"{PREFIX}/runs/{{entity}}/{{project}}", tags=["commands"], dependencies=auth, status_code=201)
    async def create_run(entity: str, project: str, body: CreateRun, request: Request,
                         wait: WaitParam = "true") -> Any:
        """Create a run ahead of scheduling, in state ``pending`` (a run.init with state pending).

        409 if the run exists. An SDK ``init(id=..., resume=...)`` later moves it to running."""
        run_id = body.run_id or new_run_id()
        run = ref(entity, project, run_id)
        async with pool(request).acquire() as conn:
            await allow(request, conn, entity)
            if await queries.run_pk(conn, entity, project, run_id) is not None:
                raise HTTPException(409, f"run {run.path} already exists")
        w = writer(request)
        events = await w.send(lambda seq_of: [RunInit(run=run, source=w.source(), seq=seq_of(run.path), payload=InitPayload(
            name=body.name, group=body.group, job_type=body.job_type, tags=body.tags, notes=body.notes,
            config=untag_nonfinite(body.config), state="pending"))])
        return await settle(request, events, wait, run=run, state_events=events, status=201)

    @app.post(f"{PREFIX}/runs/{{entity}}/{{project}}/tags", tags=["commands"], dependencies=auth)
    async def bulk_tags(entity: str, project: str, edit: BulkTagEdit, request: Request,
                        wait: WaitParam = "true") -> Any:
        """Add and remove tags of many runs: the runs listed in ``run_ids``, or those matching ``filters``."""
        if (edit.run_ids is None) == (edit.filters is None):
            raise HTTPException(400, "give exactly one of run_ids and filters")
        if not edit.add and not edit.remove:
            raise HTTPException(400, "nothing to change: add or remove tags")
        async with pool(request).acquire() as conn:
            await allow(request, conn, entity)
            if edit.run_ids is not None:
                wanted = list(dict.fromkeys(edit.run_ids))
                found = {r["run_id"] for r in await conn.fetch(
                    "SELECT run_id FROM runs WHERE entity = $1 AND project = $2 AND run_id = ANY($3::text[])",
                    entity, project, wanted)}
                missing = [r for r in wanted if r not in found]
                if missing:
                    raise HTTPException(404, f"runs not found in {entity}/{project}: {', '.join(missing[:20])}")
                run_ids = wanted
            else:
                parsed = parse_filters(orjson.dumps(edit.filters).decode())
                where, params = queries._runs_where(entity, project, parsed, include_deleted=False)
                rows = await conn.fetch(f"SELECT run_id FROM runs WHERE {where} ORDER BY pk LIMIT {MAX_BULK + 1}",
                                        *params.values)
                if len(rows) > MAX_BULK:
                    raise HTTPException(400, f"the filter matches more than {MAX_BULK} runs; narrow it")
                run_ids = [r["run_id"] for r in rows]
        refs = [ref(entity, project, r) for r in run_ids]
        w = writer(request)
        events = await w.send(lambda seq_of: [
            RunTags(run=r, source=w.source(), seq=seq_of(r.path), payload=TagsPayload(add=edit.add, remove=edit.remove))
            for r in refs])
        answer = await settle(request, events, wait)
        if answer.status_code == 200:
            body = orjson.loads(answer.body)
            body["runs"] = [r.path for r in refs]
            return response(body)
        return answer

    @app.get(f"{PREFIX}/commands/{{event_id}}", tags=["commands"])
    async def command_status(event_id: UUID, request: Request) -> Any:
        """Whether a command (its token, the event id) is applied yet; for state moves, whether accepted.

        ``pending`` also for an id that was never written (the store cannot tell those apart)."""
        async with pool(request).acquire() as conn:
            row = await conn.fetchrow("SELECT run_path, type, recorded_at FROM event_store WHERE id = $1", event_id)
            if row is None:
                return response({"event_id": str(event_id), "status": "pending"})
            out: dict[str, Any] = {"event_id": str(event_id), "status": "applied", "run": row["run_path"],
                                   "type": row["type"], "recorded_at": row["recorded_at"].isoformat()}
            move = await conn.fetchrow(
                """SELECT from_state, to_state, accepted, reason FROM state_transitions
                   WHERE event_id = $1 ORDER BY id DESC LIMIT 1""", event_id)
        if move is not None:
            out["state_move"] = {"from": move["from_state"], "to": move["to_state"], "accepted": move["accepted"],
                                 "reason": move["reason"]}
        return response(out)
