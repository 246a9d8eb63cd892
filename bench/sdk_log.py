"""runlog SDK hot-path benchmark: the cost of one ``log()`` call, and events/s to Kafka with acks.

    .venv/bin/python bench/sdk_log.py                       # everything, ~1-2 minutes
    .venv/bin/python bench/sdk_log.py --calls 50000 --no-wandb
    .venv/bin/python bench/sdk_log.py --bootstrap 127.0.0.1:29092   # the test stack's broker

Phases (see bench/README.md):
1. per-call ``log()`` of a dict of 10 floats, ``mode="offline"`` (spool only): median, p99,
   p99.9 and max in microseconds over ``--calls`` calls, each timed on its own with
   ``perf_counter_ns`` (the timer's own cost is reported and not subtracted);
2. the same with ``mode="online"`` against a real broker (skipped if none answers);
3. sustained throughput to Kafka with acks=all: ``--kafka-events`` ``log()`` calls back to back,
   then ``flush()``; events/s = events / (first call .. last acknowledgement);
4. the same per-call measurement for ``wandb`` in offline mode, run as a subprocess of this
   script with the Python of a separate venv (``--wandb-python``, default /tmp/wandb-venv;
   wandb is never a dependency of runlog). Skipped with a note if that Python has no wandb.

Phases 2-3 write to their own topic (``--topic``, created if missing, deleted at the end), so a
running stack's consumer does not compete for the CPU; nothing reaches any database.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# The measuring loop, shared verbatim by runlog and wandb (it is exec'd in the wandb subprocess).
MEASURE = r'''
def measure(log, calls, warmup=2000):
    """Time each of ``calls`` calls of log(row) on its own; returns stats in microseconds."""
    import gc, time
    rows = [{f"metric_{k}": (i + k) * 0.001 for k in range(10)} for i in range(256)]
    pc = time.perf_counter_ns
    for i in range(warmup):
        log(rows[i & 255])
    times = [0] * calls
    gc.collect()
    for i in range(calls):
        row = rows[i & 255]
        t0 = pc()
        log(row)
        times[i] = pc() - t0
    empty = [0] * 20000
    for i in range(20000):
        t0 = pc()
        empty[i] = pc() - t0
    times.sort()
    empty.sort()
    at = lambda q: times[min(len(times) - 1, int(q * len(times)))] / 1000
    return {"calls": calls, "median_us": at(0.5), "p90_us": at(0.9), "p99_us": at(0.99), "p999_us": at(0.999),
            "max_us": times[-1] / 1000, "mean_us": sum(times) / len(times) / 1000,
            "timer_overhead_us": empty[len(empty) // 2] / 1000}
'''
exec(MEASURE)  # defines measure()

WANDB_CHILD = MEASURE + r'''
import json, os, sys, time, platform
calls = int(sys.argv[1])
import wandb
run = wandb.init(project="runlog-bench", mode="offline", dir=os.environ["WANDB_DIR"], settings=wandb.Settings(silent=True))
stats = measure(run.log, calls)
t0 = time.monotonic()
run.finish()
stats["finish_s"] = time.monotonic() - t0
stats["wandb_version"] = wandb.__version__
stats["python"] = platform.python_version()
print("RESULT " + json.dumps(stats), flush=True)
'''


def _fmt(stats: dict) -> str:
    return (f"median {stats['median_us']:.2f} us  p90 {stats['p90_us']:.2f}  p99 {stats['p99_us']:.2f}  "
            f"p99.9 {stats['p999_us']:.1f}  max {stats['max_us']:.0f}  mean {stats['mean_us']:.2f}  "
            f"(timer {stats['timer_overhead_us']:.2f} us, {stats['calls']:,} calls)")


def _broker_up(bootstrap: str) -> bool:
    import socket

    host, _, port = bootstrap.split(",")[0].rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return True
    except OSError:
        return False


async def _topic(bootstrap: str, topic: str, create: bool) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        if create and topic not in existing:
            await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
        elif not create and topic in existing:
            await admin.delete_topics([topic])
    finally:
        await admin.close()


def bench_runlog(mode: str, calls: int) -> dict:
    import producer

    run = producer.init(project="bench-sdk", mode=mode, id=f"b{uuid.uuid4().hex[:10]}")
    stats = measure(run.log, calls)
    t0 = time.monotonic()
    run.finish(quiet=True)
    stats["finish_s"] = time.monotonic() - t0
    stats["status"] = run.status().__dict__
    return stats


def bench_throughput(events: int) -> dict:
    import producer

    rows = [{f"metric_{k}": (i + k) * 0.001 for k in range(10)} for i in range(256)]
    run = producer.init(project="bench-sdk", mode="online", id=f"t{uuid.uuid4().hex[:10]}")
    assert run.transport.flush(30) == 0, "the broker did not acknowledge run.init"
    log = run.log
    t0 = time.perf_counter()
    for i in range(events):
        log(rows[i & 255])
    t_logged = time.perf_counter()
    left = run.transport.flush(120)
    t_acked = time.perf_counter()
    status = run.status()
    run.finish(quiet=True)
    return {"events": events, "log_s": t_logged - t0, "acked_s": t_acked - t0, "unacked": left,
            "log_calls_per_s": events / (t_logged - t0), "acked_events_per_s": events / (t_acked - t0),
            "acked": status.acknowledged}


def bench_wandb(python: str, calls: int) -> dict:
    if not Path(python).exists():
        return {"skipped": f"{python} does not exist (create it: python3 -m venv /tmp/wandb-venv && "
                           "/tmp/wandb-venv/bin/pip install wandb)"}
    with tempfile.TemporaryDirectory(prefix="wandb-bench-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "RUNLOG_"))}
        env.update(WANDB_DIR=tmp, WANDB_MODE="offline", WANDB_SILENT="true", WANDB_CONSOLE="off",
                   HOME=os.environ.get("HOME", tmp))
        out = subprocess.run([python, "-c", WANDB_CHILD, str(calls)], env=env, capture_output=True, text=True,
                             timeout=1800, cwd=tmp)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    return {"skipped": f"wandb run failed (exit {out.returncode}): {out.stderr.strip()[-800:]}"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=200_000, help="log() calls timed per runlog phase")
    ap.add_argument("--kafka-events", type=int, default=200_000, help="events for the throughput phase")
    ap.add_argument("--bootstrap", default="127.0.0.1:29092", help="a Kafka broker (the test stack's by default)")
    ap.add_argument("--topic", default=f"runlog.bench-sdk-{uuid.uuid4().hex[:6]}")
    ap.add_argument("--wandb-python", default="/tmp/wandb-venv/bin/python")
    ap.add_argument("--wandb-calls", type=int, default=50_000, help="log() calls timed for wandb")
    ap.add_argument("--no-wandb", action="store_true")
    ap.add_argument("--json", help="also write every number to this file")
    args = ap.parse_args()

    home = tempfile.mkdtemp(prefix="runlog-sdk-bench-")
    os.environ.update(RUNLOG_HOME=home, RUNLOG_BOOTSTRAP_SERVERS=args.bootstrap, RUNLOG_EVENTS_TOPIC=args.topic,
                      RUNLOG_ENTITY="bench")
    os.environ.pop("RANK", None)
    results: dict = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()}
    print(f"runlog SDK benchmark: Python {results['python']}, {results['cpus']} CPUs, spool in {home}")

    results["offline"] = bench_runlog("offline", args.calls)
    print(f"runlog log() offline: {_fmt(results['offline'])}")

    if _broker_up(args.bootstrap):
        asyncio.run(_topic(args.bootstrap, args.topic, create=True))
        try:
            results["online"] = bench_runlog("online", args.calls)
            print(f"runlog log() online:  {_fmt(results['online'])}")
            results["kafka"] = tp = bench_throughput(args.kafka_events)
            print(f"runlog to Kafka (acks=all): {tp['acked_events_per_s']:,.0f} events/s acknowledged "
                  f"({tp['events']:,} events in {tp['acked_s']:.2f} s; the loop itself ran at "
                  f"{tp['log_calls_per_s']:,.0f} log()/s; unacked {tp['unacked']})")
        finally:
            asyncio.run(_topic(args.bootstrap, args.topic, create=False))
    else:
        print(f"no Kafka broker at {args.bootstrap}: online phases skipped")

    if not args.no_wandb:
        results["wandb"] = wb = bench_wandb(args.wandb_python, args.wandb_calls)
        if "skipped" in wb:
            print(f"wandb: skipped: {wb['skipped']}")
        else:
            print(f"wandb {wb['wandb_version']} log() offline (Python {wb['python']}): {_fmt(wb)}")
            ours = results["offline"]["median_us"]
            results["ratio_median"] = wb["median_us"] / ours
            results["ratio_mean"] = wb["mean_us"] / results["offline"]["mean_us"]
            print(f"ratio wandb/runlog, offline log(): median {results['ratio_median']:.0f}x, "
                  f"mean {results['ratio_mean']:.0f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
