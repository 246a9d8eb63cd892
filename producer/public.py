"""The public client, mirroring ``wandb.Api``: ``Api().run("entity/project/run_id")``.

Standard library only (``urllib.request``), so the SDK stays light. Non-finite floats arrive
tagged (``{"$f": "NaN"}``) in the API's JSON and are turned back into floats here (and are
tagged again on the way out).

Writes (``run.update()``, ``run.summary.update()``, ``run.delete()``, ``run.update_state()``,
``api.create_run()``) need an API key with the write scope: ``api_key``, else RUNLOG_API_KEY,
else the development key the local API writes to ``$RUNLOG_HOME/api-key``. They return once the
server applied the change (read-your-writes).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from events.values import tag_nonfinite, untag_nonfinite

from .errors import CommError, RunNotFound

__all__ = ["Api", "Run", "Runs", "Project", "CommError", "RunNotFound", "ProjectNotFound", "CommandConflict",
           "CommandPending", "find_api_key"]

FINAL_STATES = ("finished", "failed", "crashed", "killed", "preempted")


class ProjectNotFound(CommError, ValueError):
    """The project does not exist (HTTP 404). A ValueError too, as W&B's ``Could not find project``."""


class CommandConflict(CommError, ValueError):
    """The server refused the command (HTTP 409): a state move the state machine does not allow
    (the message says why), or a run that already exists."""


class CommandPending(CommError):
    """The command was accepted (Kafka has it) but not applied within the wait (HTTP 504).

    It will be applied; ``token`` is the event id to ask ``Api.command_status`` about."""

    def __init__(self, message: str, status: int | None = None, url: str | None = None,
                 token: str | None = None) -> None:
        super().__init__(message, status=status, url=url)
        self.token = token


def find_api_key(settings: Any = None) -> str | None:
    """RUNLOG_API_KEY, else the development key the local API wrote to ``$RUNLOG_HOME/api-key``."""
    if settings is None:
        from events.settings import get_settings

        settings = get_settings()
    if settings.api_key:
        return str(settings.api_key)
    try:
        with open(f"{settings.home}/api-key", encoding="utf-8") as f:
            return f.read().strip() or None
    except OSError:
        return None

API_PREFIX = "/api/v1"
USER_AGENT = "runlog-sdk/0.1"


class Api:
    """Read and edit runs on a runlog server.

    ``base_url`` and ``api_key`` default to RUNLOG_API_URL / RUNLOG_API_KEY (else the file
    ``$RUNLOG_HOME/api-key`` the local API writes); with a key every request carries
    ``Authorization: Bearer <key>``. ``default_entity`` (else RUNLOG_ENTITY, else the OS user, as in ``init``)
    completes paths given as ``project/run_id``."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        default_entity: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        from events.settings import get_settings

        settings = get_settings()
        self.base_url = (base_url or settings.api_url).rstrip("/")
        self.api_key = api_key if api_key is not None else find_api_key(settings)
        self.settings = settings
        # Same default as the SDK's init(): RUNLOG_ENTITY, else the API key's entity, else the OS user.
        from ._run import default_entity as sdk_default_entity

        self.default_entity = default_entity or sdk_default_entity(settings)
        self.timeout = timeout

    def run(self, path: str) -> Run:
        """The run at ``entity/project/run_id`` (or ``project/run_id`` in the default entity).

        Raises RunNotFound (a ValueError) if there is no such run."""
        entity, project, run_id = self._split(path)
        data = self._get_json(_run_url(entity, project, run_id), not_found=f"Could not find run {entity}/{project}/{run_id}")
        return Run(self, data)

    def runs(
        self,
        path: str | None = None,
        filters: Mapping[str, Any] | None = None,
        order: str = "-created_at",
        per_page: int = 50,
        include_deleted: bool = False,
    ) -> Runs:
        """The runs of ``entity/project`` (or ``project`` in the default entity), lazily, page by page.

        ``filters`` in W&B's MongoDB-like form (``{"$and": [{"state": "finished"},
        {"config.lr": {"$lt": 0.01}}]}``), ``order`` a field with ``-``/``+`` for the direction.
        ``len()`` is the number of matching runs. Raises ProjectNotFound (a ValueError) when the
        project has no runs at all, on the first access."""
        entity, project = self._split_project(path)
        if not 1 <= per_page <= 1000:
            raise ValueError("per_page must be between 1 and 1000")
        return Runs(self, entity, project, filters=filters, order=order, per_page=per_page,
                    include_deleted=include_deleted)

    def project(self, name: str, entity: str | None = None) -> Project:
        """The project ``entity/project`` (or ``name`` in ``entity`` / the default entity)."""
        if entity is not None and "/" not in name:
            name = f"{entity}/{name}"
        entity, project = self._split_project(name)
        data = self._get_json(_project_url(entity, project), not_found=f"Could not find project {entity}/{project}",
                              not_found_error=ProjectNotFound)
        return Project(self, data)

    def projects(self, entity: str | None = None, per_page: int = 200) -> list[Project]:
        """Every project of ``entity`` (default: the default entity), by name."""
        entity = entity or self.default_entity
        if not entity:
            raise ValueError("no entity given and no default entity is set (RUNLOG_ENTITY)")
        data = self._get_json(f"{API_PREFIX}/projects/{_quote(entity)}")
        return [Project(self, p) for p in data.get("projects") or []]

    def create_run(self, *, run_id: str | None = None, project: str | None = None, entity: str | None = None,
                   state: str = "pending", **fields: Any) -> Run:
        """Create a run in state ``pending`` (ahead of scheduling); W&B's ``Api.create_run``.

        ``fields``: name, group, job_type, tags, notes, config. Raises CommandConflict if the run exists."""
        if state != "pending":
            raise ValueError(f"a run can only be created in state 'pending', not {state!r}")
        entity = entity or self.default_entity
        project = project or self.settings.project or "uncategorized"
        if not entity:
            raise ValueError("no entity given and no default entity is set (RUNLOG_ENTITY)")
        body = {"state": state, **({"run_id": run_id} if run_id else {}), **fields}
        answer = self._send_json("POST", f"{API_PREFIX}/runs/{_quote(entity)}/{_quote(project)}", body)
        return Run(self, answer["run"])

    def command_status(self, token: str) -> dict[str, Any]:
        """``{"status": "applied" | "pending", ...}`` of a command's token (its event id)."""
        return self._get_json(f"{API_PREFIX}/commands/{_quote(token)}")  # type: ignore[no-any-return]

    # -- HTTP ---------------------------------------------------------------------------------

    def _send_json(self, method: str, path: str, body: Any = None, *, not_found: str | None = None) -> Any:
        """A command: ``method`` with a JSON body; returns the answer once the server applied it."""
        return self._request(method, path, body=body, not_found=not_found)

    def _get_json(self, path: str, params: dict[str, Any] | None = None, *, not_found: str | None = None,
                  not_found_error: type[CommError] = RunNotFound) -> Any:
        return self._request("GET", path, params=params, not_found=not_found, not_found_error=not_found_error)

    def _request(self, method: str, path: str, *, params: dict[str, Any] | None = None, body: Any = None,
                 not_found: str | None = None, not_found_error: type[CommError] = RunNotFound) -> Any:
        """One HTTP exchange with the API: JSON in and out, every failure a CommError (or subclass)."""
        url = self.base_url + path
        query = {k: v for k, v in (params or {}).items() if v is not None}
        if query:
            url += "?" + urllib.parse.urlencode(query)
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        data = None
        if body is not None:
            data = json.dumps(tag_nonfinite(body), allow_nan=False).encode()
            headers["Content-Type"] = "application/json"
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as e:
            payload = _error_body(e)
            message = next((payload[f] for f in ("message", "detail") if isinstance(payload.get(f), str)), None)
            if e.code == 404 and not_found is not None:
                raise not_found_error(f"{not_found}: {message}" if message else not_found, status=404, url=url) from None
            if method != "GET":
                if e.code == 409:
                    raise CommandConflict(message or "conflict", status=409, url=url) from None
                if e.code == 504 and payload.get("token"):
                    raise CommandPending(message or "not applied yet", status=504, url=url,
                                         token=payload.get("token")) from None
                if e.code in (401, 403) and not self.api_key:
                    message = (f"{message or e.reason}; no API key was found (set RUNLOG_API_KEY, pass api_key=, "
                               "or let the local API write $RUNLOG_HOME/api-key)")
            raise CommError(message or e.reason or "request failed", status=e.code, url=url) from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise CommError(f"cannot reach runlog API at {self.base_url}: {reason}", url=url) from None
        try:
            return untag_nonfinite(json.loads(raw))
        except ValueError:
            raise CommError(f"the server answered with something that is not JSON: {raw[:80]!r}", url=url) from None

    def _split_project(self, path: str | None) -> tuple[str, str]:
        entity, project = self._parts(path, "project", "entity/project")
        return entity, project

    def _split(self, path: str) -> tuple[str, str, str]:
        entity, project, run_id = self._parts(path, "run", "entity/project/run_id")
        return entity, project, run_id

    def _parts(self, path: str | None, what: str, form: str) -> list[str]:
        """``path`` cut into the parts ``form`` names; without the entity, the default one."""
        parts = [p for p in (path or "").strip("/").split("/") if p]
        size = form.count("/") + 1
        if what == "run" and len(parts) == 4 and parts[2] == "runs":  # W&B's "entity/project/runs/id" form
            parts = [parts[0], parts[1], parts[3]]
        if len(parts) == size - 1:
            if not self.default_entity:
                raise ValueError(f"{what} path {path!r} has no entity and no default entity is set (RUNLOG_ENTITY)")
            parts = [self.default_entity, *parts]
        if len(parts) != size:
            raise ValueError(f"{what} path must look like '{form}', got {path!r}")
        return parts

    def __repr__(self) -> str:
        return f"<Api {self.base_url}>"


def _quote(part: str) -> str:
    return urllib.parse.quote(part, safe="")


def _run_url(entity: str, project: str, run_id: str) -> str:
    return f"{API_PREFIX}/runs/{_quote(entity)}/{_quote(project)}/{_quote(run_id)}"


def _project_url(entity: str, project: str) -> str:
    return f"{API_PREFIX}/projects/{_quote(entity)}/{_quote(project)}"


class Runs:
    """A lazy, paged sequence of runs (``api.runs(...)``): iterate, index, ``len()``.

    Pages are fetched as they are needed (keyset cursors, so runs created meanwhile neither
    repeat nor shift the pages). ``len()`` is the server's count of matching runs."""

    def __init__(self, api: Api, entity: str, project: str, *, filters: Mapping[str, Any] | None, order: str,
                 per_page: int, include_deleted: bool) -> None:
        self._api = api
        self.entity, self.project = entity, project
        self.filters, self.order, self.per_page = dict(filters or {}), order, per_page
        self.include_deleted = include_deleted
        self._runs: list[Run] = []
        self._cursor: str | None = None
        self._total: int | None = None
        self._done = False

    def _fetch(self) -> None:
        params: dict[str, Any] = {
            "filters": json.dumps(tag_nonfinite(self.filters), allow_nan=False) if self.filters else None,
            "order": self.order, "per_page": self.per_page, "cursor": self._cursor,
            "include_deleted": "true" if self.include_deleted else None,
        }
        page = self._api._get_json(f"{API_PREFIX}/runs/{_quote(self.entity)}/{_quote(self.project)}", params,
                                   not_found=f"Could not find project {self.entity}/{self.project}",
                                   not_found_error=ProjectNotFound)
        self._runs.extend(Run(self._api, r) for r in page.get("runs") or [])
        self._total = page.get("total")
        self._cursor = page.get("next_cursor")
        self._done = not self._cursor

    def __iter__(self) -> Iterator[Run]:
        i = 0
        while True:
            while i < len(self._runs):
                yield self._runs[i]
                i += 1
            if self._done:
                return
            self._fetch()

    def __len__(self) -> int:
        if self._total is None:
            self._fetch()
        return self._total or 0

    def __getitem__(self, index: int) -> Run:
        if index < 0:
            index += len(self)
        while index >= len(self._runs) and not self._done:
            self._fetch()
        return self._runs[index]

    def __repr__(self) -> str:
        return f"<Runs {self.entity}/{self.project}>"


class Project:
    """A project and its overview figures, as ``api.project(...)`` returns it."""

    def __init__(self, api: Api, data: dict[str, Any]) -> None:
        self._api = api
        self._attrs = data
        self.entity: str = data["entity"]
        self.name: str = data.get("name") or data["project"]
        self.path: str = f"{self.entity}/{self.name}"
        self.created_at: str | None = data.get("created_at")
        self.last_active: str | None = data.get("last_active")
        self.total_runs: int = data.get("total_runs") or 0
        self.total_compute: float = data.get("total_compute") or 0.0
        self.runs_by_state: dict[str, int] = dict(data.get("runs_by_state") or {})
        self.contributors: list[str] = list(data.get("contributors") or [])

    def runs(self, filters: Mapping[str, Any] | None = None, order: str = "-created_at",
             per_page: int = 50) -> Runs:
        return self._api.runs(self.path, filters=filters, order=order, per_page=per_page)

    def __repr__(self) -> str:
        return f"<Project {self.path}>"


def _error_body(error: urllib.error.HTTPError) -> dict[str, Any]:
    try:
        body = json.loads(error.read() or b"null")
    except (ValueError, OSError):
        return {}
    return body if isinstance(body, dict) else {}


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON values (NaN equals NaN, 1 is not True)."""
    return json.dumps(tag_nonfinite(a), sort_keys=True) == json.dumps(tag_nonfinite(b), sort_keys=True)


class Summary(dict):  # type: ignore[type-arg]
    """A run's summary: a dict; ``update()`` (with or without new keys) saves the changes made to it.

    ``run.summary["k"] = v; run.summary.update()`` sets k on the server; ``del run.summary["k"]``
    then ``update()`` removes it."""

    def __init__(self, run: Run, data: Mapping[str, Any]) -> None:
        super().__init__(data)
        self._run = run

    def update(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        super().update(*args, **kwargs)
        self._run._save(summary_only=True)


class Run:
    """A run as the server sees it (a snapshot; call :meth:`load` to refresh).

    Edit ``tags`` (a list), ``name``, ``notes``, ``summary`` and ``config`` in place, then
    :meth:`update` sends what changed: tags as a delta against the loaded tags (so a tag added
    meanwhile by the training process survives), summary keys set and removed, config keys
    set. Config keys cannot be removed (a config update only merges)."""

    def __init__(self, api: Api, data: dict[str, Any]) -> None:
        self._api = api
        self._apply(data)

    @classmethod
    def create(cls, api: Api, run_id: str | None = None, project: str | None = None, entity: str | None = None,
               state: str = "pending", **fields: Any) -> Run:
        """Create a pending run (W&B's ``Run.create``); same as ``api.create_run``."""
        return api.create_run(run_id=run_id, project=project, entity=entity, state=state, **fields)

    def _apply(self, data: dict[str, Any]) -> None:
        self._attrs = data
        self.entity: str = data["entity"]
        self.project: str = data["project"]
        self.id: str = data["run_id"]
        self.path: str = data.get("path") or f"{self.entity}/{self.project}/{self.id}"
        self.name: str | None = data.get("name")
        self.state: str | None = data.get("state")
        self.group: str | None = data.get("group")
        self.job_type: str | None = data.get("job_type")
        self.notes: str | None = data.get("notes")
        self.tags: list[str] = list(data.get("tags") or [])
        self.config: dict[str, Any] = dict(data.get("config") or {})
        self.summary: Summary = Summary(self, data.get("summary") or {})
        self.created_at: str | None = data.get("created_at")
        self.updated_at: str | None = data.get("updated_at")
        self.heartbeat_at: str | None = data.get("heartbeat_at")
        self.finished_at: str | None = data.get("finished_at")
        self.exit_code: int | None = data.get("exit_code")
        self.deleted: bool = bool(data.get("deleted", False))
        last = data.get("last_step")
        self.lastHistoryStep: int = -1 if last is None else last  # noqa: N815 - W&B's name
        # W&B's run.metadata: what the SDK recorded about the process at init (host, os, python, ...).
        self.metadata: dict[str, Any] = dict(data.get("host") or {})

    @property
    def url(self) -> str:
        return self._api.base_url + _run_url(self.entity, self.project, self.id)

    def load(self, force: bool = False) -> Run:
        """Fetch the run again and refresh these attributes (edits not yet saved are dropped).

        ``force`` is accepted for W&B compatibility: runlog always fetches."""
        self._apply(self._api._get_json(_run_url(self.entity, self.project, self.id), not_found=f"Could not find run {self.path}"))
        return self

    def _changes(self, summary_only: bool = False) -> dict[str, Any]:
        loaded = self._attrs
        edit: dict[str, Any] = {}
        old_summary = loaded.get("summary") or {}
        set_ = {k: v for k, v in self.summary.items() if k not in old_summary or not _same(old_summary[k], v)}
        remove = [k for k in old_summary if k not in self.summary]
        if set_ or remove:
            edit["summary"] = {"set": set_, "remove": remove}
        if summary_only:
            return edit
        old_tags = list(loaded.get("tags") or [])
        add = [t for t in dict.fromkeys(self.tags) if t not in old_tags]
        drop = [t for t in old_tags if t not in self.tags]
        if add or drop:
            edit["tags"] = {"add": add, "remove": drop}
        if self.name != loaded.get("name") and self.name is not None:
            edit["name"] = self.name
        if self.notes != loaded.get("notes") and self.notes is not None:
            edit["notes"] = self.notes
        old_config = loaded.get("config") or {}
        config = {k: v for k, v in self.config.items() if k not in old_config or not _same(old_config[k], v)}
        if config:
            edit["config"] = config
        return edit

    def _save(self, summary_only: bool = False) -> None:
        edit = self._changes(summary_only)
        if not edit:
            return
        answer = self._api._send_json("PATCH", _run_url(self.entity, self.project, self.id), edit,
                                      not_found=f"Could not find run {self.path}")
        if summary_only:  # keep other unsaved edits; take the server's summary
            self._attrs = {**self._attrs, "summary": answer["run"]["summary"]}
            self.summary = Summary(self, answer["run"]["summary"])
        else:
            self._apply(answer["run"])

    def update(self) -> None:
        """Save the changes made to name, notes, tags, summary and config; returns once applied."""
        self._save()

    def save(self) -> None:
        """Same as :meth:`update`."""
        self._save()

    def delete(self, delete_artifacts: bool = False) -> None:
        """Soft-delete the run (``Api().runs(..., include_deleted=True)`` still lists it)."""
        answer = self._api._send_json("DELETE", _run_url(self.entity, self.project, self.id),
                                      not_found=f"Could not find run {self.path}")
        self._apply(answer["run"])

    def undelete(self) -> None:
        """Undo :meth:`delete`."""
        answer = self._api._send_json("POST", _run_url(self.entity, self.project, self.id) + "/undelete",
                                      not_found=f"Could not find run {self.path}")
        self._apply(answer["run"])

    def update_state(self, state: str, reason: str | None = None) -> bool:
        """Move the run to ``pending`` (requeue) or ``failed``. Raises CommandConflict (HTTP 409) with
        the reason when the state machine does not allow the move from the run's current state."""
        if state not in ("pending", "failed"):
            raise ValueError(f"update_state can move a run to 'pending' or 'failed', not {state!r}")
        body: dict[str, Any] = {"state": state}
        if reason is not None:
            body["reason"] = reason
        answer = self._api._send_json("POST", _run_url(self.entity, self.project, self.id) + "/state", body,
                                      not_found=f"Could not find run {self.path}")
        self._apply(answer["run"])
        return True

    def wait_until_finished(self, timeout: float | None = None, interval: float = 1.0) -> Run:
        """Poll until the run is in a final state (finished, failed, crashed, killed, preempted)."""
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self.load()
            if self.state in FINAL_STATES:
                return self
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"run {self.path} is still {self.state} after {timeout}s")
            time.sleep(interval)

    def scan_history(
        self,
        keys: Iterable[str] | None = None,
        page_size: int = 1000,
        min_step: int = 0,
        max_step: int | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Every history row (``{"_step": n, key: value, ...}``) in step order, fetched page by page.

        ``keys`` limits the columns; ``min_step``/``max_step`` are passed to the server as they are
        (W&B treats ``max_step`` as exclusive)."""
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        if isinstance(keys, str):
            keys = [keys]
        params: dict[str, Any] = {
            "keys": ",".join(keys) if keys else None,
            "page_size": page_size,
            "min_step": min_step,
            "max_step": max_step,
        }
        url = _run_url(self.entity, self.project, self.id) + "/history"
        cursor: str | None = None
        while True:
            page = self._api._get_json(url, {**params, "cursor": cursor}, not_found=f"Could not find run {self.path}")
            yield from page.get("rows") or []
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def _get(self, suffix: str, params: dict[str, Any] | None = None) -> Any:
        return self._api._get_json(_run_url(self.entity, self.project, self.id) + suffix, params,
                                   not_found=f"Could not find run {self.path}")

    def history(
        self,
        samples: int = 500,
        keys: Iterable[str] | None = None,
        x_axis: str = "_step",
        pandas: bool = True,
        stream: str = "default",
    ) -> Any:
        """Sampled history for charts: at most ``samples`` points per key, keeping each bucket's
        lowest and highest value, so peaks (and NaN/inf) survive.

        Rows ``{"_step": s, key: value, ...}`` in step order, plus ``x_axis`` when it is another
        metric. A pandas DataFrame if ``pandas`` and pandas is installed, else a list of dicts.
        ``stream="system"`` (system metrics) is empty: runlog records none."""
        if stream not in ("default", "system"):
            raise ValueError(f"stream must be 'default' or 'system', not {stream!r}")
        if isinstance(keys, str):
            keys = [keys]
        rows: list[dict[str, Any]] = []
        if stream == "default":
            page = self._get("/history/sampled", {"samples": samples, "keys": ",".join(keys) if keys else None,
                                                   "x_axis": x_axis})
            rows = page.get("rows") or []
        if pandas:
            try:
                import pandas as pd  # type: ignore[import-not-found,import-untyped,unused-ignore]
            except ImportError:
                return rows
            return pd.DataFrame.from_records(rows)
        return rows

    @property
    def history_keys(self) -> dict[str, Any]:
        """``{"keys": {key: stats}, "lastStep": n}``: the keys of the run's history."""
        return self._get("/history/keys")  # type: ignore[no-any-return]

    def transitions(self) -> list[dict[str, Any]]:
        """The state-transition audit: ``from``, ``to``, ``at``, ``recorded_at``, ``event_id``,
        ``actor``, ``reason``, ``accepted`` (refused moves included), oldest first."""
        return list(self._get("/transitions").get("transitions") or [])

    def alerts(self) -> list[dict[str, Any]]:
        """Every alert of the run, suppressed ones included (``suppressed``, ``reason``)."""
        return list(self._get("/alerts").get("alerts") or [])

    def events(self, page_size: int = 1000) -> list[dict[str, Any]]:
        """The raw events of the run as stored (the audit trail), in store order."""
        out: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            page = self._get("/events", {"page_size": page_size, "cursor": cursor})
            out.extend(page.get("events") or [])
            cursor = page.get("next_cursor")
            if not cursor:
                return out

    def __repr__(self) -> str:
        return f"<Run {self.path} ({self.state})>"
