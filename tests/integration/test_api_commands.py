"""Commands through the log: API -> Kafka -> consumer -> PostgreSQL, answered once applied; API keys.

The API under test runs in this process on a free port (as in test_api_reads), on the test
stack's Kafka and database, so the code of this checkout is what is exercised.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from click.testing import CliRunner

import producer
from api.app import create_app
from deploy.cli import main as cli
from events.settings import Settings
from producer.public import CommandConflict, Run, find_api_key

from .helpers import eventually

pytestmark = pytest.mark.integration
ENTITY = "tester"


def serve(settings: Settings) -> tuple[str, uvicorn.Server, threading.Thread]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False, ws="none", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    eventually(lambda: call(url, "GET", "/api/v1/ready")[0] == 200, timeout=20)
    return url, server, thread


@pytest.fixture(scope="module")
def api_url(local_stack: Settings) -> Iterator[str]:
    url, server, thread = serve(local_stack)
    yield url
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def key(api_url: str, local_stack: Settings) -> str:
    """The development key the API wrote at startup (entity: the default entity, 'tester')."""
    found = find_api_key(local_stack)
    assert found and found.startswith(f"rl_{ENTITY}_")
    path = Path(local_stack.home) / "api-key"
    assert path.stat().st_mode & 0o777 == 0o600
    return found


def call(base: str, method: str, path: str, body: Any = None, *, key: str | None = None,
         params: dict[str, Any] | None = None) -> tuple[int, Any]:
    url = base + path
    if params:
        url += "?" + urllib.parse.urlencode(params)
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            raw, status = response.read(), response.status
    except urllib.error.HTTPError as e:
        raw, status = e.read(), e.code
    assert status < 500 or status == 504, (status, raw[:300])
    return status, json.loads(raw)


def keys_cli(*args: str) -> str:
    result = CliRunner().invoke(cli, ["keys", *args])
    assert result.exit_code == 0, result.output
    return result.stdout


def new_key(entity: str, *flags: str) -> str:
    return keys_cli("create", entity, *flags).strip().splitlines()[-1]


def finished_run(project: str, run_id: str, exit_code: int = 0, **init: Any) -> str:
    run = producer.init(project=project, id=run_id, **init)
    run.log({"loss": 0.5})
    run.finish(exit_code=exit_code)
    return run.path


def wait_state(api: producer.Api, path: str, state: str) -> Run:
    return eventually(lambda: (r := api.run(path)).state == state and r, timeout=60)


# -- the seed example and the client's write methods ------------------------------------------------


def test_seed_example_tags_append_update_is_read_back_at_once(api_url: str, key: str, project: str) -> None:
    path = finished_run(project, "seed", tags=["orig"])
    api = producer.Api(base_url=api_url)
    wait_state(api, path, "finished")

    run = api.run(path)
    run.tags.append("tag1")
    run.update()
    assert producer.Api(base_url=api_url).run(path).tags == ["orig", "tag1"]  # read-your-writes, no polling
    assert run.tags == ["orig", "tag1"]

    run.tags.remove("orig")
    run.name, run.notes = "renamed", "some notes"
    run.config["lr"] = 0.5
    run.save()
    again = api.run(path)
    assert (again.tags, again.name, again.notes, again.config["lr"]) == (["tag1"], "renamed", "some notes", 0.5)
    events = [e for e in again.events() if e["source"]["kind"] == "api"]
    assert {e["type"] for e in events} == {"run.tags", "run.update", "run.config"}
    writer = events[0]["source"]["writer"]
    assert writer.startswith("api-") and [e["seq"] for e in events if e["source"]["writer"] == writer] == \
        sorted(e["seq"] for e in events if e["source"]["writer"] == writer)


def test_summary_update_persists_and_removes(api_url: str, key: str, project: str) -> None:
    path = finished_run(project, "summ")
    api = producer.Api(base_url=api_url)
    run = wait_state(api, path, "finished")
    run.summary["best"] = 0.25
    run.summary["nan"] = float("nan")
    run.summary.update()
    fresh = api.run(path)
    assert fresh.summary["best"] == 0.25 and fresh.summary["nan"] != fresh.summary["nan"]
    run.summary.update({"extra": "x"})
    del run.summary["best"]
    run.summary.update()
    fresh = api.run(path)
    assert "best" not in fresh.summary and fresh.summary["extra"] == "x" and fresh.summary["loss"] == 0.5


def test_delete_undelete_create_and_state_moves_through_the_client(api_url: str, key: str, project: str) -> None:
    api = producer.Api(base_url=api_url)
    made = api.create_run(run_id="queued", project=project, tags=["q"])
    assert (made.state, made.tags, made.path) == ("pending", ["q"], f"{ENTITY}/{project}/queued")
    other = Run.create(api, project=project)
    assert other.state == "pending" and len(other.id) == 8
    with pytest.raises(CommandConflict, match="already exists"):
        api.create_run(run_id="queued", project=project)

    made.update_state("failed")
    assert made.state == "failed" and api.run(made.path).state == "failed"
    assert made.wait_until_finished(timeout=5).state == "failed"
    made.update_state("pending")
    assert api.run(made.path).state == "pending"
    with pytest.raises(CommandConflict, match="already pending"):
        made.update_state("pending")
    transitions = made.transitions()
    assert [(t["from"], t["to"], t["accepted"], t["actor"]) for t in transitions] == [
        (None, "pending", True, "api"), ("pending", "failed", True, "api"), ("failed", "pending", True, "api")]

    made.delete()
    assert made.deleted and "queued" not in [r.id for r in api.runs(f"{ENTITY}/{project}")]
    assert "queued" in [r.id for r in api.runs(f"{ENTITY}/{project}", include_deleted=True)]
    made.undelete()
    assert not api.run(made.path).deleted
    assert made.load(force=True).state == "pending"


# -- every endpoint over HTTP --------------------------------------------------------------------------


def test_endpoints_answer_once_applied(api_url: str, key: str, project: str) -> None:
    path = finished_run(project, "http")
    wait_state(producer.Api(base_url=api_url), path, "finished")
    base = f"/api/v1/runs/{path}"

    status, body = call(api_url, "POST", f"{base}/tags", {"add": ["x", "y"], "remove": []}, key=key)
    assert status == 200 and body["status"] == "applied" and body["run"]["tags"] == ["x", "y"]
    status, body = call(api_url, "PATCH", f"{base}/tags", {"remove": ["x"]}, key=key)
    assert status == 200 and body["run"]["tags"] == ["y"]
    status, body = call(api_url, "PATCH", f"{base}/summary", {"set": {"acc": 0.9, "inf": {"$f": "Infinity"}},
                                                             "remove": ["loss"]}, key=key)
    assert status == 200 and body["run"]["summary"]["acc"] == 0.9 and "loss" not in body["run"]["summary"]
    assert body["run"]["summary"]["inf"] == {"$f": "Infinity"}
    status, body = call(api_url, "PATCH", f"{base}/config", {"values": {"opt": {"name": "sgd"}}}, key=key)
    assert status == 200 and body["run"]["config"]["opt"] == {"name": "sgd"}
    status, body = call(api_url, "PATCH", base, {"name": "n", "notes": "m"}, key=key)
    assert status == 200 and (body["run"]["name"], body["run"]["notes"]) == ("n", "m")
    status, body = call(api_url, "DELETE", base, key=key)
    assert status == 200 and body["run"]["deleted"] is True
    status, body = call(api_url, "POST", f"{base}/undelete", key=key)
    assert status == 200 and body["run"]["deleted"] is False
    status, body = call(api_url, "POST", f"/api/v1/runs/{ENTITY}/{project}", {"run_id": "p1", "name": "later"},
                        key=key)
    assert status == 201 and body["run"]["state"] == "pending" and body["run"]["name"] == "later"

    # not waiting: 202 and a token to ask about
    status, body = call(api_url, "POST", f"{base}/tags", {"add": ["later"]}, key=key, params={"wait": "false"})
    assert status == 202 and body["status"] == "pending"
    token = body["token"]
    done = eventually(lambda: (b := call(api_url, "GET", f"/api/v1/commands/{token}")[1])["status"] == "applied"
                      and b)
    assert done["type"] == "run.tags" and done["run"] == path
    assert call(api_url, "GET", "/api/v1/commands/not-a-uuid")[0] == 422

    # a wait of 0 s: either already applied or a clear 504 that says the command is not lost
    status, body = call(api_url, "POST", f"{base}/tags", {"add": ["zero"]}, key=key, params={"wait": "0"})
    assert status in (200, 504)
    if status == 504:
        assert body["error"] == "command_pending" and "accepted by Kafka" in body["message"] and body["token"]
    eventually(lambda: "zero" in call(api_url, "GET", base)[1]["tags"])

    # client mistakes are 4xx
    assert call(api_url, "POST", f"{base}/tags", {"add": [""]}, key=key)[0] == 422
    assert call(api_url, "POST", f"{base}/tags", {"bogus": 1}, key=key)[0] == 422
    assert call(api_url, "PATCH", f"{base}/summary", {"set": {"$bad": 1}}, key=key)[0] == 422
    assert call(api_url, "POST", f"{base}/tags", {"add": ["a"]}, key=key, params={"wait": "soon"})[0] == 422
    assert call(api_url, "POST", f"/api/v1/runs/{ENTITY}/{project}/nope/tags", {"add": ["a"]}, key=key)[0] == 404
    assert call(api_url, "POST", f"{base}/state", {"state": "running"}, key=key)[0] == 422


def test_bulk_tags_by_ids_and_by_filter(api_url: str, key: str, project: str) -> None:
    api = producer.Api(base_url=api_url)
    for rid, lr in (("b1", 0.1), ("b2", 0.01), ("b3", 0.001)):
        finished_run(project, rid, config={"lr": lr})
    eventually(lambda: len(api.runs(f"{ENTITY}/{project}", filters={"state": "finished"})) == 3, timeout=60)
    url = f"/api/v1/runs/{ENTITY}/{project}/tags"
    status, body = call(api_url, "POST", url, {"run_ids": ["b1", "b2"], "add": ["pair"]}, key=key)
    assert status == 200 and sorted(body["runs"]) == [f"{ENTITY}/{project}/b1", f"{ENTITY}/{project}/b2"]
    status, body = call(api_url, "POST", url, {"filters": {"config.lr": {"$lt": 0.05}}, "add": ["small"],
                                               "remove": ["pair"]}, key=key)
    assert status == 200 and len(body["runs"]) == 2
    tags = {r.id: r.tags for r in api.runs(f"{ENTITY}/{project}")}
    assert tags == {"b1": ["pair"], "b2": ["small"], "b3": ["small"]}
    assert call(api_url, "POST", url, {"run_ids": ["b1", "zz"], "add": ["a"]}, key=key)[0] == 404
    assert call(api_url, "POST", url, {"add": ["a"]}, key=key)[0] == 400
    assert call(api_url, "POST", url, {"filters": {"nope": 1}, "add": ["a"]}, key=key)[0] == 400


# -- state moves ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("exit_code", "target", "reason"), [
    (0, "pending", "finished cannot move to pending"),
    (0, "failed", "finished cannot move to failed"),
    (1, "failed", "run is already failed"),
])
def test_refused_state_moves_answer_409_with_the_reason(api_url: str, key: str, project: str, exit_code: int,
                                                        target: str, reason: str) -> None:
    path = finished_run(project, "moves", exit_code=exit_code)
    wait_state(producer.Api(base_url=api_url), path, "finished" if exit_code == 0 else "failed")
    status, body = call(api_url, "POST", f"/api/v1/runs/{path}/state", {"state": target}, key=key)
    assert status == 409 and body["error"] == "conflict" and reason in body["message"]


def test_state_move_refused_when_applied_after_a_race(api_url: str, key: str, project: str) -> None:
    api = producer.Api(base_url=api_url)
    made = api.create_run(run_id="racy", project=project)
    url = f"/api/v1/runs/{made.path}/state"
    # Both pass the check against the projection (pending -> failed); the second is refused when applied.
    first = call(api_url, "POST", url, {"state": "failed"}, key=key, params={"wait": "false"})[1]["token"]
    second = call(api_url, "POST", url, {"state": "failed"}, key=key, params={"wait": "false"})
    if second[0] == 202:
        token = second[1]["token"]
        moved = eventually(lambda: (b := call(api_url, "GET", f"/api/v1/commands/{token}")[1])["status"] == "applied"
                           and b)
        assert moved["state_move"]["accepted"] is False and "already failed" in moved["state_move"]["reason"]
    else:
        assert second[0] == 409
    assert eventually(lambda: call(api_url, "GET", f"/api/v1/commands/{first}")[1].get("state_move"))["accepted"]

    # Two waiting requests at once: one is applied, the other answers 409 (refused before or after).
    api.run(made.path).update_state("pending")
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda _: call(api_url, "POST", url, {"state": "failed"}, key=key), range(2)))
    assert sorted(s for s, _ in answers) == [200, 409]
    assert "failed" in [b for s, b in answers if s == 409][0]["message"]


def test_api_tag_edit_racing_the_sdk_keeps_both(api_url: str, key: str, project: str) -> None:
    run = producer.init(project=project, id="race", tags=["start"])
    api = producer.Api(base_url=api_url)
    eventually(lambda: api.run(run.path).state == "running", timeout=60)
    remote = api.run(run.path)
    for i in range(5):
        run.tags = (*run.tags, f"sdk{i}")
        remote.tags.append(f"api{i}")
        remote.update()
    run.finish()
    expected = {"start", *(f"sdk{i}" for i in range(5)), *(f"api{i}" for i in range(5))}
    final = eventually(lambda: (r := api.run(run.path)).state == "finished" and set(r.tags) == expected and r,
                       timeout=60)
    assert set(final.tags) == expected


# -- auth ---------------------------------------------------------------------------------------------


def test_writes_need_a_key_of_the_entity_with_write_scope(api_url: str, key: str, project: str) -> None:
    path = finished_run(project, "auth")
    wait_state(producer.Api(base_url=api_url), path, "finished")
    url = f"/api/v1/runs/{path}/tags"
    edit = {"add": ["t"]}
    status, body = call(api_url, "POST", url, edit)
    assert status == 401 and body["error"] == "unauthorized"
    assert call(api_url, "POST", url, edit, key="rl_tester_wrong")[0] == 401
    other = new_key("someone-else")
    status, body = call(api_url, "POST", url, edit, key=other)
    assert status == 403 and "someone-else" in body["message"]
    read_only = new_key(ENTITY, "--read-only")
    status, body = call(api_url, "POST", url, edit, key=read_only)
    assert status == 403 and "write" in body["message"]
    fresh = new_key(ENTITY)
    assert call(api_url, "POST", url, edit, key=fresh)[0] == 200
    listed = keys_cli("list")
    key_id = [line.split()[0] for line in listed.splitlines() if fresh[: len(ENTITY) + 8] in line][-1]
    keys_cli("revoke", key_id)
    assert call(api_url, "POST", url, edit, key=fresh)[0] == 401
    assert call(api_url, "GET", f"/api/v1/runs/{path}")[0] == 200  # reads stay open by default

    with pytest.raises(producer.CommError) as info:
        producer.Api(base_url=api_url, api_key="rl_tester_nope").run(path).delete()
    assert info.value.status == 401


def test_reads_need_a_key_when_configured(local_stack: Settings, key: str, project: str) -> None:
    path = finished_run(project, "reads")
    url, server, thread = serve(local_stack.model_copy(update={"api_auth_reads": True}))
    try:
        wait_state(producer.Api(base_url=url), path, "finished")  # the dev key reads
        assert call(url, "GET", f"/api/v1/runs/{path}")[0] == 401
        assert call(url, "GET", f"/api/v1/runs/{path}", key=new_key(ENTITY, "--read-only"))[0] == 200
        assert call(url, "GET", f"/api/v1/projects/{ENTITY}", key=new_key("someone-else"))[0] == 403
        assert call(url, "GET", "/api/v1/health")[0] == 200
    finally:
        server.should_exit = True
        thread.join(timeout=10)
