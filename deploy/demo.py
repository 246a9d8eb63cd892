"""``runlog demo``: a small simulated distributed training job on the local stack.

Each rank is a real spawned process with its own run in one ``group`` (W&B's recommended
layout for distributed training). Ranks log a noisy, decaying loss; rank 0 tags its run
mid-training; every rank finishes. The runs are then read back through the HTTP API with the
public client and printed.
"""

from __future__ import annotations

import math
import multiprocessing
import random
import time
import uuid

from rich.console import Console
from rich.table import Table

from events.settings import get_settings

from . import stack
from .process import StackError


def train(rank: int, world: int, project: str, group: str, steps: int) -> None:
    """One rank of the simulated job (runs in its own process)."""
    import producer

    rng = random.Random(rank)
    config = {"lr": 3e-4 * (rank + 1), "batch_size": 64, "world_size": world, "model": {"layers": 4, "width": 256}}
    with producer.init(project=project, id=f"{group}-rank{rank}", name=f"{group} rank {rank}", group=group,
                       job_type="train", tags=["demo", f"rank-{rank}"], config=config, rank=rank) as run:
        for step in range(steps):
            loss = 2.5 * math.exp(-step / (steps / 4)) + rng.gauss(0, 0.02)
            run.log({"loss": loss, "acc": 1 - loss / 2.5, "lr": config["lr"], "epoch": step // 50})
            if rank == 0 and step == steps // 2:
                run.tags = run.tags + ("halfway",)
        run.summary["best_loss"] = 2.5 * math.exp(-(steps - 1) / (steps / 4))


def run(ranks: int, steps: int, project: str, console: Console) -> None:
    settings = get_settings()
    if not stack.is_up(settings):
        raise StackError("the local stack is not running; start it with `runlog up` first.")
    group = f"job-{uuid.uuid4().hex[:6]}"
    console.print(f"training {ranks} ranks x {steps} steps as group {group} in project {project} ...",
                  highlight=False)
    started = time.monotonic()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=train, args=(r, ranks, project, group, steps)) for r in range(ranks)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    failed = [i for i, p in enumerate(procs) if p.exitcode != 0]
    if failed:
        raise StackError(f"demo ranks {failed} exited with an error (see the output above).")
    console.print(f"ranks done in {time.monotonic() - started:.1f}s; reading the runs back through "
                  f"{settings.api_url} ...", highlight=False)

    from producer import Api

    api = Api()
    table = Table("run", "state", "tags", "steps", "loss", "best_loss", "lr",
                  title=f"project {project}, group {group}", min_width=100)
    deadline = time.monotonic() + 60
    for rank in range(ranks):
        path = f"{project}/{group}-rank{rank}"  # the client fills in the default entity, as the SDK did
        while True:
            try:
                read = api.run(path)
                if read.state == "finished" and read.summary.get("_step") == steps - 1:
                    break
            except ValueError:
                pass
            if time.monotonic() > deadline:
                raise StackError(f"run {path} was not projected within 60s; see the consumer log in {settings.home}/logs.")
            time.sleep(0.2)
        history = list(read.scan_history(keys=["loss"]))
        table.add_row(read.id, read.state, ", ".join(read.tags), str(len(history)),
                      f"{read.summary['loss']:.4f}", f"{read.summary['best_loss']:.4f}", f"{read.config['lr']:.1e}")
    console.print(table)

