"""Distributed training through real, separately spawned processes and the real stack.

(a) W&B's recommended way: each rank its own run, all under one ``group``.
(b) Several ranks writing into one run (same ``id``, each process its own writer id and rank):
    the run ends only when the last rank that joined it has finished, and for one key at one
    step the lowest rank's value is the one history and summary show.
(c) A shared run one of whose ranks fails ends failed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import orjson
import pytest

import producer
from events.settings import Settings

from .helpers import eventually, eventually_async

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RANKS = 3


def _spawn(code: str, rank: int, **fields: object) -> subprocess.Popen:
    env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(RANKS),
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code.format(**fields))], cwd=ROOT, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _expect(child: subprocess.Popen, line: str) -> None:
    got = child.stdout.readline().strip()
    if got != line:
        child.kill()
        _, err = child.communicate(timeout=10)
        raise AssertionError(f"expected {line!r} from the child, got {got!r}; stderr:\n{err}")


def _wait(children: list[subprocess.Popen]) -> None:
    for child in children:
        out, err = child.communicate(timeout=60)
        assert child.returncode == 0, err


# -- (a) one run per rank, one group ------------------------------------------------------------

OWN_RUN = """
    import json, producer
    with producer.init(project={project!r}, group={group!r}, job_type="train", config={{"world": 3}}) as run:
        print(json.dumps({{"path": run.path, "rank": run.rank}}), flush=True)
        for step in range(20):
            run.log({{"loss": 1.0 / (step + 1), "rank": run.rank}})
"""


async def test_each_rank_its_own_run_in_one_group(local_stack: Settings, project: str, pool) -> None:
    group = f"ddp-{uuid.uuid4().hex[:6]}"
    children = [_spawn(OWN_RUN, rank, project=project, group=group) for rank in range(RANKS)]
    infos = [orjson.loads(child.stdout.readline()) for child in children]
    _wait(children)
    assert [i["rank"] for i in infos] == list(range(RANKS))
    assert len({i["path"] for i in infos}) == RANKS  # three runs

    api = producer.Api()
    for info in infos:
        run = eventually(lambda p=info["path"]: (r := api.run(p)).state == "finished" and r, timeout=30)
        assert run.group == group and run.job_type == "train"
        assert run.summary["rank"] == info["rank"] and run.summary["_step"] == 19
    listed = await pool.fetch("SELECT run_group, state FROM runs WHERE entity = $1 AND project = $2",
                              local_stack.entity, project)
    assert len(listed) == RANKS
    assert {r["run_group"] for r in listed} == {group} and {r["state"] for r in listed} == {"finished"}


# -- (b) ranks sharing one run ------------------------------------------------------------------

SHARED = """
    import json, sys, time, producer
    run = producer.init(project={project!r}, id={run_id!r}, config={{"world": 3}})
    rank = run.rank
    print(json.dumps({{"writer": run.writer_id, "path": run.path, "rank": rank, "name": run.name}}), flush=True)
    for step in range(10):
        run.log({{"loss": float(rank), f"r{{rank}}": step}})
    assert run.transport.flush(30) == 0
    print("READY", flush=True)
    if sys.stdin.readline().strip() == "more":  # keep logging for a while after rank 0 finished
        for step in range(10, 20):
            run.log({{"loss": float(rank), f"r{{rank}}": step}})
            time.sleep(0.02)
    run.finish()
"""


async def _runs_row(pool, path: str):
    entity, project, run_id = path.split("/")
    return await pool.fetchrow("SELECT state, open_writers, pk FROM runs WHERE entity = $1 AND project = $2 "
                               "AND run_id = $3", entity, project, run_id)


async def _count(pool, path: str, event_type: str, writer: str | None = None) -> int:
    return await pool.fetchval(
        "SELECT count(*) FROM event_store WHERE run_path = $1 AND type = $2 AND ($3::text IS NULL OR writer = $3)",
        path, event_type, writer)


async def test_ranks_sharing_one_run_end_it_with_the_last_rank(local_stack: Settings, project: str, pool) -> None:
    run_id = f"ddp{uuid.uuid4().hex[:8]}"
    children = [_spawn(SHARED, rank, project=project, run_id=run_id) for rank in range(RANKS)]
    infos = [orjson.loads(child.stdout.readline()) for child in children]
    for child in children:
        _expect(child, "READY")
    path = infos[0]["path"]
    writers = [i["writer"] for i in infos]
    assert [i["path"] for i in infos] == [path] * RANKS and len(set(writers)) == RANKS
    assert len({i["name"] for i in infos}) == 1  # one default name for one id: ranks do not fight over it

    # Every rank joined the run before any finishes.
    await eventually_async(lambda: _joined(pool, path, writers), timeout=30)
    row = await _runs_row(pool, path)
    assert row["state"] == "running" and sorted(row["open_writers"]) == sorted(writers)

    # Rank 0 finishes first; once the consumer applied its finish the run is still running.
    children[0].stdin.write("finish\n")
    children[0].stdin.flush()
    _wait(children[:1])
    await eventually_async(lambda: _finish_applied(pool, path, writers[0]), timeout=30)
    row = await _runs_row(pool, path)
    assert row["state"] == "running", "rank 0 finishing must not finish a run other ranks still write"
    assert sorted(row["open_writers"]) == sorted(writers[1:])

    # The others log on for a while, then finish: only now is the run finished.
    for child in children[1:]:
        child.stdin.write("more\n")
        child.stdin.flush()
    _wait(children[1:])
    await eventually_async(lambda: _state_is(pool, path, "finished"), timeout=30)
    assert (await _runs_row(pool, path))["open_writers"] == []
    moves = await pool.fetch("SELECT from_state, to_state FROM state_transitions WHERE run_pk = $1 AND accepted "
                             "ORDER BY id", row["pk"])
    assert [(m["from_state"], m["to_state"]) for m in moves] == [(None, "running"), ("running", "finished")]

    run = eventually(lambda: (r := producer.Api().run(path)).state == "finished" and r.lastHistoryStep == 19 and r,
                     timeout=30)
    assert run.config == {"world": 3} and run.name == infos[0]["name"]
    for rank, last in ((0, 9), (1, 19), (2, 19)):
        rows = list(run.scan_history(keys=[f"r{rank}"]))
        assert [(r["_step"], r[f"r{rank}"]) for r in rows] == [(s, s) for s in range(last + 1)], rank
    # One key, one step, several ranks: the lowest rank's value wins, in history and in summary.
    losses = {r["_step"]: r["loss"] for r in run.scan_history(keys=["loss"])}
    assert losses == {s: 0.0 if s < 10 else 1.0 for s in range(20)}
    assert run.summary["loss"] == 1.0
    assert (run.summary["r0"], run.summary["r1"], run.summary["r2"]) == (9, 19, 19)


async def _joined(pool, path: str, writers: list[str]) -> bool:
    row = await _runs_row(pool, path)
    return await _count(pool, path, "run.init") == RANKS and row is not None and \
        sorted(row["open_writers"]) == sorted(writers)


async def _finish_applied(pool, path: str, writer: str) -> bool:
    row = await _runs_row(pool, path)
    return await _count(pool, path, "run.finish", writer) == 1 and writer not in row["open_writers"]


async def _state_is(pool, path: str, state: str) -> bool:
    row = await _runs_row(pool, path)
    return row is not None and row["state"] == state


# -- (c) a failed rank fails the shared run -------------------------------------------------------

FAILING = """
    import producer, sys
    run = producer.init(project={project!r}, id={run_id!r})
    run.log({{"loss": 1.0}})
    run.transport.flush(30)
    print("READY", flush=True)
    sys.stdin.readline()
    run.finish(exit_code=3 if run.rank == 1 else 0)  # rank 1 fails
"""


async def test_a_failed_rank_fails_the_shared_run(local_stack: Settings, project: str, pool) -> None:
    run_id = f"ddp{uuid.uuid4().hex[:8]}"
    children = [_spawn(FAILING, rank, project=project, run_id=run_id) for rank in range(2)]
    for child in children:
        _expect(child, "READY")
    path = f"{local_stack.entity}/{project}/{run_id}"
    await eventually_async(lambda: _count(pool, path, "run.init"), timeout=30)
    await eventually_async(lambda: _joined_n(pool, path, 2), timeout=30)
    for child in children[::-1]:  # the failing rank 1 first, the healthy rank 0 last
        child.stdin.write("go\n")
        child.stdin.flush()
        _wait([child])
    await eventually_async(lambda: _state_is(pool, path, "failed"), timeout=30)


async def _joined_n(pool, path: str, n: int) -> bool:
    row = await _runs_row(pool, path)
    return row is not None and len(row["open_writers"]) == n
