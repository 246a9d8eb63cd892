"""The SDK's writing side (producer.init / Run) against an in-memory transport: no Kafka."""

from __future__ import annotations

import pytest

import producer
from producer import _run
from producer._transport import DisabledTransport, Transport
from producer.errors import RunlogWarning, UsageError


def logs(events):
    return [(e.payload.step, dict(e.payload.values)) for e in events if e.type == "run.log"]


def of_type(events, event_type):
    return [e for e in events if e.type == event_type]


# -- init ------------------------------------------------------------------------------------------


def test_init_sets_module_run_and_sends_init(sent):
    run = producer.init(entity="ent", project="proj", name="n", group="g", job_type="train",
                        tags=["a", "b", "a"], notes="hi", config={"lr": 0.1, "opt": {"name": "adam"}})
    assert producer.run is run
    assert isinstance(run.transport, Transport)
    assert (run.entity, run.project, run.path) == ("ent", "proj", f"ent/proj/{run.id}")
    assert run.tags == ("a", "b")
    (init,) = sent
    assert init.type == "run.init" and init.seq == 0 and init.key == run.path.encode()
    assert init.source.kind == "sdk" and init.source.writer == run.writer_id and init.source.rank is None
    p = init.payload
    assert (p.name, p.group, p.job_type, p.tags, p.notes, p.state) == ("n", "g", "train", ["a", "b"], "hi", "running")
    assert p.config == {"lr": 0.1, "opt": {"name": "adam"}}
    assert p.host["pid"] > 0 and p.resumed is False and p.starting_step == 0
    run.finish()
    assert producer.run is None


def test_defaults(sent, monkeypatch, tmp_path):
    monkeypatch.setattr(_run, "_user", lambda: "alice")
    monkeypatch.setenv("RUNLOG_HOME", str(tmp_path))  # no development API key there
    monkeypatch.delenv("RUNLOG_API_KEY", raising=False)
    run = producer.init()
    assert run.entity == "alice" and run.project == "uncategorized"
    assert len(run.id) == 8 and set(run.id) <= set("0123456789abcdefghijklmnopqrstuvwxyz")
    adjective, noun, number = run.name.split("-")
    assert adjective and noun and number.isdigit()
    run.finish()
    monkeypatch.setenv("RUNLOG_ENTITY", "team")
    monkeypatch.setenv("RUNLOG_PROJECT", "vision")
    monkeypatch.setenv("RANK", "3")
    run = producer.init(id="myid1234")
    assert run.path == "team/vision/myid1234" and run.rank == 3
    assert sent[-1].source.rank == 3
    run.finish()
    assert producer.init(rank=0).rank == 0


def test_config_accepts_namespace(sent):
    import argparse

    run = producer.init(project="p", config=argparse.Namespace(lr=0.5, epochs=3))
    assert run.config == {"lr": 0.5, "epochs": 3}
    assert run.config.lr == 0.5


@pytest.mark.parametrize("mode", ["bogus", "OFFLINE"])
def test_unsupported_modes(sent, mode):
    with pytest.raises(UsageError, match="mode"):
        producer.init(mode=mode)
    assert producer.run is None and sent == []


def test_reinit_finishes_previous_run(sent):
    first = producer.init(project="p")
    second = producer.init(project="p")
    assert first.finished and producer.run is second
    assert [e.type for e in sent] == ["run.init", "run.finish", "run.init"]


# -- log: step and commit semantics (W&B's) ----------------------------------------------------------


def test_log_auto_increments_step(sent):
    run = producer.init(project="p")
    assert run.step == 0
    producer.log({"loss": 1.0})
    producer.log({"loss": 0.5})
    assert run.step == 2
    assert logs(sent) == [(0, {"loss": 1.0}), (1, {"loss": 0.5})]


def test_commit_false_accumulates_into_one_row(sent):
    run = producer.init(project="p")
    run.log({"a": 1}, commit=False)
    run.log({"b": 2}, commit=False)
    run.log({"a": 3}, commit=False)  # later value of a key wins within the row
    assert logs(sent) == [] and run.step == 0
    run.log({"c": 4})
    assert logs(sent) == [(0, {"a": 3, "b": 2, "c": 4})]
    assert run.step == 1


def test_explicit_step_commits_only_when_a_later_step_arrives(sent):
    run = producer.init(project="p")
    run.log({"a": 1}, step=0)
    run.log({"b": 2}, step=0)
    assert logs(sent) == []  # step given, commit not: the row stays open
    run.log({"a": 5}, step=3)  # higher step: commit the pending row first
    assert logs(sent) == [(0, {"a": 1, "b": 2})]
    assert run.step == 3
    run.log({"b": 6}, step=3, commit=True)
    assert logs(sent)[-1] == (3, {"a": 5, "b": 6})
    assert run.step == 4


def test_higher_step_without_pending_row_just_jumps(sent):
    run = producer.init(project="p")
    run.log({"a": 1}, step=10)
    run.log({"a": 2})  # no step: joins the open row at 10 and commits it
    assert logs(sent) == [(10, {"a": 2})]
    assert run.step == 11


def test_lower_step_is_ignored_with_a_warning(sent):
    run = producer.init(project="p")
    run.log({"a": 1}, step=5, commit=True)
    with pytest.warns(RunlogWarning, match="less than the current step 6"):
        run.log({"a": 2}, step=2)
    assert logs(sent) == [(5, {"a": 1})] and run.step == 6


def test_empty_log_does_not_advance_step(sent):
    run = producer.init(project="p")
    run.log({})
    assert run.step == 0 and logs(sent) == []


class FakeNumpyScalar:
    """Stands in for numpy.float32 & co (numpy is not a dependency): a scalar with ``.item()``."""

    def __init__(self, value):
        self.value = value

    def item(self):
        return self.value


def test_numpy_like_scalars_convert(sent):
    run = producer.init(project="p")
    run.log({"train": {"loss": FakeNumpyScalar(0.5), "n": FakeNumpyScalar(3)}, "ok": True})
    run.log({"x": 1}, step=FakeNumpyScalar(4))
    assert logs(sent) == [(0, {"train.loss": 0.5, "train.n": 3, "ok": True})]
    assert run.step == 4


def test_nested_dicts_flatten(sent):
    run = producer.init(project="p")
    run.log({"train": {"loss": 0.5, "acc": {"top1": 0.9}}, "lr": 1e-3, "hist": (1, 2)})
    assert logs(sent) == [(0, {"train.loss": 0.5, "train.acc.top1": 0.9, "lr": 1e-3, "hist": [1, 2]})]


def test_bad_value_names_key_and_type_and_changes_nothing(sent):
    run = producer.init(project="p")
    run.log({"a": 1}, commit=False)
    with pytest.raises(ValueError, match=r"'model'.*has type object"):
        run.log({"b": 2, "model": object()})
    with pytest.raises(ValueError, match="'\\$x'"):
        run.log({"$x": 1})
    run.log({})
    assert logs(sent) == [(0, {"a": 1})]  # neither bad call touched the pending row


def test_bad_step(sent):
    run = producer.init(project="p")
    for step in (-1, 1.5, "3", True):
        with pytest.raises(UsageError, match="step"):
            run.log({"a": 1}, step=step)
    with pytest.raises(UsageError, match="dict"):
        run.log([("a", 1)])


def test_log_before_init_is_a_clear_error(sent):
    assert producer.run is None
    with pytest.raises(UsageError, match=r"You must call producer.init\(\) before producer.log\(\)"):
        producer.log({"a": 1})


def test_log_after_finish(sent):
    run = producer.init(project="p")
    run.finish()
    with pytest.raises(UsageError, match=r"You must call producer.init\(\)"):
        producer.log({"a": 1})
    with pytest.raises(UsageError, match="finished"):
        run.log({"a": 1})


def test_summary_follows_logged_values_without_events(sent):
    run = producer.init(project="p")
    run.log({"loss": 1.0, "acc": 0.1})
    run.log({"loss": 0.5})
    assert run.summary == {"loss": 0.5, "acc": 0.1}
    assert of_type(sent, "run.summary") == []


# -- seq -----------------------------------------------------------------------------------------------


def test_seq_is_gapless_from_zero_per_writer_and_run_across_failures(sent):
    run = producer.init(project="p")
    run.log({"a": 1})
    with pytest.raises(ValueError):
        run.log({"a": object()})
    with pytest.raises(ValueError):
        run.tags = ("x" * 65,)  # too long for the contract: no event, no seq used
    run.config["b"] = 2
    run.summary["c"] = 3
    run.tags = ("t",)
    run.finish()
    other = producer.init(project="q")
    other.log({"a": 1})
    other.finish()
    first = [e.seq for e in sent if e.run.project == "p"]
    second = [e.seq for e in sent if e.run.project == "q"]
    assert first == list(range(6))  # init, log, config, summary, tags, finish: the failures cost no seq
    assert second == list(range(len(second)))
    assert {e.source.writer for e in sent} == {run.writer_id} and run.writer_id == other.writer_id
    assert len({e.id for e in sent}) == len(sent)


# -- tags, config, summary ---------------------------------------------------------------------------


def test_tags_assignment_emits_deltas(sent):
    run = producer.init(project="p", tags=["a", "b"])
    run.tags = ("b", "c", "d")
    run.tags = run.tags  # no change, no event
    run.tags = ()
    tags = [(e.payload.add, e.payload.remove) for e in of_type(sent, "run.tags")]
    assert tags == [(["c", "d"], ["a"]), ([], ["b", "c", "d"])]
    assert run.tags == ()
    with pytest.raises(UsageError):
        run.tags = "abc"


def test_config_item_set_update_and_attribute_emit(sent):
    run = producer.init(project="p", config={"lr": 0.1})
    run.config["batch"] = 32
    run.config.update({"opt": {"name": "adam", "betas": [0.9, 0.99]}}, epochs=3)
    run.config.dropout = 0.2
    run.config.update({})  # nothing to say
    values = [e.payload.values for e in of_type(sent, "run.config")]
    assert values == [{"batch": 32}, {"opt": {"name": "adam", "betas": [0.9, 0.99]}, "epochs": 3}, {"dropout": 0.2}]
    assert run.config == {"lr": 0.1, "batch": 32, "opt": {"name": "adam", "betas": [0.9, 0.99]}, "epochs": 3, "dropout": 0.2}
    assert run.config.epochs == 3
    with pytest.raises(ValueError, match="'bad'"):
        run.config["bad"] = object()
    assert "bad" not in run.config
    with pytest.raises(UsageError):
        del run.config["lr"]


def test_summary_set_update_and_delete_emit(sent):
    run = producer.init(project="p")
    run.summary["best"] = 0.9
    run.summary.update({"eval": {"acc": 0.8}})
    del run.summary["best"]
    payloads = [(e.payload.set, e.payload.remove) for e in of_type(sent, "run.summary")]
    assert payloads == [({"best": 0.9}, []), ({"eval.acc": 0.8}, []), ({}, ["best"])]
    assert run.summary == {"eval.acc": 0.8}
    with pytest.raises(ValueError, match="'x'"):
        run.summary["x"] = {1, 2}


# -- finish and the context manager ------------------------------------------------------------------


def test_finish_commits_pending_row_and_is_idempotent(sent):
    run = producer.init(project="p")
    run.log({"a": 1}, step=7)
    producer.finish()
    run.finish()
    assert logs(sent) == [(7, {"a": 1})]
    (fin,) = of_type(sent, "run.finish")
    assert fin.payload.exit_code == 0 and fin.payload.signal is None
    assert sent[-1] is fin and run.transport.closed


def test_context_manager_exit_codes(sent):
    with producer.init(project="p") as run:
        run.log({"a": 1})
    assert run.finished and producer.run is None
    with pytest.raises(RuntimeError):
        with producer.init(project="p"):
            raise RuntimeError("boom")
    codes = [e.payload.exit_code for e in of_type(sent, "run.finish")]
    assert codes == [0, 1]


def test_finish_without_run_is_a_no_op(sent):
    producer.finish()
    assert sent == []


# -- disabled mode -------------------------------------------------------------------------------------


def test_disabled_mode_keeps_the_api_and_sends_nothing(sent):
    with producer.init(project="p", mode="disabled", config={"lr": 1}) as run:
        assert run.disabled and isinstance(run.transport, DisabledTransport)
        run.log({"a": 1})
        run.log({"b": 2}, step=5)
        run.config["x"] = 1
        run.summary["y"] = 2
        run.tags = ("t",)
        assert run.step == 5
        with pytest.raises(ValueError):
            run.log({"a": object()})  # still validated, as online
    assert sent == [] and producer.run is None


def test_entity_defaults_to_runlog_entity_then_the_api_keys_entity_then_the_os_user(monkeypatch, tmp_path):
    from events.settings import Settings
    from producer._run import _user, default_entity

    monkeypatch.setenv("RUNLOG_HOME", str(tmp_path))
    monkeypatch.delenv("RUNLOG_API_KEY", raising=False)
    assert default_entity(Settings(entity="team")) == "team"
    assert default_entity(Settings(entity=None, api_key="rl_my_lab_0123abcd")) == "my_lab"
    (tmp_path / "api-key").write_text("rl_devteam_99ff\n")
    assert default_entity(Settings(entity=None, api_key=None)) == "devteam"
    (tmp_path / "api-key").unlink()
    assert default_entity(Settings(entity=None, api_key=None)) == _user()
