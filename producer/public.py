"""The public read client, mirroring ``wandb.Api``: ``Api().run("entity/project/run_id")``.

Standard library only (``urllib.request``), so the SDK stays light. Non-finite floats arrive
tagged (``{"$f": "NaN"}``) in the API's JSON and are turned back into floats here.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from typing import Any

from events.values import untag_nonfinite

from .errors import CommError, RunNotFound

__all__ = ["Api", "Run", "CommError", "RunNotFound"]

API_PREFIX = "/api/v1"
USER_AGENT = "runlog-sdk/0.1"


class Api:
    """Read runs from a runlog server.

    ``base_url`` and ``api_key`` default to RUNLOG_API_URL / RUNLOG_API_KEY; with a key every
    request carries ``Authorization: Bearer <key>``. ``default_entity`` (else RUNLOG_ENTITY, else the OS user, as in ``init``)
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
        self.api_key = api_key if api_key is not None else settings.api_key
        # Same default as the SDK's init(): RUNLOG_ENTITY, else the OS user name.
        from ._run import _user

        self.default_entity = default_entity or settings.entity or _user()
        self.timeout = timeout

    def run(self, path: str) -> Run:
        """The run at ``entity/project/run_id`` (or ``project/run_id`` in the default entity).

        Raises RunNotFound (a ValueError) if there is no such run."""
        entity, project, run_id = self._split(path)
        data = self._get_json(_run_url(entity, project, run_id), not_found=f"Could not find run {entity}/{project}/{run_id}")
        return Run(self, data)

    # -- HTTP ---------------------------------------------------------------------------------

    def _split(self, path: str) -> tuple[str, str, str]:
        parts = [p for p in path.strip("/").split("/") if p]
        if len(parts) == 4 and parts[2] == "runs":  # W&B's "entity/project/runs/id" form
            parts = [parts[0], parts[1], parts[3]]
        if len(parts) == 2:
            if not self.default_entity:
                raise ValueError(f"run path {path!r} has no entity and no default entity is set (RUNLOG_ENTITY)")
            parts = [self.default_entity, *parts]
        if len(parts) != 3:
            raise ValueError(f"run path must look like 'entity/project/run_id', got {path!r}")
        return parts[0], parts[1], parts[2]

    def _get_json(self, path: str, params: dict[str, Any] | None = None, *, not_found: str | None = None) -> Any:
        url = self.base_url + path
        if params:
            query = {k: v for k, v in params.items() if v is not None}
            if query:
                url += "?" + urllib.parse.urlencode(query)
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(url, headers=headers, method="GET")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                body = response.read()
        except urllib.error.HTTPError as e:
            message = _error_message(e)
            if e.code == 404 and not_found is not None:
                raise RunNotFound(f"{not_found}: {message}" if message else not_found, status=404, url=url) from None
            raise CommError(message or e.reason or "request failed", status=e.code, url=url) from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise CommError(f"cannot reach runlog API at {self.base_url}: {reason}", url=url) from None
        try:
            return untag_nonfinite(json.loads(body))
        except ValueError:
            raise CommError(f"the server answered with something that is not JSON: {body[:80]!r}", url=url) from None

    def __repr__(self) -> str:
        return f"<Api {self.base_url}>"


def _run_url(entity: str, project: str, run_id: str) -> str:
    quote = lambda s: urllib.parse.quote(s, safe="")  # noqa: E731
    return f"{API_PREFIX}/runs/{quote(entity)}/{quote(project)}/{quote(run_id)}"


def _error_message(error: urllib.error.HTTPError) -> str | None:
    """The server's JSON ``message`` (or ``detail``) if the error body has one."""
    try:
        body = json.loads(error.read() or b"null")
    except (ValueError, OSError):
        return None
    if isinstance(body, dict):
        for field in ("message", "detail"):
            if isinstance(body.get(field), str):
                return body[field]
    return None


class Run:
    """A run as the server sees it (a snapshot; call :meth:`load` to refresh)."""

    def __init__(self, api: Api, data: dict[str, Any]) -> None:
        self._api = api
        self._apply(data)

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
        self.summary: dict[str, Any] = dict(data.get("summary") or {})
        self.created_at: str | None = data.get("created_at")
        self.updated_at: str | None = data.get("updated_at")
        self.heartbeat_at: str | None = data.get("heartbeat_at")
        self.finished_at: str | None = data.get("finished_at")
        self.exit_code: int | None = data.get("exit_code")
        self.deleted: bool = bool(data.get("deleted", False))
        last = data.get("last_step")
        self.lastHistoryStep: int = -1 if last is None else last  # noqa: N815 - W&B's name

    @property
    def url(self) -> str:
        return self._api.base_url + _run_url(self.entity, self.project, self.id)

    def load(self) -> Run:
        """Fetch the run again and refresh these attributes."""
        self._apply(self._api._get_json(_run_url(self.entity, self.project, self.id), not_found=f"Could not find run {self.path}"))
        return self

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

    def __repr__(self) -> str:
        return f"<Run {self.path} ({self.state})>"
