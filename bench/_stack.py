"""What the benchmarks share: a fresh stack of their own, and the machine's load and speed for the record.

Imported after the benchmark has set its RUNLOG_* variables; runlog code is imported lazily.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

# State that makes a run start from empty data; Kafka's jars (kafka/libs) are kept.
FRESH = ("postgres", "kafka/data", "kafka/cluster.id", "spool", "run")


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def cpu_probe() -> float:
    """Seconds for a fixed pure-Python loop (10M additions): how fast this machine's cores are
    right now. The same code measured up to 2x apart on this (shared, virtual) machine within an
    hour; results record the probe so that runs can be compared."""
    t = time.perf_counter()
    total = 0
    for i in range(10_000_000):
        total += i
    return round(time.perf_counter() - t, 3)


def start_fresh_stack(settings: Any, extra: tuple[str, ...] = ()) -> None:
    """Stop a leftover bench stack, wipe its data (not the jars), and bring it up."""
    from deploy import stack

    if any(stack.status(settings).values()):
        print("a bench stack from an earlier run is up in", settings.home, "- stopping it")
        stack.down(settings, say=lambda line: None)
    for sub in (*FRESH, *extra):
        p = settings.home / sub
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    t = time.time()
    stack.up(settings, say=lambda line: print("  " + line))
    print(f"stack up in {time.time() - t:.1f}s")
