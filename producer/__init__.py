"""runlog's client SDK, in the style of W&B::

    import producer

    with producer.init(project="mnist", config={"lr": 1e-3}) as run:
        for step in range(100):
            producer.log({"loss": 1 / (step + 1)})

    producer.Api().run("me/mnist/abc12345").scan_history(keys=["loss"])

Light on purpose: pydantic, orjson and (only once a run goes online) aiokafka; nothing from
the server side.
"""

from __future__ import annotations

from ._run import Run, RunStatus, alert, define_metric, finish, init, log, mark_preempting
from .errors import CommError, Error, RunlogWarning, UsageError
from .public import Api

#: The active run of this process (set by ``init``, cleared by its ``finish``), or None.
run: Run | None = None

__all__ = [
    "Api",
    "CommError",
    "Error",
    "Run",
    "RunStatus",
    "RunlogWarning",
    "UsageError",
    "alert",
    "define_metric",
    "finish",
    "init",
    "log",
    "mark_preempting",
    "run",
]
