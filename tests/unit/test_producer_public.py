"""producer.public.Api against a tiny stdlib HTTP server that plays the runlog API."""

from __future__ import annotations

import json
import math
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from producer import Api, CommError
from producer.public import RunNotFound

RUN = {
    "entity": "ent", "project": "proj", "run_id": "abc123", "path": "ent/proj/abc123",
    "name": "swift-sun-1", "state": "running", "group": "g", "job_type": "train",
    "tags": ["a", "b"], "config": {"lr": 0.1, "opt": {"name": "adam"}},
    "summary": {"loss": {"$f": "NaN"}, "best": {"$f": "Infinity"}, "acc": 0.5},
    "notes": None, "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:01:00Z",
    "heartbeat_at": None, "finished_at": None, "exit_code": None, "last_step": 4, "deleted": False,
}
HISTORY = [{"_step": i, "loss": 1.0 / (i + 1), "acc": i / 10} for i in range(5)]
HISTORY[2]["loss"] = {"$f": "-Infinity"}


class Handler(BaseHTTPRequestHandler):
    requests: list = []

    def log_message(self, *args):  # keep test output clean
        pass

    def _send(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        Handler.requests.append((url.path, query, self.headers.get("Authorization")))
        if url.path == "/api/v1/runs/ent/proj/abc123":
            return self._send(200, RUN)
        if url.path == "/api/v1/runs/ent/proj/abc123/history":
            size, start = int(query["page_size"]), int(query.get("cursor", query["min_step"]))
            stop = min(int(query.get("max_step", 10**9)), len(HISTORY))
            keys = query["keys"].split(",") if "keys" in query else None
            rows = [{k: v for k, v in r.items() if keys is None or k == "_step" or k in keys}
                    for r in HISTORY[start:min(start + size, stop)]]
            more = start + size < stop
            return self._send(200, {"rows": rows, "next_cursor": str(start + size) if more else None})
        if url.path.startswith("/api/v1/runs/ent/proj/locked"):
            return self._send(403, {"message": "API key not allowed to read this project"})
        return self._send(404, {"message": "no such run"})


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def api(server, monkeypatch):
    monkeypatch.delenv("RUNLOG_ENTITY", raising=False)
    Handler.requests.clear()
    return Api(server, api_key="k3y", default_entity="ent")


def test_run_attributes_and_nonfinite_untagged(api):
    run = api.run("ent/proj/abc123")
    assert (run.id, run.entity, run.project, run.path, run.name, run.state) == (
        "abc123", "ent", "proj", "ent/proj/abc123", "swift-sun-1", "running")
    assert (run.group, run.job_type, run.notes, run.created_at) == ("g", "train", None, "2026-01-01T00:00:00Z")
    assert run.tags == ["a", "b"] and run.config == {"lr": 0.1, "opt": {"name": "adam"}}
    assert math.isnan(run.summary["loss"]) and run.summary["best"] == math.inf and run.summary["acc"] == 0.5
    assert run.lastHistoryStep == 4
    assert Handler.requests[-1][2] == "Bearer k3y"


def test_short_path_uses_default_entity(api):
    assert api.run("proj/abc123").path == "ent/proj/abc123"
    assert api.run("ent/proj/runs/abc123").id == "abc123"  # W&B's URL-ish form
    with pytest.raises(ValueError, match="entity/project/run_id"):
        api.run("a/b/c/d/e")


def test_no_key_no_authorization_header(server, monkeypatch, tmp_path):
    monkeypatch.delenv("RUNLOG_API_KEY", raising=False)
    monkeypatch.setenv("RUNLOG_HOME", str(tmp_path))  # no development key file there
    Handler.requests.clear()
    Api(server).run("ent/proj/abc123")
    assert Handler.requests[-1][2] is None


def test_development_key_file_is_found_and_env_wins(server, monkeypatch, tmp_path):
    monkeypatch.delenv("RUNLOG_API_KEY", raising=False)
    monkeypatch.setenv("RUNLOG_HOME", str(tmp_path))
    (tmp_path / "api-key").write_text("rl_ent_fromfile\n")
    Handler.requests.clear()
    Api(server).run("ent/proj/abc123")
    assert Handler.requests[-1][2] == "Bearer rl_ent_fromfile"
    monkeypatch.setenv("RUNLOG_API_KEY", "rl_ent_fromenv")
    Api(server).run("ent/proj/abc123")
    assert Handler.requests[-1][2] == "Bearer rl_ent_fromenv"


def test_update_sends_only_the_changes(server, monkeypatch):
    from producer.public import Run

    sent = []
    api = Api(server, api_key="k", default_entity="ent")
    monkeypatch.setattr(api, "_send_json", lambda method, path, body=None, **kw: sent.append((method, path, body))
                        or {"run": {**RUN, "tags": ["b", "c"]}})
    run = api.run("ent/proj/abc123")
    assert isinstance(run, Run)
    run.update()
    assert sent == []  # nothing changed, nothing sent
    run.tags.append("c")
    run.tags.remove("a")
    run.summary["acc"] = 0.75
    run.update()
    method, path, body = sent[-1]
    assert (method, path) == ("PATCH", "/api/v1/runs/ent/proj/abc123")
    # NaN in the loaded summary is unchanged (NaN equals NaN here), so only acc is sent
    assert body == {"tags": {"add": ["c"], "remove": ["a"]}, "summary": {"set": {"acc": 0.75}, "remove": []}}
    assert run.tags == ["b", "c"]
    with pytest.raises(ValueError, match="pending"):
        run.update_state("running")


def test_defaults_come_from_settings(server, monkeypatch):
    monkeypatch.setenv("RUNLOG_API_URL", server + "/")
    monkeypatch.setenv("RUNLOG_API_KEY", "from-env")
    monkeypatch.setenv("RUNLOG_ENTITY", "ent")
    Handler.requests.clear()
    api = Api()
    assert api.base_url == server
    assert api.run("proj/abc123").id == "abc123"
    assert Handler.requests[-1][2] == "Bearer from-env"


def test_scan_history_pages_and_filters(api):
    run = api.run("ent/proj/abc123")
    Handler.requests.clear()
    rows = list(run.scan_history(page_size=2))
    assert [r["_step"] for r in rows] == [0, 1, 2, 3, 4]
    assert rows[2]["loss"] == -math.inf and rows[1] == HISTORY[1]
    assert len(Handler.requests) == 3 and Handler.requests[1][1]["cursor"] == "2"
    rows = list(run.scan_history(keys=["acc"], min_step=1, max_step=3, page_size=10))
    assert rows == [{"_step": 1, "acc": 0.1}, {"_step": 2, "acc": 0.2}]
    assert Handler.requests[-1][1] == {"keys": "acc", "page_size": "10", "min_step": "1", "max_step": "3"}


def test_not_found_is_a_value_error(api):
    with pytest.raises(ValueError, match="Could not find run ent/proj/nope") as info:
        api.run("ent/proj/nope")
    assert isinstance(info.value, RunNotFound) and isinstance(info.value, CommError)
    assert info.value.status == 404 and "no such run" in str(info.value)


def test_http_error_carries_status_and_message(api):
    with pytest.raises(CommError) as info:
        api.run("ent/proj/locked")
    assert not isinstance(info.value, ValueError)
    assert info.value.status == 403 and info.value.message == "API key not allowed to read this project"


def test_unreachable_server():
    with pytest.raises(CommError, match="cannot reach") as info:
        Api("http://127.0.0.1:9", timeout=2).run("e/p/r")
    assert info.value.status is None
