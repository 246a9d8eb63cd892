"""The rest of the run surface: define_metric, alert, mark_preempting, status, finish's report."""

from __future__ import annotations

import datetime
import signal

import pytest

import producer
from producer import _run
from producer.errors import UsageError


def test_define_metric(sent):
    run = producer.init(project="p")
    run.define_metric("val/*", step_metric="epoch", summary="min, MAX,min", goal="minimize", hidden=False)
    producer.define_metric("acc", summary=["best", "last"], goal="max")
    [a, b] = [e.payload for e in sent if e.type == "run.metric"]
    assert (a.name, a.step_metric, a.summary, a.goal, a.hidden) == ("val/*", "epoch", ["min", "max"], "minimize", False)
    assert (b.name, b.summary, b.goal) == ("acc", ["best", "last"], "maximize")


@pytest.mark.parametrize("kwargs, match", [
    ({"name": ""}, "name"),
    ({"name": 3}, "name"),
    ({"name": "x", "summary": "min,median"}, "unknown summary 'median'"),
    ({"name": "x", "summary": 5}, "summary"),
    ({"name": "x", "summary": ["min", 1]}, "summary entries"),
    ({"name": "x", "goal": "up"}, "goal"),
    ({"name": "x", "summary": "best"}, "needs a goal"),
    ({"name": "x", "hidden": "yes"}, "hidden"),
    ({"name": "x", "step_metric": ""}, "step_metric"),
    ({"name": "x" * 300}, "define_metric"),
])
def test_define_metric_rejects(sent, kwargs, match):
    run = producer.init(project="p")
    with pytest.raises(UsageError, match=match):
        run.define_metric(**kwargs)
    assert [e.type for e in sent] == ["run.init"]


def test_alert(sent):
    run = producer.init(project="p")
    run.alert("loss diverged", "loss is NaN", level="warning", wait_duration=datetime.timedelta(minutes=5))
    producer.alert("done", "ok", wait_duration=30)
    [a, b] = [e.payload for e in sent if e.type == "run.alert"]
    assert (a.title, a.level, a.wait_duration) == ("loss diverged", "WARN", 300.0)
    assert (b.level, b.wait_duration) == ("INFO", 30.0)


@pytest.mark.parametrize("args, kwargs, match", [
    (("", "t"), {}, "title"),
    (("x" * 65, "t"), {}, "title"),
    (("t", 5), {}, "text"),
    (("t", "t"), {"level": "DEBUG"}, "level"),
    (("t", "t"), {"wait_duration": -1}, "wait_duration"),
    (("t", "t"), {"wait_duration": float("inf")}, "wait_duration"),
    (("t", "t"), {"wait_duration": "5m"}, "wait_duration"),
])
def test_alert_rejects(sent, args, kwargs, match):
    run = producer.init(project="p")
    with pytest.raises(UsageError, match=match):
        run.alert(*args, **kwargs)


def test_module_level_functions_need_a_run(sent):
    for call in (lambda: producer.alert("t", "x"), lambda: producer.define_metric("x"), producer.mark_preempting):
        with pytest.raises(UsageError, match="init"):
            call()


def test_mark_preempting_status_and_finish(sent, capsys):
    run = producer.init(project="p")
    producer.mark_preempting()
    run.log({"x": 1})
    assert run.status() == producer.RunStatus(written=3, sent=0, acknowledged=3, spooled=0, spooled_unsent=0)
    run._heartbeat()
    run.finish(exit_code=None)
    run._heartbeat()  # after finish: nothing
    assert [e.type for e in sent] == ["run.init", "run.preempting", "run.log", "run.heartbeat", "run.finish"]
    assert sent[-1].payload.exit_code == 0 and sent[-1].payload.signal is None
    assert capsys.readouterr().err == ""  # everything delivered: nothing to say


def test_finish_reports_what_stays_spooled(sent, monkeypatch, capsys):
    run = producer.init(project="p")
    monkeypatch.setattr(run.transport, "close", lambda timeout=None: 7)
    run.finish()
    err = capsys.readouterr().err
    assert "7 event(s)" in err and "runlog sync" in err
    other = producer.init(project="p")
    monkeypatch.setattr(other.transport, "close", lambda timeout=None: 7)
    other.finish(quiet=True)
    assert capsys.readouterr().err == ""


def test_finish_by_signal_records_it(sent):
    run = producer.init(project="p")
    run._finish_by_signal(int(signal.SIGTERM))
    assert sent[-1].type == "run.finish" and sent[-1].payload.signal == signal.SIGTERM


def test_keyboard_interrupt_in_a_with_block_records_sigint(sent):
    with pytest.raises(KeyboardInterrupt):
        with producer.init(project="p"):
            raise KeyboardInterrupt
    assert sent[-1].payload.signal == signal.SIGINT and sent[-1].payload.exit_code == 1


def test_offline_mode_spools_under_the_run_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("RUNLOG_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    run = producer.init(project="p", id="abc", mode="offline", dir=tmp_path)
    run.log({"x": 1.5})
    assert run.dir == str(tmp_path / "runlog" / f"{run.entity}+p+abc")
    run.finish(quiet=True)
    from producer._sync import find_spools, inspect

    [spool] = find_spools([tmp_path])
    state = inspect(spool)
    assert state.unsent == 3 and state.run_path == run.path
    assert run.status().spooled == 3 and run.status().spooled_unsent == 3
