"""The SDK's spool through real processes and the real stack: offline + sync, SIGKILL + sync,
SIGTERM and uncaught exceptions, and syncing twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import orjson
import pytest

import producer
from events.settings import Settings
from events import decode
from projections.db import stored_body
from producer._spool import find_spools, iter_records
from producer._sync import inspect
from producer._transport import rows_in

from .helpers import eventually, eventually_async

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def _child(code: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=_env(**env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _sync(*dirs: str) -> str:
    out = subprocess.run([sys.executable, "-m", "deploy.cli", "sync", *dirs], cwd=ROOT, env=_env(),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr + out.stdout
    return out.stdout


async def _seqs(pool, writer: str, path: str) -> list[int]:
    """The writer's seqs in the event store, a packed run.log contributing one per row."""
    rows = await pool.fetch("SELECT body FROM event_store WHERE writer = $1 AND run_path = $2 ORDER BY seq",
                            writer, path)
    return [seq for r in rows for e in [decode(stored_body(r["body"]))] for seq in range(e.seq, e.last_seq + 1)]


def _spool_rows(spool: Path) -> int:
    """Rows and events in a spool file (a packed run.log is one record of several rows)."""
    return sum(rows_in(data) for _, data in iter_records(spool))


async def _writer_row(pool, writer: str, path: str):
    return await pool.fetchrow("SELECT last_seq, gaps, duplicates FROM writers WHERE writer = $1 AND run_path = $2",
                               writer, path)


OFFLINE = """
    import json, producer
    run = producer.init(project={project!r}, mode="offline", config={{"lr": 0.1}})
    print(json.dumps({{"path": run.path, "writer": run.writer_id, "dir": run.dir}}), flush=True)
    for step in range({steps}):
        run.log({{"loss": 1.0 / (step + 1), "acc": step / {steps}}})
    run.finish(quiet=True)
"""


async def test_offline_then_sync_delivers_every_seq_exactly_once_and_twice_is_harmless(
        local_stack: Settings, project: str, pool) -> None:
    steps = 2000
    child = _child(OFFLINE.format(project=project, steps=steps))
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    info = orjson.loads(out.splitlines()[0])
    [spool] = find_spools([Path(info["dir"])])
    records = inspect(spool).total
    assert _spool_rows(spool) == steps + 2 and inspect(spool).unsent == records  # init, rows, finish: all waiting

    assert f"synced {records} event(s)" in _sync(info["dir"])
    assert inspect(spool).unsent == 0
    total = steps + 2
    await eventually_async(lambda: _count_is(pool, info, total), timeout=20)
    assert await _seqs(pool, info["writer"], info["path"]) == list(range(total))
    row = await eventually_async(lambda: _writer_row(pool, info["writer"], info["path"]), timeout=10)
    assert (row["last_seq"], row["gaps"], row["duplicates"]) == (total - 1, 0, 0)
    run = eventually(lambda: (r := producer.Api().run(info["path"])) and r.state == "finished" and r, timeout=20)
    assert run.summary["_step"] == steps - 1
    assert run.config == {"lr": 0.1}

    # (d) sync twice: nothing left to send; and with the side file lost, a full resend is harmless
    assert "synced 0 event(s)" in _sync(info["dir"])
    spool.with_suffix(".acked").unlink()
    assert f"synced {records} event(s)" in _sync(str(spool))
    # the resent events are dropped by event id; wait until the consumer got past them
    await eventually_async(lambda: _consumed_all(pool, info, total), timeout=20)
    row = await _writer_row(pool, info["writer"], info["path"])
    assert row["gaps"] == 0 and row["last_seq"] == total - 1
    assert await _seqs(pool, info["writer"], info["path"]) == list(range(total))
    run = producer.Api().run(info["path"])
    assert run.state == "finished" and run.summary["_step"] == steps - 1


async def _count_is(pool, info, n: int) -> bool:
    return len(await _seqs(pool, info["writer"], info["path"])) == n


async def _consumed_all(pool, info, n: int) -> bool:
    """The consumer group's positions passed the end of the topic as it is now (so a resend was read)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from events.settings import get_settings

    settings = get_settings()
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers)
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(settings.events_topic, p)
                                           for p in range(settings.events_partitions)])
    finally:
        await consumer.stop()
    rows = await pool.fetch("SELECT partition, next_offset FROM consumer_offsets WHERE group_id = $1 AND topic = $2",
                            settings.consumer_group, settings.events_topic)
    done = {r["partition"]: r["next_offset"] for r in rows}
    return all(done.get(tp.partition, 0) >= end for tp, end in ends.items())


KILLED = """
    import json, time, producer
    run = producer.init(project={project!r})
    print(json.dumps({{"path": run.path, "writer": run.writer_id, "dir": run.dir}}), flush=True)
    for step in range({steps}):
        run.log({{"loss": 1.0 / (step + 1)}})
    while run.status().spooled < run.status().written:  # everything on its way to disk
        time.sleep(0.001)
    print("READY", flush=True)
    time.sleep(60)
"""


async def test_sigkill_mid_logging_then_sync_delivers_every_seq_once(local_stack: Settings, project: str, pool) -> None:
    steps = 3000
    # A long linger keeps the last batches unsent when the process dies.
    child = _child(KILLED.format(project=project, steps=steps), RUNLOG_SDK_LINGER_MS="5000")
    info = orjson.loads(child.stdout.readline())
    assert child.stdout.readline().strip() == "READY"
    child.kill()
    child.communicate(timeout=10)
    assert child.returncode == -signal.SIGKILL
    [spool] = find_spools([Path(info["dir"])])
    state = inspect(spool)
    total = steps + 1  # init + rows; no finish
    assert _spool_rows(spool) == total
    assert state.unsent > 0, "every event was acknowledged before the kill; the test proves nothing"

    _sync(info["dir"])
    assert inspect(spool).unsent == 0
    await eventually_async(lambda: _count_is(pool, info, total), timeout=20)
    assert await _seqs(pool, info["writer"], info["path"]) == list(range(total))
    row = await _writer_row(pool, info["writer"], info["path"])
    assert row["gaps"] == 0 and row["last_seq"] == total - 1


SIGTERMED = """
    import json, time, producer
    run = producer.init(project={project!r})
    print(json.dumps({{"path": run.path}}), flush=True)
    for step in range(10):
        run.log({{"loss": step}})
    print("READY", flush=True)
    while True:
        run.log({{"loss": 0.5}})
        time.sleep(0.001)
"""

RAISES = """
    import json, producer
    run = producer.init(project={project!r})
    print(json.dumps({{"path": run.path}}), flush=True)
    run.log({{"loss": 1.0}})
    raise RuntimeError("boom")
"""

FINISHES_AT_EXIT = """
    import json, producer
    run = producer.init(project={project!r})
    print(json.dumps({{"path": run.path}}), flush=True)
    run.log({{"loss": 1.0}})
"""


def test_sigterm_kills_exception_fails_and_exit_finishes(local_stack: Settings, project: str) -> None:
    term = _child(SIGTERMED.format(project=project))
    term_path = orjson.loads(term.stdout.readline())["path"]
    assert term.stdout.readline().strip() == "READY"
    term.send_signal(signal.SIGTERM)
    term.communicate(timeout=30)
    assert term.returncode == -signal.SIGTERM  # the default action still ran

    boom = _child(RAISES.format(project=project))
    out, err = boom.communicate(timeout=30)
    assert boom.returncode == 1 and "RuntimeError: boom" in err
    boom_path = orjson.loads(out.splitlines()[0])["path"]

    done = _child(FINISHES_AT_EXIT.format(project=project))
    out, err = done.communicate(timeout=30)
    assert done.returncode == 0, err
    done_path = orjson.loads(out.splitlines()[0])["path"]

    api = producer.Api()
    for path, state in ((term_path, "killed"), (boom_path, "failed"), (done_path, "finished")):
        eventually(lambda p=path, s=state: api.run(p).state == s, timeout=20)
