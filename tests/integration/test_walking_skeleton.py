"""The walking skeleton through the real servers: SDK -> Kafka -> consumer -> PostgreSQL -> API -> client."""

from __future__ import annotations

import math

import pytest

import producer
from events.settings import Settings

from .helpers import eventually

pytestmark = pytest.mark.integration


def test_run_logged_by_the_sdk_reads_back_through_the_public_client(local_stack: Settings, project: str) -> None:
    run = producer.init(project=project, config={"lr": 0.01, "layers": [64, 32], "opt": {"name": "adam"}},
                        tags=["baseline", "rc"])
    path = run.path
    for step in range(50):
        loss = math.nan if step == 25 else 1.0 / (step + 1)
        run.log({"loss": loss, "acc": step / 50, "phase": "train", "grad": {"norm": math.inf if step == 7 else 1.5}})
    run.tags = run.tags + ("best",)
    run.finish()

    api = producer.Api()
    read = eventually(lambda: (r := api.run(path)) and r.state == "finished" and r)
    assert read.config == {"lr": 0.01, "layers": [64, 32], "opt": {"name": "adam"}}
    assert sorted(read.tags) == ["baseline", "best", "rc"]
    assert read.summary["loss"] == pytest.approx(1 / 50)
    assert read.summary["phase"] == "train"
    assert read.summary["_step"] == 49
    assert read.metadata["pid"] > 0 and read.metadata["python"]  # W&B's run.metadata: the host at init

    rows = list(read.scan_history(page_size=7))
    assert [r["_step"] for r in rows] == list(range(50))
    assert math.isnan(rows[25]["loss"])
    assert rows[7]["grad.norm"] == math.inf
    assert rows[3]["loss"] == pytest.approx(0.25)
    assert rows[3]["phase"] == "train"

    only_loss = list(read.scan_history(keys=["loss"], min_step=10, max_step=19))
    assert [r["_step"] for r in only_loss] == list(range(10, 20))
    assert all(set(r) == {"_step", "loss"} for r in only_loss)


def test_unknown_run_is_a_clear_error(local_stack: Settings, project: str) -> None:
    with pytest.raises(ValueError, match="not found|Could not find"):
        producer.Api().run(f"tester/{project}/missing")


def test_the_wandb_seed_examples_work_with_producer_in_place_of_wandb(local_stack: Settings, project: str) -> None:
    """W&B's documented tag examples, word for word but for the module name."""
    run = producer.init(project=project, tags=["baseline", "paper1"])
    run.log({"accuracy": 0.9})
    run.tags = run.tags + ("release_candidate",)
    run.finish()

    with producer.init(project=project, tags=["ablation"]) as second:
        producer.log({"accuracy": 0.8})
        second_path = second.path

    api = producer.Api()
    first = eventually(lambda: (r := api.run(run.path)) and r.state == "finished" and r)
    assert sorted(first.tags) == ["baseline", "paper1", "release_candidate"]
    assert eventually(lambda: (r := api.run(second_path)) and r.state == "finished" and r).tags == ["ablation"]

    public = api.run(run.path)  # the public-API example: edit tags after the fact
    public.tags.append("tag1")
    public.update()
    assert "tag1" in api.run(run.path).tags
