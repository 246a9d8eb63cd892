"""The read API and the public client against the real stack: SDK -> Kafka -> consumer -> PostgreSQL -> API.

The API under test runs in this process (a uvicorn server on a free port, on the test stack's
database), so these tests exercise the code of this checkout even when a stack started by an
earlier session, with an older API process, is reused.
"""

from __future__ import annotations

import asyncio
import json
import math
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest
import uvicorn
from aiokafka import AIOKafkaProducer
from hypothesis import given, settings
from hypothesis import strategies as st

import producer
from api.app import create_app
from events import RunDelete, RunRef, RunStateChange, Source, StateChangePayload
from events.ids import new_writer_id
from events.settings import Settings
from events.values import tag_nonfinite, untag_nonfinite
from producer.public import ProjectNotFound, RunNotFound

from ..unit.test_api_filters import trees
from .helpers import eventually, send

pytestmark = pytest.mark.integration
ENTITY = "tester"
MALICIOUS = "x'; drop table runs; --"


@pytest.fixture(scope="module")
def api_url(local_stack: Settings) -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(create_app(local_stack), host="127.0.0.1", port=port, log_level="warning",
                            access_log=False, ws="none", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    eventually(lambda: get(url, "/api/v1/ready")[0] == 200, timeout=20)
    yield url
    server.should_exit = True
    thread.join(timeout=10)


def get(base: str, path: str, params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None) -> tuple[int, Any]:
    url = base + path
    if params:
        url += "?" + urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            body, status, ctype = response.read(), response.status, response.headers.get("content-type", "")
    except urllib.error.HTTPError as e:
        body, status, ctype = e.read(), e.code, e.headers.get("content-type", "")
    assert status < 500, (status, body[:300])
    if "ndjson" in ctype:
        return status, [untag_nonfinite(json.loads(line)) for line in body.splitlines()]
    return status, untag_nonfinite(json.loads(body))


def send_events(settings: Settings, events: list) -> None:
    async def go() -> None:
        kafka = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all")
        await kafka.start()
        try:
            await send(kafka, settings, *events)
        finally:
            await kafka.stop()

    asyncio.run(go())


def api_event(cls: type, project: str, run_id: str, **kw: Any) -> Any:
    return cls(run=RunRef(entity=ENTITY, project=project, run_id=run_id),
               source=Source(kind="api", writer=new_writer_id()), seq=0, **kw)


def make_run(project: str, run_id: str, *, losses: list[float], exit_code: int = 0, **init: Any) -> str:
    run = producer.init(project=project, id=run_id, **init)
    for loss in losses:
        run.log({"loss": loss, "acc": 1 - loss})
    run.finish(exit_code=exit_code)
    return run.path


@pytest.fixture(scope="module")
def dataset(local_stack: Settings, api_url: str) -> dict[str, Any]:
    """One project: alpha (finished), beta (finished), gamma (failed), delta (deleted)."""
    project = f"t-reads-{time.time_ns() % 10**10}"
    make_run(project, "alpha", name="alpha-1", group="g1", job_type="train", tags=["a", "keep"],
             config={"lr": 0.1, "opt": {"name": "adam"}, "layers": 2}, losses=[0.9, 0.5])
    time.sleep(0.01)
    make_run(project, "beta", name="beta-2", group="g1", job_type="eval", tags=["b"],
             config={"lr": 0.01, "opt": {"name": "sgd"}, "layers": 4}, losses=[0.4, 0.2])
    time.sleep(0.01)
    make_run(project, "gamma", name="gamma-3", group="g2", job_type="train", tags=[],
             config={"lr": 0.001, "opt": {"name": "adam"}, "layers": "deep"}, losses=[0.9], exit_code=1)
    time.sleep(0.01)
    make_run(project, "delta", name="delta-4", group="g2", job_type="train", tags=["a"],
             config={"lr": 0.5}, losses=[0.1])
    send_events(local_stack, [api_event(RunDelete, project, "delta")])

    def settled() -> bool:
        status, page = get(api_url, f"/api/v1/runs/{ENTITY}/{project}", {"include_deleted": "true"})
        if status != 200:
            return False
        runs = {r["run_id"]: r for r in page["runs"]}
        return (len(runs) == 4 and runs["delta"]["deleted"] and runs["gamma"]["state"] == "failed"
                and all(r["state"] in ("finished", "failed") for r in runs.values()))

    eventually(settled, timeout=60)
    return {"project": project, "api": producer.Api(base_url=api_url)}


def run_ids(api_url: str, project: str, filters: Any = None, **params: Any) -> list[str]:
    status, page = get(api_url, f"/api/v1/runs/{ENTITY}/{project}",
                       {"filters": None if filters is None else json.dumps(filters), **params})
    assert status == 200, page
    return [r["run_id"] for r in page["runs"]]


# -- projects ------------------------------------------------------------------------------------


def test_projects_of_an_entity_and_one_project(dataset: dict[str, Any], api_url: str) -> None:
    api, project = dataset["api"], dataset["project"]
    one = api.project(f"{ENTITY}/{project}")
    assert one.total_runs == 3  # the deleted run is not counted
    assert one.runs_by_state == {"finished": 2, "failed": 1}
    assert one.created_at and one.last_active and one.total_compute >= 0
    assert isinstance(one.contributors, list)
    assert project in [p.name for p in api.projects(ENTITY)]
    assert api.project(project).path == f"{ENTITY}/{project}"  # the default entity
    assert len(one.runs()) == 3

    with pytest.raises(ProjectNotFound):
        api.project(f"{ENTITY}/no-such-project")
    assert get(api_url, "/api/v1/projects/nobody-at-all")[1] == {"projects": []}
    status, body = get(api_url, f"/api/v1/projects/{ENTITY}/no-such-project")
    assert status == 404 and body["error"] == "not_found"


# -- runs: filters, order, paging ------------------------------------------------------------------


@pytest.mark.parametrize(("filters", "expected"), [
    (None, ["gamma", "beta", "alpha"]),
    ({"state": "finished"}, ["beta", "alpha"]),
    ({"state": {"$eq": "failed"}}, ["gamma"]),
    ({"state": {"$ne": "failed"}}, ["beta", "alpha"]),
    ({"display_name": {"$regex": "^(alpha|gamma)"}}, ["gamma", "alpha"]),
    ({"display_name": {"$in": ["beta-2", "nope"]}}, ["beta"]),
    ({"display_name": {"$nin": ["beta-2"]}}, ["gamma", "alpha"]),
    ({"group": "g1"}, ["beta", "alpha"]),
    ({"job_type": {"$gte": "train"}}, ["gamma", "alpha"]),
    ({"job_type": {"$lt": "train"}}, ["beta"]),
    ({"tags": "a"}, ["alpha"]),
    ({"tags": {"$in": ["b", "keep"]}}, ["beta", "alpha"]),
    ({"tags": {"$nin": ["a", "b"]}}, ["gamma"]),
    ({"tags": {"$ne": "a"}}, ["gamma", "beta"]),
    ({"config.lr": 0.01}, ["beta"]),
    ({"config.lr": {"$lt": 0.05}}, ["gamma", "beta"]),
    ({"config.lr": {"$lte": 0.01}}, ["gamma", "beta"]),
    ({"config.lr": {"$gt": 0.01}}, ["alpha"]),
    ({"config.lr": {"$gte": 0.01}}, ["beta", "alpha"]),
    ({"config.lr": {"$in": [0.1, 0.001]}}, ["gamma", "alpha"]),
    ({"config.lr": {"$nin": [0.1, 0.001]}}, ["beta"]),
    ({"config.opt.name": "adam"}, ["gamma", "alpha"]),
    ({"config.opt.name": {"$regex": "^s"}}, ["beta"]),
    ({"config.layers": {"$gt": 1}}, ["beta", "alpha"]),  # the string "deep" is not a number
    ({"config.layers": "deep"}, ["gamma"]),
    ({"config.missing": None}, ["gamma", "beta", "alpha"]),
    ({"config.opt": {"$exists": True}}, ["gamma", "beta", "alpha"]),
    ({"summary_metrics.loss": {"$lt": 0.6}}, ["beta", "alpha"]),
    ({"summary_metrics.loss": {"$gte": 0.9}}, ["gamma"]),
    ({"created_at": {"$gt": "2000-01-01T00:00:00Z"}}, ["gamma", "beta", "alpha"]),
    ({"created_at": {"$lt": "2000-01-01T00:00:00"}}, []),
    ({"$and": [{"state": "finished"}, {"config.lr": {"$lt": 0.05}}]}, ["beta"]),
    ({"$or": [{"state": "failed"}, {"tags": "keep"}]}, ["gamma", "alpha"]),
    ({"$or": [{"$and": [{"group": "g1"}, {"job_type": "eval"}]}, {"config.layers": "deep"}]}, ["gamma", "beta"]),
    ({"state": "finished", "group": "g1", "tags": {"$in": ["keep"]}}, ["alpha"]),
    ({f"config.{MALICIOUS}": 1}, []),
])
def test_runs_filters(dataset: dict[str, Any], api_url: str, filters: Any, expected: list[str]) -> None:
    assert run_ids(api_url, dataset["project"], filters) == expected


def test_runs_order_and_deleted(dataset: dict[str, Any], api_url: str) -> None:
    project = dataset["project"]
    assert run_ids(api_url, project, order="+created_at") == ["alpha", "beta", "gamma"]
    assert run_ids(api_url, project, order="created_at") == ["alpha", "beta", "gamma"]
    assert run_ids(api_url, project, order="+config.lr") == ["gamma", "beta", "alpha"]
    assert run_ids(api_url, project, order="-summary_metrics.loss") == ["gamma", "alpha", "beta"]
    assert run_ids(api_url, project, order="display_name") == ["alpha", "beta", "gamma"]
    assert run_ids(api_url, project, order="-group") == ["gamma", "beta", "alpha"]  # ties: by pk, descending
    assert run_ids(api_url, project, include_deleted="true") == ["delta", "gamma", "beta", "alpha"]
    assert run_ids(api_url, project, {"tags": "a"}, include_deleted="true") == ["delta", "alpha"]


@pytest.mark.parametrize("order", ["-created_at", "+config.lr", "-config.layers", "summary_metrics.loss",
                                   "-display_name", "job_type"])
def test_cursor_paging_visits_every_run_once(dataset: dict[str, Any], api_url: str, order: str) -> None:
    project = dataset["project"]
    whole = run_ids(api_url, project, order=order, include_deleted="true")
    seen: list[str] = []
    cursor = None
    while True:
        status, page = get(api_url, f"/api/v1/runs/{ENTITY}/{project}",
                           {"order": order, "per_page": 1, "cursor": cursor, "include_deleted": "true"})
        assert status == 200 and page["total"] == 4
        seen += [r["run_id"] for r in page["runs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == whole and len(seen) == 4


def test_public_client_runs_is_lazy_paged_and_sized(dataset: dict[str, Any]) -> None:
    api, project = dataset["api"], dataset["project"]
    runs = api.runs(f"{ENTITY}/{project}", per_page=1)
    assert len(runs) == 3
    assert [r.id for r in runs] == ["gamma", "beta", "alpha"]
    assert runs[2].id == "alpha" and runs[-1].id == "alpha"
    finished = api.runs(project, filters={"$and": [{"state": "finished"}, {"config.opt.name": "adam"}]},
                        order="+summary_metrics.loss")
    assert [(r.id, r.config["lr"], r.summary["loss"]) for r in finished] == [("alpha", 0.1, 0.5)]
    assert [r.id for r in api.runs(project, order="+config.lr", per_page=2)] == ["gamma", "beta", "alpha"]
    with pytest.raises(ProjectNotFound):
        len(api.runs(f"{ENTITY}/no-such-project"))


def test_keyset_paging_is_stable_under_inserts(local_stack: Settings, api_url: str, project: str) -> None:
    for i in range(3):
        make_run(project, f"old{i}", losses=[0.5])
    eventually(lambda: len(run_ids(api_url, project)) == 3 if get(api_url, f"/api/v1/runs/{ENTITY}/{project}")[0]
               == 200 else False)
    status, first = get(api_url, f"/api/v1/runs/{ENTITY}/{project}", {"per_page": 2})
    assert [r["run_id"] for r in first["runs"]] == ["old2", "old1"]
    make_run(project, "newer", losses=[0.5])  # lands at the front of -created_at
    eventually(lambda: len(run_ids(api_url, project)) == 4)
    status, second = get(api_url, f"/api/v1/runs/{ENTITY}/{project}", {"per_page": 2, "cursor": first["next_cursor"]})
    assert [r["run_id"] for r in second["runs"]] == ["old0"] and second["next_cursor"] is None
    assert second["total"] == 4


def test_grouping_counts_and_summary_statistics(dataset: dict[str, Any], api_url: str) -> None:
    project = dataset["project"]
    status, body = get(api_url, f"/api/v1/runs/{ENTITY}/{project}/groups", {"by": "group"})
    assert status == 200
    groups = {g["value"]: g for g in body["groups"]}
    assert groups["g1"]["count"] == 2 and groups["g2"]["count"] == 1  # delta (g2) is deleted
    loss = groups["g1"]["summary"]["loss"]
    assert loss["min"] == pytest.approx(0.2) and loss["max"] == pytest.approx(0.5)
    assert loss["mean"] == pytest.approx(0.35) and loss["count"] == 2
    status, body = get(api_url, f"/api/v1/runs/{ENTITY}/{project}/groups",
                       {"by": "config.opt.name", "filters": json.dumps({"state": "finished"})})
    assert {g["value"]: g["count"] for g in body["groups"]} == {"adam": 1, "sgd": 1}
    status, body = get(api_url, f"/api/v1/runs/{ENTITY}/{project}/groups", {"by": "tags"})
    assert {g["value"]: g["count"] for g in body["groups"]} == {"a": 1, "keep": 1, "b": 1, None: 1}
    status, body = get(api_url, f"/api/v1/runs/{ENTITY}/{project}/groups", {"by": "state", "include_deleted": "true"})
    assert {g["value"]: g["count"] for g in body["groups"]} == {"finished": 3, "failed": 1}
    assert get(api_url, f"/api/v1/runs/{ENTITY}/{project}/groups", {"by": MALICIOUS})[0] == 400
    assert get(api_url, f"/api/v1/runs/{ENTITY}/{project}/groups")[0] == 422


# -- bad requests: 4xx, never 500, and nothing reaches SQL as text ------------------------------------


def test_malicious_filter_and_sort_keys_are_refused_and_the_table_survives(
        dataset: dict[str, Any], api_url: str) -> None:
    path = f"/api/v1/runs/{ENTITY}/{dataset['project']}"
    for params in [{"filters": json.dumps({MALICIOUS: 1})}, {"order": MALICIOUS}, {"order": f"-{MALICIOUS}"},
                   {"filters": json.dumps({"state": {MALICIOUS: 1}})}, {"filters": json.dumps({"$or": [{MALICIOUS: 1}]})}]:
        status, body = get(api_url, path, params)
        assert status == 400 and body["error"] == "bad_request", (params, body)
    # as a config path the same text is only a key (bound as text[]): it matches nothing
    assert run_ids(api_url, dataset["project"], order=f"-config.{MALICIOUS}") == ["gamma", "beta", "alpha"]
    assert run_ids(api_url, dataset["project"], include_deleted="true") == ["delta", "gamma", "beta", "alpha"]


async def test_the_runs_table_still_exists_after_the_malicious_requests(pool: asyncpg.Pool) -> None:
    assert await pool.fetchval("SELECT to_regclass('public.runs') IS NOT NULL")
    assert await pool.fetchval("SELECT count(*) FROM runs") > 0


@pytest.mark.parametrize(("params", "status"), [
    ({"per_page": 0}, 422), ({"per_page": 1001}, 422), ({"per_page": "x"}, 422),
    ({"filters": "{"}, 400), ({"filters": "[1]"}, 400), ({"filters": json.dumps({"state": {"$nope": 1}})}, 400),
    ({"filters": json.dumps({"display_name": {"$regex": "(unclosed"}})}, 400),
    ({"filters": json.dumps({"config.lr": {"$regex": "[z-a]"}})}, 400),
    ({"filters": json.dumps({"config.lr": {"$in": 5}})}, 400),
    ({"filters": json.dumps({"$and": [{"state": "x"}] * 2000})}, 400),
    ({"filters": json.dumps({"created_at": {"$gt": "soon"}})}, 400),
    ({"filters": json.dumps({"state": "\u0000"})}, 400),
    ({"order": "tags"}, 400), ({"order": "pk"}, 400), ({"cursor": "garbage!"}, 400),
    ({"cursor": "eyJvIjoiLWNyZWF0ZWRfYXQiLCJ2Ijoibm90IGEgdGltZSIsInBrIjoxfQ"}, 400),
    ({"include_deleted": "maybe"}, 422),
])
def test_bad_parameters_are_client_errors(dataset: dict[str, Any], api_url: str, params: dict, status: int) -> None:
    got, body = get(api_url, f"/api/v1/runs/{ENTITY}/{dataset['project']}", params)
    assert got == status, body
    assert set(body) == {"error", "message"}


def test_a_huge_number_is_just_a_number(dataset: dict[str, Any], api_url: str) -> None:
    assert run_ids(api_url, dataset["project"], {"config.lr": {"$lt": 2**70}}) == ["gamma", "beta", "alpha"]


def test_unknown_runs_and_projects_are_404(dataset: dict[str, Any], api_url: str) -> None:
    project = dataset["project"]
    assert get(api_url, f"/api/v1/runs/{ENTITY}/no-such-project")[0] == 404
    assert get(api_url, f"/api/v1/runs/{ENTITY}/no-such-project/groups", {"by": "state"})[0] == 404
    for suffix in ["", "/summary", "/transitions", "/alerts", "/events", "/history", "/history/sampled",
                   "/history/keys"]:
        status, body = get(api_url, f"/api/v1/runs/{ENTITY}/{project}/missing{suffix}")
        assert status == 404 and body["error"] == "not_found", suffix
    api = dataset["api"]
    with pytest.raises(RunNotFound):
        api.run(f"{ENTITY}/{project}/missing")
    for bad in [{"samples": 1}, {"samples": "many"}, {"x_axis": "no-such-metric"}]:
        assert get(api_url, f"/api/v1/runs/{ENTITY}/{project}/alpha/history/sampled", bad)[0] in (400, 422)
    for cursor in ["x", "9" * 30]:  # 30 digits would overflow a bigint in the query
        for suffix in ["/events", "/history"]:
            assert get(api_url, f"/api/v1/runs/{ENTITY}/{project}/alpha{suffix}", {"cursor": cursor})[0] == 400


# -- one run: sampled history, scans, summary, transitions, alerts, events -----------------------------


def test_sampled_history_keeps_a_spike_hidden_in_ten_thousand_points(api_url: str, project: str) -> None:
    run = producer.init(project=project, id="long")
    special = {1234: math.nan, 4321: math.inf, 9000: -math.inf, 7777: 1000.0}
    for step in range(10_000):
        loss = special.get(step, 1.0 + math.sin(step / 50) * 0.1)
        run.log({"loss": loss, "epoch": step // 100})
    run.finish()
    api = producer.Api(base_url=api_url)
    read = eventually(lambda: (r := api.run(run.path)) and r.state == "finished" and r.lastHistoryStep == 9999 and r,
                      timeout=90)

    rows = read.history(samples=100, keys=["loss"])  # pandas is not installed here: a list of dicts
    assert isinstance(rows, list) and 2 <= len(rows) <= 100
    by_step = {r["_step"]: r["loss"] for r in rows}
    assert by_step[7777] == 1000.0
    assert math.isnan(by_step[1234]) and by_step[4321] == math.inf and by_step[9000] == -math.inf
    assert [r["_step"] for r in rows] == sorted(r["_step"] for r in rows)

    both = read.history(samples=500, pandas=False)
    assert {k for r in both for k in r} == {"_step", "loss", "epoch"}
    assert max(sum(1 for r in both if "loss" in r), sum(1 for r in both if "epoch" in r)) <= 500
    with_x = read.history(samples=50, keys=["loss"], x_axis="epoch", pandas=False)
    assert with_x and all(r["epoch"] == r["_step"] // 100 for r in with_x)
    assert any(r["loss"] == 1000.0 for r in with_x)
    small = read.history(samples=20000, keys=["loss"], pandas=False)
    assert len(small) == 10_000  # fewer points than samples: all of them

    keys = read.history_keys
    assert set(keys["keys"]) == {"loss", "epoch"} and keys["lastStep"] == 9999

    status, lines = get(api_url, f"/api/v1/runs/{ENTITY}/{project}/long/history", {"keys": "loss"},
                        headers={"Accept": "application/x-ndjson"})
    assert status == 200 and len(lines) == 10_000
    assert lines[7777] == {"_step": 7777, "loss": 1000.0} and math.isnan(lines[1234]["loss"])
    assert sum(1 for _ in read.scan_history(keys=["epoch"], page_size=3000)) == 10_000
    # a key of plain numbers streams by the column path (api.queries.column_objects): the same rows
    status, epochs = get(api_url, f"/api/v1/runs/{ENTITY}/{project}/long/history", {"keys": "epoch"},
                         headers={"Accept": "application/x-ndjson"})
    assert status == 200 and epochs == list(read.scan_history(keys=["epoch"], page_size=3000))


def test_summary_transitions_alerts_and_events(local_stack: Settings, api_url: str, project: str) -> None:
    run = producer.init(project=project, id="audited", config={"lr": 0.1})
    run.log({"loss": 0.5, "worst": math.nan})
    run.alert("diverged", "loss went NaN", level="WARN")
    run.finish()
    api = producer.Api(base_url=api_url)
    eventually(lambda: api.run(run.path).state == "finished")
    # a refused move: finished -> pending is not allowed
    send_events(local_stack, [api_event(RunStateChange, project, "audited",
                                        payload=StateChangePayload(to="pending", reason="requeue"))])
    read = api.run(run.path)
    transitions = eventually(lambda: (t := read.transitions()) and len(t) >= 3 and t)
    assert [(t["from"], t["to"], t["accepted"]) for t in transitions] == [
        (None, "running", True), ("running", "finished", True), ("finished", "pending", False)]
    assert set(transitions[0]) == {"from", "to", "at", "recorded_at", "event_id", "actor", "reason", "accepted"}
    assert transitions[2]["reason"]

    alerts = read.alerts()
    assert [(a["title"], a["level"], a["suppressed"]) for a in alerts] == [("diverged", "WARN", False)]

    status, summary = get(api_url, f"/api/v1/runs/{ENTITY}/{project}/audited/summary")
    assert status == 200 and summary["loss"] == 0.5 and math.isnan(summary["worst"])
    assert read.summary["loss"] == 0.5

    events = read.events(page_size=2)
    types = [e["type"] for e in events]
    assert types[0] == "run.init" and "run.log" in types and "run.alert" in types and "run.finish" in types
    assert types[-1] == "run.state"
    assert [e["pos"] for e in events] == sorted(e["pos"] for e in events)
    assert events[0]["payload"]["config"] == {"lr": 0.1}
    logged = next(e for e in events if e["type"] == "run.log")
    assert math.isnan(logged["payload"]["values"]["worst"])


def test_openapi_lists_the_read_endpoints(api_url: str) -> None:
    status, doc = get(api_url, "/api/v1/openapi.json")
    assert status == 200
    for path in ["/api/v1/projects/{entity}", "/api/v1/projects/{entity}/{project}", "/api/v1/runs/{entity}/{project}",
                 "/api/v1/runs/{entity}/{project}/groups", "/api/v1/runs/{entity}/{project}/{run_id}/history/sampled",
                 "/api/v1/runs/{entity}/{project}/{run_id}/summary", "/api/v1/runs/{entity}/{project}/{run_id}/transitions",
                 "/api/v1/runs/{entity}/{project}/{run_id}/alerts", "/api/v1/runs/{entity}/{project}/{run_id}/events"]:
        assert path in doc["paths"], path


@settings(max_examples=150, deadline=None)
@given(tree=trees, order=st.sampled_from(["-created_at", "+config.lr", "summary_metrics.loss", "-display_name",
                                          f"config.{MALICIOUS}", MALICIOUS, "tags"]))
def test_random_filters_on_the_real_database_answer_200_or_400(dataset: dict[str, Any], api_url: str,
                                                                tree: Any, order: str) -> None:
    try:
        text = json.dumps(tree, allow_nan=False)
    except ValueError:
        text = json.dumps(tag_nonfinite(tree))
    status, body = get(api_url, f"/api/v1/runs/{ENTITY}/{dataset['project']}",
                       {"filters": text, "order": order, "per_page": 2})
    assert status in (200, 400), body
    status, body = get(api_url, f"/api/v1/runs/{ENTITY}/{dataset['project']}/groups",
                       {"filters": text, "by": "config.opt.name"})
    assert status in (200, 400), body
