"""runlog ingest benchmark: SDK -> Kafka -> consumer -> PostgreSQL, on this machine.

    .venv/bin/python bench/ingest.py            # full run, ~10 minutes
    .venv/bin/python bench/ingest.py --quick    # smaller, under 2 minutes
    .venv/bin/python bench/ingest.py --profile  # also py-spy the consumer during the 4-writer run
    .venv/bin/python bench/ingest.py --points 4000000  # longer ingest phases (default 1M points each)

It starts its OWN stack (``deploy.stack.up``) in ``RUNLOG_HOME=/tmp/runlog-bench`` on ports
Kafka 39092 (controller 39093), PostgreSQL 35432, API 38080, with fresh data each time (the
Kafka jars are kept), and stops it at the end (``--keep`` leaves it running). It never touches
another stack: every RUNLOG_* variable it needs is overridden before runlog code is imported,
and ``up`` refuses ports that are taken.

Phases (see bench/README.md for what each number means):
1. sustained ingest with 1, 4 and 16 writer processes (SDK ``producer``), unthrottled;
2. freshness and consumer lag with 4 writers throttled to half the 4-writer rate;
3. (full mode) a longer run sampling the consumer's RSS;
4. replay of the whole event store (``consumers.replay.replay``);
5. raw ceilings: aiokafka producer (acks=all) and asyncpg COPY into history_blocks and into a
   one-row-per-point history table.
The consumer's RSS is sampled every second throughout; CPU of each process is sampled per phase.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import subprocess
import sys
import threading
import time
import uuid
from bisect import bisect_left
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _stack import cpu_probe, loadavg, start_fresh_stack  # noqa: E402 - bench/ is this script's own folder
from projections.db import HISTORY_POINTS  # noqa: E402

BENCH_HOME = Path(os.environ.get("RUNLOG_BENCH_HOME", "/tmp/runlog-bench"))
BENCH_ENV = {
    "RUNLOG_HOME": str(BENCH_HOME),
    "RUNLOG_BOOTSTRAP_SERVERS": "127.0.0.1:39092",
    "RUNLOG_KAFKA_CONTROLLER_PORT": "39093",
    "RUNLOG_DATABASE_URL": "postgresql://runlog@127.0.0.1:35432/runlog",
    "RUNLOG_API_URL": "http://127.0.0.1:38080",
    "RUNLOG_ENTITY": "bench",
    "RUNLOG_HEARTBEAT_INTERVAL": "3600",  # no heartbeat noise
    "RUNLOG_CRASH_TIMEOUT": "3600",  # the watchdog must not judge the bench runs
    "RUNLOG_WATCHDOG_INTERVAL": "60",
}
# Before any runlog import, and inherited by every process we start (stack services, writers).
os.environ.update(BENCH_ENV)
for _var in ("RUNLOG_API_KEY", "RUNLOG_PROJECT", "RANK"):
    os.environ.pop(_var, None)

KEYS = ["t"] + [f"m{i}" for i in range(9)]  # 10 floats per log() = 10 points; "t" = send time
POLL = 0.02  # seconds between visibility polls


# -- writer processes (spawned) --------------------------------------------------------------


def writer_main(project: str, run_id: str, steps: int, rate: float | None, ready, go, out) -> None:
    """One training process: init a run, wait for the start signal, log ``steps`` rows of 10 floats."""
    import producer

    run = producer.init(project=project, id=run_id, config={"bench": True})
    ready.release()
    go.wait()
    t0 = time.time()
    log = run.log
    if rate is None:
        for step in range(steps):
            now = time.time()
            log({"t": now, "m0": step * 0.5, "m1": 1.0 / (step + 1), "m2": now - t0, "m3": 0.25,
                 "m4": -1.5, "m5": step * 1e-3, "m6": 3.0, "m7": 7.5, "m8": 0.125})
    else:  # paced: catch up to where the clock says we should be, then nap 1 ms
        step = 0
        while step < steps:
            now = time.time()
            due = min(steps, int((now - t0) * rate) + 1)
            while step < due:
                now = time.time()
                log({"t": now, "m0": step * 0.5, "m1": 1.0 / (step + 1), "m2": now - t0, "m3": 0.25,
                     "m4": -1.5, "m5": step * 1e-3, "m6": 3.0, "m7": 7.5, "m8": 0.125})
                step += 1
            time.sleep(0.001)
    t_logged = time.time()
    left = run.transport.flush(120) if hasattr(run, "transport") else None
    t_acked = time.time()
    run.finish(quiet=True)
    out.put({"run_id": run_id, "t0": t0, "t_logged": t_logged, "t_acked": t_acked, "steps": steps,
             "unacked": left, "pid": os.getpid()})


# -- process sampling -------------------------------------------------------------------------


def rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _stat_ticks(pid: int, first: int) -> int:
    """Two adjacent CPU-tick fields of /proc/<pid>/stat, counted after the command name."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[first]) + int(fields[first + 1])
    except (OSError, IndexError):
        return 0


def cpu_ticks(pid: int) -> int:
    return _stat_ticks(pid, 11)  # utime + stime


def child_ticks(pid: int) -> int:
    """CPU ticks of the children ``pid`` has waited for (the replay's worker processes)."""
    return _stat_ticks(pid, 13)  # cutime + cstime


def children_of(ppid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int(d.joinpath("stat").read_text().rsplit(")", 1)[1].split()[1]) == ppid:
                    out.append(int(d.name))
            except (OSError, IndexError, ValueError):
                pass
    return out


def machine_ticks() -> int:
    """Busy CPU ticks of the whole machine (all processes, ours and everyone else's)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields) - fields[3] - fields[4]  # minus idle and iowait


class Sampler(threading.Thread):
    """RSS of each consumer process every second, tagged with the current phase (the largest
    of them is what is reported: each is one process whose memory must stay flat)."""

    def __init__(self, pids: list[int]) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.phase = "idle"
        self.samples: list[tuple[float, str, int]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            sizes = [kb for kb in map(rss_kb, self.pids) if kb is not None]
            if sizes:
                self.samples.append((time.time(), self.phase, max(sizes)))
            self.stopped.wait(1.0)


class CpuMeter:
    """CPU seconds used during a phase by the consumer, Kafka, PostgreSQL (all backends), writers."""

    HZ = os.sysconf("SC_CLK_TCK")

    def __init__(self, pids: dict[str, int], consumers: list[int]) -> None:
        self.pids = pids
        self.consumers = consumers  # all consumer processes together count as "consumer"

    def snapshot(self, writers: list[int] | None = None) -> dict[str, int]:
        snap = {name: cpu_ticks(pid) for name, pid in self.pids.items() if name not in ("postgres", "consumers")}
        snap["consumer"] = sum(cpu_ticks(pid) for pid in self.consumers)
        if writers:
            snap["writers"] = sum(cpu_ticks(p) for p in writers)
        pg = self.pids.get("postgres")
        if pg:
            snap["postgres"] = sum(cpu_ticks(p) for p in [pg, *children_of(pg)])
        snap["bench"] = cpu_ticks(os.getpid())
        snap["machine"] = machine_ticks()
        return snap

    @classmethod
    def diff(cls, a: dict[str, int], b: dict[str, int], seconds: float) -> dict[str, float]:
        """Cores used on average (1.0 = one core busy) per part; "machine" = all processes."""
        return {k: round((b.get(k, 0) - a.get(k, 0)) / cls.HZ / seconds, 2) for k in b}


# -- the bench --------------------------------------------------------------------------------


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))]


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        from events.settings import get_settings

        self.args = args
        self.s = get_settings()
        self.results: dict = {"mode": "quick" if args.quick else "full", "started": time.strftime("%F %T"),
                              "load_before": loadavg(), "cpu_probe_s_before": cpu_probe(), "cores": os.cpu_count()}
        self.ctx = mp.get_context("spawn")
        self.sampler: Sampler | None = None
        self.cpu: CpuMeter | None = None

    # stack ---------------------------------------------------------------------------------

    def start_stack(self) -> None:
        from deploy import stack

        start_fresh_stack(self.s)
        st = stack.status(self.s)
        self.consumers = [st[name] for name in stack.consumer_names(self.s)]
        self.results["consumer_processes"] = len(self.consumers)
        self.pids = {"consumer": st["consumer"], "kafka": st["kafka"], "postgres": st["postgres"]}
        self.sampler = Sampler(self.consumers)
        self.sampler.start()
        self.cpu = CpuMeter({"kafka": st["kafka"], "postgres": st["postgres"]}, self.consumers)

    def stop_stack(self) -> None:
        from deploy import stack

        if self.sampler:
            self.sampler.stopped.set()
        if self.args.keep:
            print("stack left running in", self.s.home)
            return
        stack.down(self.s, say=lambda line: None)
        print("stack stopped")

    # writers + poller ------------------------------------------------------------------------

    async def run_writers(self, name: str, n: int, steps: int, rate: float | None = None,
                          profile_seconds: float = 0) -> dict:
        """Start ``n`` writer processes, let them log, and watch PostgreSQL until all is visible."""
        import asyncpg
        from aiokafka import AIOKafkaConsumer, TopicPartition

        project = f"{name}-{uuid.uuid4().hex[:6]}"
        run_ids = [f"w{i:02d}{uuid.uuid4().hex[:5]}" for i in range(n)]
        ready, go, out = self.ctx.Semaphore(0), self.ctx.Event(), self.ctx.Queue()
        procs = [self.ctx.Process(target=writer_main, args=(project, rid, steps, rate, ready, go, out))
                 for rid in run_ids]
        for p in procs:
            p.start()
        for _ in procs:
            if not await asyncio.to_thread(ready.acquire, True, 120):
                raise RuntimeError("a writer did not start")
        conn = await asyncpg.connect(self.s.database_url)
        kafka = AIOKafkaConsumer(bootstrap_servers=self.s.bootstrap_servers)
        await kafka.start()
        parts = [TopicPartition(self.s.events_topic, p) for p in range(self.s.events_partitions)]
        # wait until the init events are applied, so the clock starts on an idle pipeline
        while await conn.fetchval("SELECT count(*) FROM runs WHERE entity = 'bench' AND project = $1",
                                  project) < n:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        expected_steps = n * steps
        timeline: dict[str, list[tuple[float, int]]] = {r: [] for r in run_ids}  # (seen at, last_step)
        totals: list[tuple[float, int]] = []  # (time, steps visible)
        lag: list[tuple[float, int]] = []
        self.sampler.phase = name  # type: ignore[union-attr]
        wpids = [p.pid for p in procs]
        cpu0, c0 = self.cpu.snapshot(wpids), time.time()  # type: ignore[union-attr]
        prof = None
        if profile_seconds:
            prof = self.start_profile(name, self.pids["consumer"], profile_seconds)
        t_go = time.time()
        go.set()
        last_lag = 0.0
        stmt = await conn.prepare("SELECT run_id, last_step FROM runs WHERE entity = 'bench' AND project = $1")
        deadline = t_go + max(600, steps * 0.01)
        while True:
            rows = await stmt.fetch(project)
            now = time.time()
            total = 0
            for r in rows:
                ls = r["last_step"]
                ls = -1 if ls is None else ls
                tl = timeline[r["run_id"]]
                if not tl or tl[-1][1] != ls:
                    tl.append((now, ls))
                total += ls + 1
            if not totals or totals[-1][1] != total:
                totals.append((now, total))
            if now - last_lag >= 0.5:
                last_lag = now
                ends = await kafka.end_offsets(parts)
                done = await conn.fetchval(
                    "SELECT coalesce(sum(next_offset), 0)::bigint FROM consumer_offsets WHERE topic = $1",
                    self.s.events_topic)
                lag.append((now, sum(ends.values()) - done))
            if total >= expected_steps or now > deadline:
                break
            await asyncio.sleep(POLL)
        t_visible = totals[-1][0]
        cpu1, c1 = self.cpu.snapshot(wpids), time.time()  # type: ignore[union-attr]
        writers = [await asyncio.to_thread(out.get, True, 300) for _ in procs]
        for p in procs:
            await asyncio.to_thread(p.join, 60)
        if prof is not None:
            await asyncio.to_thread(prof.wait)
        await kafka.stop()
        stored = await conn.fetchval(
            """SELECT (SELECT count(*) FROM history h JOIN runs r ON r.pk = h.run_pk
                       WHERE r.entity = 'bench' AND r.project = $1)
                    + (SELECT coalesce(sum(b.n), 0) FROM history_blocks b JOIN runs r ON r.pk = b.run_pk
                       WHERE r.entity = 'bench' AND r.project = $1)""", project)
        res = self.summarize(name, n, steps, rate, t_go, t_visible, totals, writers, stored, lag,
                             CpuMeter.diff(cpu0, cpu1, c1 - c0))
        # The consumer's batches: recorded_at is now() = the batch transaction's start time.
        b = await conn.fetch(
            """SELECT recorded_at, count(*) AS n FROM event_store WHERE run_path LIKE $1 AND type = 'run.log'
               GROUP BY 1 ORDER BY 1""", f"bench/{project}/%")
        sizes = [r["n"] for r in b]
        gaps = [(y["recorded_at"] - x["recorded_at"]).total_seconds() for x, y in zip(b, b[1:])]
        res["consumer_batches"] = {"count": len(sizes), "mean_events": round(sum(sizes) / max(1, len(sizes))),
                                   "max_events": max(sizes, default=0),
                                   "p50_seconds_between": round(pct(gaps, 50), 3),
                                   "mean_seconds_between": round(sum(gaps) / max(1, len(gaps)), 3)}
        print("  batches", json.dumps(res["consumer_batches"]))
        if rate is not None:
            res["freshness"] = await self.freshness(conn, project, timeline)
        await conn.close()
        self.sampler.phase = "idle"  # type: ignore[union-attr]
        return res

    def summarize(self, name, n, steps, rate, t_go, t_visible, totals, writers, stored, lag, cpu) -> dict:
        points = n * steps * len(KEYS)
        first_send = min(w["t0"] for w in writers)
        e2e = t_visible - first_send
        # steady state: the slope between 10% and 90% of the points being visible
        total = n * steps
        lo = next(t for t, v in totals if v >= 0.1 * total)
        hi = next(t for t, v in totals if v >= 0.9 * total)
        lo_v = next(v for t, v in totals if v >= 0.1 * total)
        hi_v = next(v for t, v in totals if v >= 0.9 * total)
        steady = (hi_v - lo_v) * len(KEYS) / (hi - lo) if hi > lo else float("nan")
        logged = max(w["t_logged"] for w in writers) - first_send
        acked = max(w["t_acked"] for w in writers) - first_send
        res = {
            "phase": name, "writers": n, "steps_per_writer": steps, "points": points,
            "rate_limit_steps_per_writer": rate,
            "e2e_seconds": round(e2e, 2),
            "e2e_points_per_s": round(points / e2e),
            "steady_points_per_s_10_90": round(steady),
            "sdk_log_calls_points_per_s": round(points / logged),
            "sdk_acked_points_per_s": round(points / acked),
            "sdk_log_seconds": round(logged, 2), "sdk_acked_seconds": round(acked, 2),
            "history_rows_stored": stored, "complete": stored == points,
            "max_lag_events": max((v for _, v in lag), default=0),
            "p50_lag_events": pct([v for _, v in lag], 50),
            "cpu_cores": cpu, "load": loadavg(),
            # seconds after the first send at which each tenth of the points was visible
            "visible_by_tenth_s": [round(next(t for t, v in totals if v >= k / 10 * total) - first_send, 2)
                                   for k in range(1, 11)],
            "lag_events_by_half_second": [(round(t - first_send, 1), v) for t, v in lag if t >= first_send],
        }
        print(json.dumps(res))
        return res

    async def freshness(self, conn, project: str, timeline: dict[str, list[tuple[float, int]]]) -> dict:
        rows = await conn.fetch(
            f"""SELECT r.run_id, h.step, h.value FROM {HISTORY_POINTS} h JOIN runs r ON r.pk = h.run_pk
               WHERE r.entity = 'bench' AND r.project = $1 AND h.key = 't'""", project)
        delays = []
        for row in rows:
            tl = timeline[row["run_id"]]
            steps = [s for _, s in tl]
            i = bisect_left(steps, row["step"])  # first poll that saw last_step >= step
            if i < len(tl):
                delays.append(tl[i][0] - row["value"])
        res = {"points": len(delays), "p50_ms": round(pct(delays, 50) * 1000, 1),
               "p90_ms": round(pct(delays, 90) * 1000, 1), "p99_ms": round(pct(delays, 99) * 1000, 1),
               "max_ms": round(max(delays) * 1000, 1), "poll_interval_ms": POLL * 1000}
        # Where the time goes: log() (the event's time) -> the consumer's transaction for it starts
        # (event_store.recorded_at is now() of that transaction) -> the bench's poll sees it.
        ev = await conn.fetch(
            """SELECT extract(epoch FROM recorded_at - event_time)::float8 AS to_batch
               FROM event_store WHERE run_path LIKE $1 AND type = 'run.log'""", f"bench/{project}/%")
        to_batch = [r["to_batch"] for r in ev]
        if to_batch:
            res["log_to_batch_start_ms"] = {f"p{q}": round(pct(to_batch, q) * 1000, 1) for q in (50, 90, 99)}
        print("freshness", json.dumps(res))
        return res

    def start_profile(self, name: str, pid: int, seconds: float):
        spy = ROOT / ".venv" / "bin" / "py-spy"
        if not spy.exists():
            print("py-spy not installed; skipping the profile")
            return None
        out = self.s.home / f"profile-{name}.folded"
        self.results.setdefault("profile_files", []).append(str(out))
        return subprocess.Popen([str(spy), "record", "--pid", str(pid), "--duration",
                                 str(int(seconds)), "--rate", "200", "--idle", "--format", "raw", "--output", str(out)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    # replay ------------------------------------------------------------------------------------

    async def replay(self) -> dict:
        import asyncpg

        from consumers.replay import replay
        from events.settings import tune_service_gc
        from projections.db import init_connection

        tune_service_gc()  # as `runlog replay` does
        conn = await asyncpg.connect(self.s.database_url)
        await init_connection(conn)
        events = await conn.fetchval("SELECT count(*) FROM event_store")
        self.sampler.phase = "replay"  # type: ignore[union-attr]
        cpu0, c0 = self.cpu.snapshot(), time.time()  # type: ignore[union-attr]
        workers = self.args.replay_workers or os.cpu_count() or 1  # as `runlog replay` does
        prof = self.start_profile("replay", os.getpid(), 20) if self.args.profile and workers == 1 else None
        w0 = child_ticks(os.getpid())
        r = await replay(conn, workers=workers, dsn=self.s.database_url)
        if prof is not None:
            await asyncio.to_thread(prof.wait)
        cpu = CpuMeter.diff(cpu0, self.cpu.snapshot(), time.time() - c0)  # type: ignore[union-attr]
        cpu["replay_workers"] = round((child_ticks(os.getpid()) - w0) / CpuMeter.HZ / (time.time() - c0), 2)
        self.sampler.phase = "idle"  # type: ignore[union-attr]
        history = await conn.fetchval(
            "SELECT (SELECT count(*) FROM history) + (SELECT coalesce(sum(n), 0) FROM history_blocks)")
        # One seq per log() row and per other event: what the events were before the SDK packed rows.
        rows = await conn.fetchval("SELECT sum(last_seq + 1)::bigint FROM writers WHERE source_kind <> 'watchdog'")
        await conn.close()
        res = {"workers": workers, "events": r.events, "event_store": events, "applied": r.applied,
               "seconds": round(r.seconds, 2), "rows_and_events": rows,
               "events_per_s": round(r.events / r.seconds), "rows_and_events_per_s": round(rows / r.seconds),
               "history_points_per_s": round(history / r.seconds),
               "history_rows": history, "cpu_cores": cpu, "load": loadavg()}
        print("replay", json.dumps(res))
        return res

    # raw ceilings ----------------------------------------------------------------------------

    async def kafka_ceiling(self, messages: int) -> dict:
        from aiokafka import AIOKafkaProducer
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic

        from events import RunLog, RunRef, Source, encode, new_writer_id

        topic = "bench.raw"
        admin = AIOKafkaAdminClient(bootstrap_servers=self.s.bootstrap_servers)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, self.s.events_partitions, 1)])
        except Exception:
            pass
        await admin.close()
        writer = new_writer_id()
        bodies, keys = [], []
        for i in range(2000):
            ref = RunRef(entity="bench", project="raw", run_id=f"r{i % 16:02d}")
            ev = RunLog(run=ref, source=Source(kind="sdk", writer=writer), seq=i,
                        payload={"step": i, "values": {k: float(i) + j / 10 for j, k in enumerate(KEYS)}})
            bodies.append(encode(ev))
            keys.append(ref.path.encode())
        size = sum(map(len, bodies)) / len(bodies)
        out = {"event_bytes": round(size)}
        for label, opts in (("sdk_settings_zstd", {"compression_type": "zstd", "enable_idempotence": True}),
                            ("no_compression", {})):
            prod = AIOKafkaProducer(bootstrap_servers=self.s.bootstrap_servers, acks="all", linger_ms=20,
                                    max_batch_size=1 << 20, **opts)
            await prod.start()
            cpu0, t0 = self.cpu.snapshot(), time.perf_counter()  # type: ignore[union-attr]
            futs = []
            for i in range(messages):
                futs.append(await prod.send(topic, bodies[i % 2000], key=keys[i % 2000]))
                if len(futs) >= 20000:
                    await asyncio.gather(*futs)
                    futs = []
            await asyncio.gather(*futs)
            dt = time.perf_counter() - t0
            cpu = CpuMeter.diff(cpu0, self.cpu.snapshot(), dt)  # type: ignore[union-attr]
            await prod.stop()
            out[label] = {"messages": messages, "seconds": round(dt, 2), "messages_per_s": round(messages / dt),
                          "points_per_s": round(messages * len(KEYS) / dt), "cpu_cores": cpu}
        out.update(self.java_producer_ceiling(topic, bodies, messages * 5))
        out["load"] = loadavg()
        print("kafka ceiling", json.dumps(out))
        return out

    def java_producer_ceiling(self, topic: str, bodies: list[bytes], messages: int) -> dict:
        """Kafka's own producer benchmark (the JVM client, ``ProducerPerformance``) with the same
        event bodies: the broker's ceiling on this machine, without Python in the way."""
        import re

        from deploy.kafka import kafka_dir

        payloads = Path(self.s.home) / "bench-payloads.txt"
        payloads.write_bytes(b"\n".join(bodies))
        out = {}
        for label, props in (("java_zstd_idempotent", ["compression.type=zstd", "enable.idempotence=true"]),
                             ("java_no_compression", [])):
            cpu0, t0 = self.cpu.snapshot(), time.perf_counter()  # type: ignore[union-attr]
            proc = subprocess.run(
                ["java", "-Xmx512m", "-cp", str(kafka_dir(self.s) / "libs" / "*"),
                 "org.apache.kafka.tools.ProducerPerformance", "--topic", topic, "--num-records", str(messages),
                 "--throughput", "-1", "--payload-file", str(payloads), "--producer-props",
                 f"bootstrap.servers={self.s.bootstrap_servers}", "acks=all", "linger.ms=20",
                 "batch.size=1048576", *props],
                capture_output=True, text=True, timeout=600,
            )
            dt = time.perf_counter() - t0
            cpu = CpuMeter.diff(cpu0, self.cpu.snapshot(), dt)  # type: ignore[union-attr]
            # The tool prints progress lines in the same form; the last line is the whole run.
            found = re.findall(r"(\d+) records sent, ([\d.]+) records/sec", proc.stdout)
            if not found:
                out[label] = {"error": (proc.stdout + proc.stderr)[-500:]}
                continue
            sent, rate_text = found[-1]
            rate = float(rate_text)
            out[label] = {"messages": int(sent), "messages_per_s": round(rate),
                          "points_per_s": round(rate * len(KEYS)), "cpu_cores": cpu,
                          "summary": proc.stdout.strip().splitlines()[-1]}
        return out

    async def copy_ceiling(self, points: int) -> dict:
        import asyncpg

        conn = await asyncpg.connect(self.s.database_url)
        out = {}
        batch = 50_000  # 5,000 events x 10 keys, as DESIGN.md's measurements
        for label, ddl in (
            ("history_shape_with_pk", "CREATE TABLE bench_copy (run_pk bigint NOT NULL, key text NOT NULL, "
             "step bigint NOT NULL, value float8, value_json jsonb, rank integer NOT NULL DEFAULT 0, "
             "PRIMARY KEY (run_pk, key, step))"),
            ("history_shape_no_index", "CREATE TABLE bench_copy (run_pk bigint NOT NULL, key text NOT NULL, "
             "step bigint NOT NULL, value float8, value_json jsonb, rank integer NOT NULL DEFAULT 0)"),
            # what the consumer writes now: per transaction one block per (run, key) (steps NULL)
            ("history_blocks", "CREATE TABLE bench_copy (LIKE history_blocks INCLUDING ALL)"),
        ):
            await conn.execute("DROP TABLE IF EXISTS bench_copy")
            await conn.execute(ddl)
            runs = 16
            steps = points // (runs * len(KEYS))
            cpu0, t0 = self.cpu.snapshot(), time.perf_counter()  # type: ignore[union-attr]
            buf = []
            done = 0
            per = batch // (runs * len(KEYS))  # steps per (run, key) in one transaction
            for s0 in range(0, steps, per) if label == "history_blocks" else ():
                s1 = min(steps, s0 + per)
                blocks = [(run, k, s0, s1 - 1, s1 - s0, 0, None, [step + j * 0.1 for step in range(s0, s1)])
                          for run in range(runs) for j, k in enumerate(KEYS)]
                async with conn.transaction():
                    await conn.copy_records_to_table("bench_copy", records=blocks, columns=[
                        "run_pk", "key", "first_step", "last_step", "n", "rank", "steps", "vals"])
                done += len(blocks) * (s1 - s0)
            for step in range(steps) if label != "history_blocks" else ():  # interleaved runs, like a batch
                for run in range(runs):
                    for j, k in enumerate(KEYS):
                        buf.append((run, k, step, step + j * 0.1, None, 0))
                if len(buf) >= batch:
                    async with conn.transaction():
                        await conn.copy_records_to_table("bench_copy", records=buf)
                    done += len(buf)
                    buf = []
            if buf:
                async with conn.transaction():
                    await conn.copy_records_to_table("bench_copy", records=buf)
                done += len(buf)
            dt = time.perf_counter() - t0
            cpu = CpuMeter.diff(cpu0, self.cpu.snapshot(), dt)  # type: ignore[union-attr]
            out[label] = {"points": done, "seconds": round(dt, 2), "points_per_s": round(done / dt),
                          "cpu_cores": cpu}
            await conn.execute("DROP TABLE bench_copy")
        await conn.execute("DROP TABLE IF EXISTS bench_copy")
        await conn.close()
        out["load"] = loadavg()
        print("copy ceiling", json.dumps(out))
        return out

    # the whole thing -------------------------------------------------------------------------

    async def main(self) -> None:
        q = self.args.quick
        r = self.results
        # per phase about the same number of points, split over the writers
        total_steps = (self.args.points or (200_000 if q else 1_000_000)) // len(KEYS)
        r["ingest"] = []
        if self.args.half_only:  # just the freshness phase, at a given total rate
            half_steps = self.args.half_only / len(KEYS) / 4
            r["half_load"] = await self.run_writers("half4", 4, int(half_steps * (10 if q else 45)), rate=half_steps)
            return
        for n in (1, 4, 16):
            prof = 20 if (self.args.profile and n == 4) else 0
            r["ingest"].append(await self.run_writers(f"ingest{n}", n, total_steps // n, profile_seconds=prof))
        rate4 = r["ingest"][1]["e2e_points_per_s"]
        half_steps = rate4 / 2 / len(KEYS) / 4  # steps/s per writer, 4 writers
        seconds = 10 if q else 45
        r["half_load"] = await self.run_writers("half4", 4, int(half_steps * seconds), rate=half_steps)
        r["half_load"]["target_points_per_s"] = round(rate4 / 2)
        if not q:  # a longer run for the consumer's memory: 4 writers, unthrottled, 2x the 4-writer phase
            r["long"] = await self.run_writers("long4", 4, 2 * total_steps // 4)
        r["replay"] = await self.replay()
        r["kafka_ceiling"] = await self.kafka_ceiling(60_000 if q else 200_000)
        r["copy_ceiling"] = await self.copy_ceiling(500_000 if q else 2_000_000)
        r["rss"] = self.rss_report()
        r["ratios"] = self.ratios()
        r["load_after"] = loadavg()
        r["cpu_probe_s_after"] = cpu_probe()

    def rss_report(self) -> dict:
        samples = self.sampler.samples  # type: ignore[union-attr]
        out = {"all": self._rss(samples)}
        for phase in dict.fromkeys(p for _, p, _ in samples):
            out[phase] = self._rss([s for s in samples if s[1] == phase])
        print("rss", json.dumps(out))
        return out

    @staticmethod
    def _rss(samples) -> dict:
        if not samples:
            return {}
        kb = [s[2] for s in samples]
        return {"samples": len(kb), "start_mb": round(kb[0] / 1024, 1), "peak_mb": round(max(kb) / 1024, 1),
                "end_mb": round(kb[-1] / 1024, 1), "min_mb": round(min(kb) / 1024, 1)}

    def ratios(self) -> dict:
        r = self.results
        best = max(x["e2e_points_per_s"] for x in r["ingest"])
        k = r["kafka_ceiling"]["sdk_settings_zstd"]["points_per_s"]
        j = r["kafka_ceiling"].get("java_zstd_idempotent", {}).get("points_per_s")
        c = r["copy_ceiling"]["history_blocks"]["points_per_s"]
        steady = max(x["steady_points_per_s_10_90"] for x in r["ingest"])
        return {"best_e2e_points_per_s": best, "best_steady_points_per_s": steady,
                "vs_aiokafka_producer_ceiling": round(best / k, 3),
                "vs_java_producer_ceiling": round(best / j, 3) if j else None,
                "vs_pg_copy_ceiling_blocks": round(best / c, 3), "vs_goal_500k": round(best / 500_000, 3),
                "steady_vs_goal_500k": round(steady / 500_000, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller phases, under 2 minutes")
    ap.add_argument("--profile", action="store_true", help="py-spy the consumer for 20 s of the 4-writer run")
    ap.add_argument("--half-only", type=float, default=None, metavar="POINTS_PER_S",
                    help="run only the freshness phase (4 paced writers) at this total rate")
    ap.add_argument("--points", type=int, default=None,
                    help="points per ingest phase (default 1M; quick 200k); the long phase logs twice as many")
    ap.add_argument("--replay-workers", type=int, default=None,
                    help="processes for the replay phase (default: one per core, as `runlog replay`)")
    ap.add_argument("--keep", action="store_true", help="leave the bench stack running")
    ap.add_argument("--json", default=None, help="write all results to this file")
    args = ap.parse_args()
    bench = Bench(args)
    t0 = time.time()
    print(f"load {loadavg()} on {os.cpu_count()} cores; home {BENCH_HOME}")
    bench.start_stack()
    try:
        asyncio.run(bench.main())
    finally:
        bench.stop_stack()
    bench.results["wall_seconds"] = round(time.time() - t0, 1)
    path = Path(args.json) if args.json else BENCH_HOME / f"results-{bench.results['mode']}.json"
    path.write_text(json.dumps(bench.results, indent=2))
    print(f"results in {path}; {bench.results['wall_seconds']}s; load now {loadavg()}")


if __name__ == "__main__":
    main()
