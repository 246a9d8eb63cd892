"""``init(resume=...)`` with W&B's meanings, against a stubbed API lookup (the real one is in
tests/integration/test_sdk_resume.py)."""

from __future__ import annotations

import warnings

import pytest

import producer
from producer import _run
from producer.errors import CommError, RunlogWarning, UsageError

PRIOR = {"name": "old-name-1", "state": "finished", "config": {"lr": 0.1, "bs": 32},
         "summary": {"loss": 0.5, "_step": 9}, "deleted": False, "last_step": 9}


@pytest.fixture
def lookups(monkeypatch: pytest.MonkeyPatch):
    """Stub the API: ``lookups.found`` is what it answers (None: no such run; an exception: raised)."""

    class Stub:
        found: object = None
        calls: list = []

    def lookup(settings, entity, project, run_id):
        Stub.calls.append(f"{entity}/{project}/{run_id}")
        if isinstance(Stub.found, Exception):
            raise Stub.found
        return Stub.found

    Stub.calls = []
    monkeypatch.setattr(_run, "_lookup_run", lookup)
    return Stub


@pytest.mark.parametrize("resume", ["allow", True, "must"])
def test_resuming_an_existing_run_continues_its_steps(sent, lookups, resume):
    lookups.found = dict(PRIOR)
    run = producer.init(entity="e", project="p", id="abc", resume=resume, config={"bs": 64})
    assert lookups.calls == ["e/p/abc"]
    assert run.resumed is True and run.starting_step == 10 and run.step == 10
    assert run.name == "old-name-1"
    assert run.config == {"lr": 0.1, "bs": 64}
    assert run.summary["loss"] == 0.5
    (init,) = sent
    assert init.payload.resumed is True and init.payload.starting_step == 10
    assert init.payload.name == "old-name-1" and init.payload.config == {"lr": 0.1, "bs": 64}
    run.log({"loss": 0.4})
    run.log({"loss": 0.3}, step=12)
    run.finish()
    assert [(e.payload.step, e.payload.values["loss"]) for e in sent if e.type == "run.log"] == [(10, 0.4), (12, 0.3)]


def test_a_resumed_run_without_history_starts_at_zero(sent, lookups):
    lookups.found = {**PRIOR, "last_step": None}
    run = producer.init(project="p", id="abc", resume="must")
    assert run.resumed and run.starting_step == 0 == run.step


@pytest.mark.parametrize("resume", ["allow", True])
def test_allow_starts_a_new_run_if_there_is_none(sent, lookups, resume):
    run = producer.init(project="p", id="abc", resume=resume, name="n")
    assert run.resumed is False and run.starting_step == 0 and sent[0].payload.resumed is False


def test_must_needs_an_existing_run(sent, lookups):
    with pytest.raises(UsageError, match="resume='must' but run .*/p/abc does not exist"):
        producer.init(project="p", id="abc", resume="must")
    with pytest.raises(UsageError, match="needs the id"):
        producer.init(project="p", resume="must")
    assert producer.run is None and sent == []


def test_never_refuses_an_existing_run(sent, lookups):
    lookups.found = dict(PRIOR)
    with pytest.raises(UsageError, match="resume='never' but run .*/p/abc already exists"):
        producer.init(project="p", id="abc", resume="never")
    assert sent == []
    lookups.found = None
    run = producer.init(project="p", id="abc", resume="never")
    assert not run.resumed


def test_deleted_runs_are_not_resumed(sent, lookups):
    lookups.found = {**PRIOR, "deleted": True}
    with pytest.raises(UsageError, match="was deleted"):
        producer.init(project="p", id="abc", resume="allow")


def test_unreachable_api(sent, lookups):
    lookups.found = CommError("cannot reach runlog API at http://x: refused")
    with pytest.raises(CommError, match="resume='must': cannot check that run .* exists, the runlog API"):
        producer.init(project="p", id="abc", resume="must")
    for resume in ("allow", "never"):
        with pytest.warns(RunlogWarning, match="cannot reach the runlog API .* starting it as a new run"):
            run = producer.init(project="p", id="abc", resume=resume)
        assert run.resumed is False and run.step == 0
        run.finish()


def test_no_lookup_without_resume_or_id(sent, lookups):
    for kw in ({}, {"resume": None}, {"resume": False}, {"resume": "allow"}, {"resume": "never"}):
        producer.init(project="p", **kw).finish()
    producer.init(project="p", id="abc").finish()
    assert lookups.calls == []


def test_offline_and_disabled(sent, lookups, tmp_path, monkeypatch):
    monkeypatch.setenv("RUNLOG_HOME", str(tmp_path))
    with pytest.raises(UsageError, match="offline mode"):
        producer.init(project="p", id="abc", resume="must", mode="offline")
    with pytest.warns(RunlogWarning, match="offline mode cannot check"):
        producer.init(project="p", id="abc", resume="allow", mode="offline").finish(quiet=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run = producer.init(project="p", id="abc", resume="must", mode="disabled")
    assert not run.resumed and run.url is None
    assert lookups.calls == []


def test_bad_resume_values(sent, lookups):
    for bad in ("auto", "yes", 1):
        with pytest.raises(UsageError, match="resume must be"):
            producer.init(project="p", id="abc", resume=bad)


def test_run_attributes(sent, monkeypatch):
    monkeypatch.setenv("RUNLOG_API_URL", "http://api.example:9000/")
    run = producer.init(entity="e", project="p", id="abc")
    assert run.url == run.get_url() == "http://api.example:9000/api/v1/runs/e/p/abc"
    assert run.get_project_url() == "http://api.example:9000/api/v1/projects/e/p"
    assert run.project_name() == "p" and run.start_time > 0 and run.resumed is False and run.starting_step == 0


def test_ranks_of_one_run_id_agree_on_the_default_name(sent):
    names = {producer.init(project="p", id="shared1", rank=r).name for r in range(3)}
    assert len(names) == 1
    assert _run.generate_name(seed="shared1") == names.pop()
