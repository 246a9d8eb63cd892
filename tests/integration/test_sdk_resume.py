"""``init(resume=...)`` against the real stack: one process logs and finishes, a second resumes
the same run, continues its step counter and finishes it again."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import orjson
import pytest

import producer
from events.settings import Settings
from producer.errors import RunlogWarning, UsageError

from .helpers import eventually

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

FIRST = """
    import producer
    with producer.init(project={project!r}, id={run_id!r}, config={{"lr": 0.1}}) as run:
        for step in range(10):
            run.log({{"loss": 1.0 / (step + 1)}})
"""

SECOND = """
    import json, producer
    run = producer.init(project={project!r}, id={run_id!r}, resume={resume!r}, config={{"phase": 2}})
    print(json.dumps({{"resumed": run.resumed, "starting_step": run.starting_step, "step": run.step,
                      "name": run.name, "config": dict(run.config)}}), flush=True)
    for step in range(5):
        run.log({{"loss": 0.01 * step, "phase2": step}})
    run.finish()
"""


def _run_child(code: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.parametrize("resume", ["must", "allow"])
async def test_a_second_process_resumes_a_finished_run(local_stack: Settings, project: str, resume: str,
                                                      pool) -> None:
    run_id = f"res{uuid.uuid4().hex[:8]}"
    path = f"{local_stack.entity}/{project}/{run_id}"
    _run_child(FIRST.format(project=project, run_id=run_id))
    api = producer.Api()
    first = eventually(lambda: (r := api.run(path)).state == "finished" and r.lastHistoryStep == 9 and r, timeout=30)

    info = orjson.loads(_run_child(SECOND.format(project=project, run_id=run_id, resume=resume)).splitlines()[0])
    assert info == {"resumed": True, "starting_step": 10, "step": 10, "name": first.name,
                    "config": {"lr": 0.1, "phase": 2}}

    run = eventually(lambda: (r := api.run(path)).state == "finished" and r.lastHistoryStep == 14 and r, timeout=30)
    assert run.name == first.name and run.config == {"lr": 0.1, "phase": 2}
    rows = list(run.scan_history(keys=["loss"]))
    assert [r["_step"] for r in rows] == list(range(15))
    assert rows[9]["loss"] == pytest.approx(0.1) and rows[10]["loss"] == 0.0
    assert [r["_step"] for r in run.scan_history(keys=["phase2"])] == list(range(10, 15))
    moves = await _moves(pool, local_stack.entity, project, run_id)
    assert moves[0][:2] == (None, "running")
    assert ("finished", "running", "resumed") in moves
    assert moves[-1][1] == "finished" and [m[1] for m in moves].count("finished") == 2


async def _moves(pool, entity: str, project: str, run_id: str) -> list[tuple]:
    """The run's accepted state transitions, oldest first (straight from the read model)."""
    rows = await pool.fetch(
        """SELECT t.from_state, t.to_state, t.reason FROM state_transitions t JOIN runs r ON r.pk = t.run_pk
           WHERE r.entity = $1 AND r.project = $2 AND r.run_id = $3 AND t.accepted ORDER BY t.id""",
        entity, project, run_id)
    return [(r["from_state"], r["to_state"], r["reason"]) for r in rows]


def test_must_and_never_check_the_server(local_stack: Settings, project: str) -> None:
    run_id = f"res{uuid.uuid4().hex[:8]}"
    with pytest.raises(UsageError, match=f"resume='must' but run .*/{project}/{run_id} does not exist"):
        producer.init(project=project, id=run_id, resume="must")
    assert producer.run is None
    _run_child(FIRST.format(project=project, run_id=run_id))
    eventually(lambda: producer.Api().run(f"{project}/{run_id}").state == "finished", timeout=30)
    with pytest.raises(UsageError, match="resume='never' but run .* already exists"):
        producer.init(project=project, id=run_id, resume="never")
    assert producer.run is None


def test_allow_with_the_api_unreachable_starts_new_with_a_warning(
        local_stack: Settings, project: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    monkeypatch.setenv("RUNLOG_API_URL", f"http://127.0.0.1:{dead}")
    with pytest.warns(RunlogWarning, match="cannot reach the runlog API .* starting it as a new run"):
        run = producer.init(project=project, id="unreach", resume="allow", mode="online")
    assert run.resumed is False and run.step == 0
    run.finish()
    with pytest.raises(producer.CommError, match="resume='must': cannot check"):
        producer.init(project=project, id="unreach", resume="must")
