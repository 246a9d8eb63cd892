"""runlog read-API benchmark (and MLflow on the same data), on this machine.

    .venv/bin/python bench/read_api.py            # full run, ~10 minutes (MLflow 3,000 runs / 200k points, 1M-run page)
    .venv/bin/python bench/read_api.py --quick    # 50 requests per query, MLflow 1,000 runs / 20k points, ~2.6 minutes

It starts its OWN stack (``deploy.stack.up``) in ``RUNLOG_HOME=/tmp/runlog-bench-api`` on ports
Kafka 49092 (controller 49093), PostgreSQL 45432, API 48080, with fresh data each time (the
Kafka jars are kept), and stops it at the end (``--keep`` leaves it up). Every RUNLOG_* variable
is set before runlog code is imported; ``up`` refuses ports that are taken.

The read models are loaded DIRECTLY into PostgreSQL (COPY into ``runs`` and ``history_blocks``), not
through Kafka and the consumer: what is measured is the API's reads, over HTTP, sequentially,
with one keep-alive httpx client. See bench/README.md for what each number means.

MLflow (optional): if ``/tmp/mlflow-venv/bin/mlflow`` exists (``python3 -m venv /tmp/mlflow-venv &&
/tmp/mlflow-venv/bin/pip install mlflow psycopg2-binary``), ``mlflow server`` is started on port
45000 with its backend store in the same PostgreSQL (database ``mlflow``), loaded through the
MLflow client (``create_run`` + ``log_batch`` + ``set_terminated``, threads), and measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _stack import cpu_probe, loadavg, start_fresh_stack  # noqa: E402 - bench/ is this script's own folder

BENCH_HOME = Path(os.environ.get("RUNLOG_BENCH_HOME", "/tmp/runlog-bench-api"))
PG_PORT, API_PORT, KAFKA_PORT, CONTROLLER_PORT, MLFLOW_PORT = 45432, 48080, 49092, 49093, 45000
BENCH_ENV = {
    "RUNLOG_HOME": str(BENCH_HOME),
    "RUNLOG_BOOTSTRAP_SERVERS": f"127.0.0.1:{KAFKA_PORT}",
    "RUNLOG_KAFKA_CONTROLLER_PORT": str(CONTROLLER_PORT),
    "RUNLOG_DATABASE_URL": f"postgresql://runlog@127.0.0.1:{PG_PORT}/runlog",
    "RUNLOG_API_URL": f"http://127.0.0.1:{API_PORT}",
    "RUNLOG_ENTITY": "bench",
    "RUNLOG_HEARTBEAT_INTERVAL": "3600",
    "RUNLOG_CRASH_TIMEOUT": "3600",  # the watchdog must not judge the directly loaded "running" runs
    "RUNLOG_WATCHDOG_INTERVAL": "3600",
}
os.environ.update(BENCH_ENV)  # before any runlog import, inherited by the stack's processes
for _var in ("RUNLOG_API_KEY", "RUNLOG_PROJECT", "RANK", "RUNLOG_API_AUTH_READS"):
    os.environ.pop(_var, None)

import httpx  # noqa: E402
import orjson  # noqa: E402

from projections.db import BLOCK_POINTS, HISTORY_POINTS  # noqa: E402

ENTITY = "bench"
MLFLOW_BIN = Path("/tmp/mlflow-venv/bin")
OPTIMIZERS = ["adam", "adamw", "sgd", "rmsprop"]
STATES = ["finished"] * 7 + ["failed", "crashed", "running"]
MLFLOW_STATUS = {"finished": "FINISHED", "failed": "FAILED", "crashed": "KILLED", "running": "RUNNING"}
T0 = datetime(2026, 1, 1, tzinfo=UTC)

# the measured queries
FILTER_LR = {"$and": [{"config.lr": {"$gt": 0.001}}, {"state": "finished"}]}
FILTER_OPT = {"$and": [{"config.optimizer": "adam"}, {"state": "finished"}]}
MLFLOW_FILTER = "params.optimizer = 'adam' and attributes.status = 'FINISHED'"
ORDER = "-summary_metrics.loss"


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(p / 100 * len(s)) - 1))]


def stats_ms(seconds: list[float]) -> dict:
    ms = [x * 1000 for x in seconds]
    return {"n": len(ms), "p50_ms": round(pct(ms, 50), 2), "p90_ms": round(pct(ms, 90), 2),
            "p99_ms": round(pct(ms, 99), 2), "max_ms": round(max(ms), 2), "mean_ms": round(sum(ms) / len(ms), 2)}


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


# -- data -----------------------------------------------------------------------------------------


def make_run(i: int, rng: random.Random) -> dict:
    """One run's fields; the same generator feeds runlog and MLflow."""
    lr = 10 ** rng.uniform(-5, -1)
    opt = rng.choice(OPTIMIZERS)
    layers = rng.randint(2, 48)
    loss = round(abs(rng.gauss(0.5, 0.3)) + 0.01, 6)
    return {
        "run_id": f"r{i:07d}", "name": f"run-{i}", "state": rng.choice(STATES),
        "created_at": T0 + timedelta(seconds=i * 7),
        "config": {"lr": round(lr, 8), "batch_size": rng.choice([16, 32, 64, 128, 256]), "optimizer": opt,
                   "layers": layers, "dropout": round(rng.uniform(0, 0.5), 3)},
        "summary": {"loss": loss, "acc": round(1 - loss / 2, 6), "val_loss": round(loss * 1.1, 6),
                    "val_acc": round(1 - loss / 1.8, 6), "_step": 1000},
    }


def make_runs(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [make_run(i, rng) for i in range(n)]


def metric_value(step: int) -> float:
    """A decaying loss with noise and a spike every 100k steps (so the sample's extremes matter)."""
    return 2.0 * math.exp(-step / 200_000) + 0.05 * math.sin(step * 0.7) + (5.0 if step % 100_000 == 50_000 else 0)


RUN_COLS = ["entity", "project", "run_id", "name", "state", "config", "summary", "created_at", "updated_at",
            "finished_at", "last_step", "runtime"]


async def copy_runs(conn, project: str, runs: list[dict], batch: int = 50_000) -> float:
    t = time.perf_counter()
    for i in range(0, len(runs), batch):
        recs = []
        for r in runs[i:i + batch]:
            fin = r["created_at"] + timedelta(hours=1) if r["state"] != "running" else None
            recs.append((ENTITY, project, r["run_id"], r["name"], r["state"], orjson.dumps(r["config"]).decode(),
                         orjson.dumps(r["summary"]).decode(), r["created_at"], fin or r["created_at"], fin, 1000,
                         3600.0))
        await conn.copy_records_to_table("runs", columns=RUN_COLS, records=recs)
    return time.perf_counter() - t


async def copy_history(conn, project: str, run_id: str, points: int) -> float:
    t = time.perf_counter()
    pk = await conn.fetchval(
        """INSERT INTO runs (entity, project, run_id, name, state, created_at, updated_at, last_step, summary)
           VALUES ($1, $2, $3, $3, 'finished', $4, $4, $5, $6::text::jsonb) RETURNING pk""",
        ENTITY, project, run_id, T0, points - 1, orjson.dumps({"loss": metric_value(points - 1)}).decode())
    # As the consumer stores points logged in bulk: blocks of BLOCK_POINTS consecutive steps.
    blocks = [(pk, "loss", s, min(points, s + BLOCK_POINTS) - 1, min(points, s + BLOCK_POINTS) - s, 0, None,
               [metric_value(x) for x in range(s, min(points, s + BLOCK_POINTS))])
              for s in range(0, points, BLOCK_POINTS)]
    await conn.copy_records_to_table("history_blocks", records=blocks,
                                     columns=["run_pk", "key", "first_step", "last_step", "n", "rank", "steps", "vals"])
    # The consumer keeps history_chunks in step with history; a direct load rolls up the same way.
    await conn.execute(CHUNKS_FROM_HISTORY, pk)
    return time.perf_counter() - t


CHUNKS_FROM_HISTORY = """
INSERT INTO history_chunks (run_pk, key, chunk, n, first_step, last_step, lo, hi)
SELECT run_pk, key, step / 100, count(*), min(step), max(step),
       min(ARRAY[value, step::float8]), max(ARRAY[value, -step::float8])
FROM {points} h WHERE run_pk = $1 AND value IS NOT NULL
GROUP BY run_pk, key, step / 100
""".format(points=HISTORY_POINTS)


# -- measuring --------------------------------------------------------------------------------------


class LiveRuns:
    """Updates the summaries of a few runs (as training runs' log calls do) before each request: the
    API's runs index then syncs those rows first. Its own event loop: the measuring code is sync."""

    PER_REQUEST = 10

    def __init__(self, database_url: str, project: str) -> None:
        self.url, self.project, self.rng = database_url, project, random.Random(7)

    def __enter__(self) -> "LiveRuns":
        import asyncpg
        self.loop = asyncio.new_event_loop()
        self.conn = self.loop.run_until_complete(asyncpg.connect(self.url))
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.run_until_complete(self.conn.close())
        self.loop.close()

    def touch(self, i: int, kw: dict) -> dict:
        ids = [f"r{self.rng.randrange(10_000):07d}" for _ in range(self.PER_REQUEST)]
        self.loop.run_until_complete(self.conn.execute(
            """UPDATE runs SET summary = jsonb_set(summary, '{loss}', to_jsonb(round(random()::numeric, 6))),
                               updated_at = now()
               WHERE entity = $1 AND project = $2 AND run_id = ANY($3)""", ENTITY, self.project, ids))
        return kw


def timed(client: httpx.Client, reps: int, method: str, url: str, check=None, warmup: int = 3, before=None,
          **kw) -> dict:
    """p50/p99 of ``reps`` requests after ``warmup``; ``before(i)`` runs ahead of each, untimed."""
    for _ in range(warmup):
        r = client.request(method, url, **kw)
        r.raise_for_status()
    times = []
    body = None
    for i in range(reps):
        if before:
            kw = before(i, kw)
        t = time.perf_counter()
        r = client.request(method, url, **kw)
        body = r.content
        times.append(time.perf_counter() - t)
        if r.status_code != 200:
            raise RuntimeError(f"{url}: {r.status_code} {r.text[:300]}")
    out = stats_ms(times)
    out["response_bytes"] = len(body or b"")
    if check:
        out.update(check(orjson.loads(body)))
    return out


def scan_pages(client: httpx.Client, url: str, page_size: int) -> tuple[int, float, int]:
    t = time.perf_counter()
    points, cursor, pages = 0, None, 0
    while True:
        params = {"keys": "loss", "page_size": page_size}
        if cursor:
            params["cursor"] = cursor
        r = client.get(url, params=params)
        r.raise_for_status()
        body = orjson.loads(r.content)
        points += sum(len(row) - 1 for row in body["rows"])
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    return points, time.perf_counter() - t, pages


def scan_ndjson(client: httpx.Client, url: str) -> tuple[int, float]:
    t = time.perf_counter()
    points = 0
    buf = b""
    with client.stream("GET", url, params={"keys": "loss"}, headers={"Accept": "application/x-ndjson"}) as r:
        r.raise_for_status()
        for chunk in r.iter_bytes():
            buf += chunk
            lines = buf.split(b"\n")
            buf = lines.pop()
            for line in lines:
                if line:
                    points += len(orjson.loads(line)) - 1
    return points, time.perf_counter() - t


def scan_stats(runs: list[tuple[int, float]]) -> dict:
    pts = [p / s for p, s in runs]
    return {"repeats": len(runs), "points": runs[0][0], "seconds": [round(s, 2) for _, s in runs],
            "points_per_s_median": round(sorted(pts)[len(pts) // 2]), "points_per_s_best": round(max(pts))}


async def explain(conn, sql: str, args: list) -> dict:
    lines = [r[0] for r in await conn.fetch("EXPLAIN (ANALYZE, BUFFERS) " + sql, *args)]
    exec_ms = next((float(x.split(":")[1].split()[0]) for x in lines if x.startswith("Execution Time")), None)
    return {"execution_ms": exec_ms, "plan": lines}


async def explain_runs(conn, project: str, filters, order: str) -> dict:
    """EXPLAIN ANALYZE the exact statements api.queries.runs_page sends for a first page."""
    from api.filters import parse_order
    from api.queries import runs_page_sql

    sql = runs_page_sql(ENTITY, project, filters=filters, sort=parse_order(order), per_page=50, cursor=None,
                        include_deleted=False)
    out = {"page": await explain(conn, sql.page, list(sql.page_args)), "count_in_page": sql.counts_in_page}
    if not sql.counts_in_page:
        out["count"] = await explain(conn, sql.count, list(sql.count_args))
    return out


# -- MLflow -------------------------------------------------------------------------------------------

MLFLOW_HELPER = r'''
import json, sys, time, concurrent.futures as cf
from mlflow.tracking import MlflowClient
from mlflow.entities import Metric, Param, RunTag
args = json.load(open(sys.argv[1]))
c = MlflowClient(tracking_uri=args["uri"])
out = {}
if args["phase"] == "load":
    exp = c.create_experiment("bench")
    runs = json.load(open(args["runs_file"]))
    def one(r):
        run = c.create_run(exp, start_time=r["start_ms"], run_name=r["name"])
        rid = run.info.run_id
        c.log_batch(rid, metrics=[Metric(k, float(v), r["start_ms"], 0) for k, v in r["summary"].items() if k != "_step"],
                    params=[Param(k, str(v)) for k, v in r["config"].items()])
        if r["status"] != "RUNNING":
            c.set_terminated(rid, status=r["status"], end_time=r["start_ms"] + 3600_000)
        return rid
    t = time.perf_counter()
    with cf.ThreadPoolExecutor(args["threads"]) as pool:
        ids = list(pool.map(one, runs))
    out["runs_seconds"] = time.perf_counter() - t
    big = c.create_run(exp, run_name="big").info.run_id
    t = time.perf_counter()
    n = args["points"]
    import math
    def val(step):
        return 2.0 * math.exp(-step / 200_000) + 0.05 * math.sin(step * 0.7) + (5.0 if step % 100_000 == 50_000 else 0)
    def log(i):
        c.log_batch(big, metrics=[Metric("loss", val(s), 1767225600000 + s, s) for s in range(i, min(n, i + 1000))])
    with cf.ThreadPoolExecutor(args["threads"]) as pool:
        list(pool.map(log, range(0, n, 1000)))
    c.set_terminated(big)
    out["points_seconds"] = time.perf_counter() - t
    out.update(experiment_id=exp, big_run_id=big)
else:  # measure through the client
    exp, reps = args["experiment_id"], args["reps"]
    def search():
        return c.search_runs([exp], filter_string=args["filter"], order_by=["metrics.loss DESC"], max_results=50)
    for _ in range(3):
        res = search()
    ts = []
    for _ in range(reps):
        t = time.perf_counter(); search(); ts.append(time.perf_counter() - t)
    out["search_runs_client_s"] = ts
    out["search_first_loss"] = [r.data.metrics.get("loss") for r in res[:3]]
    out["search_n"] = len(res)
    hs = []
    for _ in range(args["history_repeats"]):
        t = time.perf_counter(); h = c.get_metric_history(args["big_run_id"], "loss"); hs.append((len(h), time.perf_counter() - t))
    out["history"] = hs
print(json.dumps(out))
'''


class MLflow:
    def __init__(self, home: Path, db_url: str) -> None:
        self.home = home
        self.db_url = db_url
        self.uri = f"http://127.0.0.1:{MLFLOW_PORT}"
        self.proc: subprocess.Popen | None = None
        self.helper = home / "mlflow_helper.py"
        self.helper.write_text(MLFLOW_HELPER)

    def start(self) -> float:
        if not port_free(MLFLOW_PORT):
            raise RuntimeError(f"port {MLFLOW_PORT} is taken")
        t = time.time()
        art = self.home / "mlflow-artifacts"
        art.mkdir(parents=True, exist_ok=True)
        self.log = open(self.home / "mlflow-server.log", "wb")
        self.proc = subprocess.Popen(
            [str(MLFLOW_BIN / "mlflow"), "server", "--backend-store-uri", self.db_url, "--host", "127.0.0.1",
             "--port", str(MLFLOW_PORT), "--default-artifact-root", str(art)],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**{k: v for k, v in os.environ.items() if not k.startswith("RUNLOG_")}, "PATH": f"{MLFLOW_BIN}:{os.environ['PATH']}"})
        while time.time() - t < 180:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited; see {self.home / 'mlflow-server.log'}")
            try:
                if httpx.get(f"{self.uri}/health", timeout=1).status_code == 200:
                    return time.time() - t
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError("mlflow server did not come up in 180 s")

    def helper_run(self, args: dict, timeout: float = 3600) -> dict:
        f = self.home / "mlflow_args.json"
        f.write_text(json.dumps({"uri": self.uri, **args}))
        p = subprocess.run([str(MLFLOW_BIN / "python"), str(self.helper), str(f)], capture_output=True, text=True,
                           timeout=timeout, env={k: v for k, v in os.environ.items() if not k.startswith("RUNLOG_")})
        if p.returncode != 0:
            raise RuntimeError(f"mlflow helper failed: {p.stderr[-2000:]}")
        return json.loads(p.stdout.strip().splitlines()[-1])

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)  # its own session: the server and its workers
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait(10)


# -- the bench ------------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        from events.settings import get_settings

        self.args = args
        self.s = get_settings()
        q = args.quick
        self.reps = args.reps or (50 if q else 200)
        self.scan_repeats = 1 if q else 3
        self.mlflow_runs = args.mlflow_runs if args.mlflow_runs is not None else (1000 if q else 3000)
        self.mlflow_points = args.mlflow_points if args.mlflow_points is not None else (20_000 if q else 200_000)
        self.results: dict = {"mode": "quick" if q else "full", "started": time.strftime("%F %T"),
                              "load_before": loadavg(), "cpu_probe_s_before": cpu_probe(), "cores": os.cpu_count(), "reps": self.reps}
        self.api = f"{self.s.api_url}/api/v1"
        self.mlflow: MLflow | None = None

    def start_stack(self) -> None:
        start_fresh_stack(self.s, extra=("mlflow-artifacts",))

    def stop_all(self) -> None:
        from deploy import stack

        if self.mlflow:
            self.mlflow.stop()
            print("mlflow server stopped")
        if self.args.keep:
            print("stack left running in", self.s.home)
            return
        stack.down(self.s, say=lambda line: None)
        ports = {p: port_free(p) for p in (PG_PORT, API_PORT, KAFKA_PORT, CONTROLLER_PORT, MLFLOW_PORT)}
        self.results["ports_free_after"] = ports
        print("stack stopped; ports free:", ports)

    # runlog ----------------------------------------------------------------------------------------

    async def load_runlog(self, project: str, runs: list[dict], hist_run: str, points: int) -> dict:
        import asyncpg

        conn = await asyncpg.connect(self.s.database_url)
        try:
            t_runs = await copy_runs(conn, project, runs)
            t_hist = await copy_history(conn, project + "-hist", hist_run, points) if points else 0.0
            t = time.perf_counter()
            # VACUUM too, as autovacuum would have done on a running system: it sets the visibility
            # map (index-only counts need it) and it is not left to run during the measurements.
            await conn.execute("VACUUM ANALYZE runs")
            await conn.execute("VACUUM ANALYZE history")
            await conn.execute("VACUUM ANALYZE history_blocks")
            await conn.execute("VACUUM ANALYZE history_chunks")
            t_an = time.perf_counter() - t
        finally:
            await conn.close()
        out = {"runs": len(runs), "runs_copy_s": round(t_runs, 2), "history_points": points,
               "history_copy_s": round(t_hist, 2), "analyze_s": round(t_an, 2)}
        print("loaded", project, json.dumps(out))
        return out

    def measure_runlog(self, client: httpx.Client, project: str, hist_project: str | None, reps: int,
                       scan_repeats: int, only_runs: bool = False) -> dict:
        base = f"{self.api}/runs/{ENTITY}/{project}"
        out: dict = {}

        def page_check(body):
            return {"total": body["total"], "returned": len(body["runs"]),
                    "first_loss": [r["summary"]["loss"] for r in body["runs"][:3]]}

        lr_params = {"filters": json.dumps(FILTER_LR), "order": ORDER, "per_page": 50}
        t = time.perf_counter()
        client.get(base, params=lr_params).raise_for_status()
        out["runs_page_first_ms"] = round((time.perf_counter() - t) * 1000, 1)
        print(f"  runs page, first request (the API loads the project's runs): {out['runs_page_first_ms']} ms")
        out["runs_page_lr"] = timed(client, reps, "GET", base, page_check, params=lr_params)
        print("  runs page (lr>0.001, finished)", json.dumps(out["runs_page_lr"]))
        out["runs_page_opt"] = timed(client, reps, "GET", base, page_check, params={
            "filters": json.dumps(FILTER_OPT), "order": ORDER, "per_page": 50})
        print("  runs page (optimizer=adam, finished)", json.dumps(out["runs_page_opt"]))
        if only_runs:
            return out

        def other_threshold(i: int, kw: dict) -> dict:  # a new filter each time: nothing to reuse
            f = {"$and": [{"config.lr": {"$gt": 10 ** -(1 + 4 * ((i * 0.618) % 1))}}, {"state": "finished"}]}
            return {**kw, "params": {**kw["params"], "filters": json.dumps(f)}}
        out["runs_page_lr_varied"] = timed(client, reps, "GET", base, before=other_threshold, params=lr_params)
        print("  runs page (lr > a different threshold each time)", json.dumps(out["runs_page_lr_varied"]))
        with LiveRuns(self.s.database_url, project) as live:
            out["runs_page_lr_live"] = timed(client, reps, "GET", base, page_check, before=live.touch,
                                             params=lr_params)
        print(f"  runs page while {LiveRuns.PER_REQUEST} runs' summaries change before each request",
              json.dumps(out["runs_page_lr_live"]))
        out["runs_page_default"] = timed(client, reps, "GET", base, page_check, params={"per_page": 50})
        print("  runs page (no filter, -created_at)", json.dumps(out["runs_page_default"]))
        out["groups_optimizer"] = timed(client, reps, "GET", f"{base}/groups",
                                        lambda b: {"groups": len(b["groups"]),
                                                   "counts": [g["count"] for g in b["groups"]]},
                                        params={"by": "config.optimizer"})
        print("  groups by config.optimizer", json.dumps(out["groups_optimizer"]))
        if hist_project:
            hbase = f"{self.api}/runs/{ENTITY}/{hist_project}/big/history"
            out["sampled_500"] = timed(client, reps if reps >= 100 else min(reps, 20), "GET", f"{hbase}/sampled",
                                       lambda b: {"rows": len(b["rows"]),
                                                  "max_value": max(r["loss"] for r in b["rows"])},
                                       params={"samples": 500, "keys": "loss"})
            print("  sampled history 500", json.dumps(out["sampled_500"]))
            out["sampled_500_all_keys"] = timed(client, 10, "GET", f"{hbase}/sampled",
                                                lambda b: {"rows": len(b["rows"])}, params={"samples": 500})
            print("  sampled history 500 (keys omitted)", json.dumps(out["sampled_500_all_keys"]))
            pages = [scan_pages(client, hbase, 10_000) for _ in range(scan_repeats)]
            out["scan_pages_10k"] = {**scan_stats([(p, s) for p, s, _ in pages]), "pages": pages[0][2]}
            print("  scan, pages of 10,000", json.dumps(out["scan_pages_10k"]))
            out["scan_ndjson"] = scan_stats([scan_ndjson(client, hbase) for _ in range(scan_repeats)])
            print("  scan, NDJSON stream", json.dumps(out["scan_ndjson"]))
        return out

    async def explain_all(self, project: str, hist_project: str | None, points: int) -> dict:
        import asyncpg

        from api.queries import CHUNK_SAMPLED_SQL, HISTORY_BLOCKS_SQL, HISTORY_SQL
        from projections.db import init_connection

        conn = await asyncpg.connect(self.s.database_url)
        await init_connection(conn)  # jsonb parameters as the API's pool binds them
        try:
            out = {"runs_page_lr": await explain_runs(conn, project, FILTER_LR, ORDER),
                   "runs_page_opt": await explain_runs(conn, project, FILTER_OPT, ORDER)}
            if hist_project:
                pk = await conn.fetchval("SELECT pk FROM runs WHERE entity = $1 AND project = $2 AND run_id = 'big'",
                                         ENTITY, hist_project)
                out["sampled_500"] = await explain(conn, CHUNK_SAMPLED_SQL, [pk, ["loss"], [points // 249 // 100 * 100 + 100]])
                out["scan_page_middle"] = await explain(conn, HISTORY_SQL, [pk, ["loss"], points // 2, None, 10_001])
                out["scan_page_middle_blocks"] = await explain(conn, HISTORY_BLOCKS_SQL,
                                                               [pk, ["loss"], points // 2, None, 10_001])
        finally:
            await conn.close()
        for name, e in out.items():
            if "plan" in e:
                print(f"  EXPLAIN {name}: {e['execution_ms']} ms")
            else:
                count = "in the page" if e["count_in_page"] else f"{e['count']['execution_ms']} ms"
                print(f"  EXPLAIN {name}: page {e['page']['execution_ms']} ms, count {count}")
        return out

    # MLflow ----------------------------------------------------------------------------------------

    async def create_mlflow_db(self) -> str:
        import asyncpg

        conn = await asyncpg.connect(self.s.database_url)
        try:
            await conn.execute("DROP DATABASE IF EXISTS mlflow")
            await conn.execute("CREATE DATABASE mlflow")
        finally:
            await conn.close()
        return f"postgresql+psycopg2://runlog@127.0.0.1:{PG_PORT}/mlflow"  # MLflow 3 defaults postgresql:// to psycopg 3

    def run_mlflow(self, client: httpx.Client, runs: list[dict]) -> dict:
        out: dict = {}
        self.mlflow = MLflow(self.s.home, asyncio.run(self.create_mlflow_db()))
        out["server_start_s"] = round(self.mlflow.start(), 1)
        print(f"mlflow server up in {out['server_start_s']}s")
        rf = self.s.home / "mlflow_runs.json"
        rf.write_text(json.dumps([{"name": r["name"], "config": r["config"], "summary": r["summary"],
                                   "status": MLFLOW_STATUS[r["state"]],
                                   "start_ms": int(r["created_at"].timestamp() * 1000)} for r in runs]))
        load = self.mlflow.helper_run({"phase": "load", "runs_file": str(rf), "threads": 8,
                                       "points": self.mlflow_points})
        out["load"] = {"runs": len(runs), "runs_seconds": round(load["runs_seconds"], 1),
                       "runs_per_s": round(len(runs) / load["runs_seconds"], 1),
                       "points": self.mlflow_points, "points_seconds": round(load["points_seconds"], 1),
                       "points_per_s": round(self.mlflow_points / load["points_seconds"])}
        print("mlflow loaded", json.dumps(out["load"]))
        exp, big = load["experiment_id"], load["big_run_id"]
        # raw REST, same httpx client and method of timing as runlog
        out["search_runs_rest"] = timed(
            client, self.reps, "POST", f"{self.mlflow.uri}/api/2.0/mlflow/runs/search",
            lambda b: {"returned": len(b.get("runs", [])),
                       "first_loss": [next(m["value"] for m in r["data"]["metrics"] if m["key"] == "loss")
                                      for r in b.get("runs", [])[:3]]},
            json={"experiment_ids": [exp], "filter": MLFLOW_FILTER, "order_by": ["metrics.loss DESC"],
                  "max_results": 50})
        print("  mlflow search_runs (REST)", json.dumps(out["search_runs_rest"]))
        m = self.mlflow.helper_run({"phase": "measure", "experiment_id": exp, "big_run_id": big, "reps": self.reps,
                                    "filter": MLFLOW_FILTER, "history_repeats": self.scan_repeats})
        out["search_runs_client"] = {**stats_ms(m["search_runs_client_s"]), "returned": m["search_n"],
                                     "first_loss": m["search_first_loss"]}
        print("  mlflow search_runs (client)", json.dumps(out["search_runs_client"]))
        out["get_metric_history_client"] = scan_stats([tuple(x) for x in m["history"]])
        print("  mlflow get_metric_history (client)", json.dumps(out["get_metric_history_client"]))
        # REST get-history (one call; MLflow pages with max_results/page_token)
        hs = []
        for _ in range(self.scan_repeats):
            t = time.perf_counter()
            n, token = 0, None
            while True:
                params = {"run_id": big, "metric_key": "loss", "max_results": 25000}
                if token:
                    params["page_token"] = token
                r = client.get(f"{self.mlflow.uri}/api/2.0/mlflow/metrics/get-history", params=params, timeout=600)
                r.raise_for_status()
                b = orjson.loads(r.content)
                n += len(b.get("metrics", []))
                token = b.get("next_page_token")
                if not token:
                    break
            hs.append((n, time.perf_counter() - t))
        out["get_metric_history_rest"] = scan_stats(hs)
        print("  mlflow get-history (REST)", json.dumps(out["get_metric_history_rest"]))
        return out

    # main ------------------------------------------------------------------------------------------

    def main(self) -> None:
        r = self.results
        n_runs, points = 10_000, 1_000_000
        runs = make_runs(n_runs)
        r["load"] = asyncio.run(self.load_runlog("runs10k", runs, "big", points))
        client = httpx.Client(timeout=600, limits=httpx.Limits(max_keepalive_connections=4))
        try:
            print(f"runlog, {n_runs} runs, {points}-point metric (load {loadavg()}, cpu probe {cpu_probe()} s)")
            r["runlog"] = self.measure_runlog(client, "runs10k", "runs10k-hist", self.reps, self.scan_repeats)
            r["explain"] = asyncio.run(self.explain_all("runs10k", "runs10k-hist", points))
            r["load_after_runlog"] = loadavg()

            if not self.args.no_mlflow and (MLFLOW_BIN / "mlflow").exists():
                m_runs, m_points = min(self.mlflow_runs, n_runs), self.mlflow_points
                try:
                    r["mlflow"] = self.run_mlflow(client, runs[:m_runs])
                finally:
                    if self.mlflow:
                        self.mlflow.stop()
                # runlog on exactly the MLflow data, when that is smaller
                if m_runs != n_runs or m_points != points:
                    proj = f"cmp{m_runs}"
                    r["load_cmp"] = asyncio.run(self.load_runlog(proj, runs[:m_runs], "big", m_points))
                    print(f"runlog on the MLflow data: {m_runs} runs, {m_points}-point metric")
                    r["runlog_cmp"] = self.measure_runlog(client, proj, proj + "-hist", self.reps,
                                                          self.scan_repeats)
                else:
                    r["runlog_cmp"] = r["runlog"]
                r["ratios"] = self.ratios()
                print("ratios", json.dumps(r["ratios"]))
            else:
                r["mlflow"] = "skipped: /tmp/mlflow-venv/bin/mlflow missing" if not self.args.no_mlflow else "skipped"

            if self.args.million_runs:
                n = self.args.million_runs
                print(f"runlog, {n} runs (runs page only)")
                big_runs = make_runs(n, seed=1)
                r["load_1m"] = asyncio.run(self.load_runlog("runs1m", big_runs, "big", 0))
                del big_runs
                r["runlog_1m"] = self.measure_runlog(client, "runs1m", None, max(10, self.reps // 10), 0,
                                                     only_runs=True)
                r["explain_1m"] = asyncio.run(self.explain_all("runs1m", None, 0))
        finally:
            client.close()
        r["load_after"] = loadavg()
        r["cpu_probe_s_after"] = cpu_probe()

    def ratios(self) -> dict:
        r = self.results
        ours, ml = r["runlog_cmp"], r["mlflow"]
        return {
            "search_p50_mlflow_rest_over_runlog": round(ml["search_runs_rest"]["p50_ms"] / ours["runs_page_opt"]["p50_ms"], 1),
            "search_p99_mlflow_rest_over_runlog": round(ml["search_runs_rest"]["p99_ms"] / ours["runs_page_opt"]["p99_ms"], 1),
            "search_p50_mlflow_client_over_runlog": round(ml["search_runs_client"]["p50_ms"] / ours["runs_page_opt"]["p50_ms"], 1),
            "history_runlog_pages_over_mlflow_client": round(ours["scan_pages_10k"]["points_per_s_median"] / ml["get_metric_history_client"]["points_per_s_median"], 1),
            "history_runlog_ndjson_over_mlflow_client": round(ours["scan_ndjson"]["points_per_s_median"] / ml["get_metric_history_client"]["points_per_s_median"], 1),
            "history_runlog_pages_over_mlflow_rest": round(ours["scan_pages_10k"]["points_per_s_median"] / ml["get_metric_history_rest"]["points_per_s_median"], 1),
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="50 requests per query, MLflow with 1,000 runs / 20k points")
    ap.add_argument("--reps", type=int, default=None, help="requests per measured query (200; quick 50)")
    ap.add_argument("--mlflow-runs", type=int, default=None, help="runs loaded into MLflow (3,000; quick 1,000): ~24 runs/s through the client here")
    ap.add_argument("--mlflow-points", type=int, default=None, help="MLflow metric history points (200k; quick 20k)")
    ap.add_argument("--no-mlflow", action="store_true")
    ap.add_argument("--million-runs", type=int, default=None,
                    help="also load this many runs into another project and time the runs page (full: 1,000,000)")
    ap.add_argument("--keep", action="store_true", help="leave the bench stack running")
    ap.add_argument("--json", default=None, help="write all results to this file")
    args = ap.parse_args()
    if args.million_runs is None and not args.quick:
        args.million_runs = 1_000_000
    bench = Bench(args)
    t0 = time.time()
    print(f"load {loadavg()} on {os.cpu_count()} cores; home {BENCH_HOME}")
    bench.start_stack()
    try:
        bench.main()
    finally:
        bench.stop_all()
    bench.results["wall_seconds"] = round(time.time() - t0, 1)
    path = Path(args.json) if args.json else BENCH_HOME / f"results-{bench.results['mode']}.json"
    path.write_text(json.dumps(bench.results, indent=2, default=str))
    print(f"results in {path}; {bench.results['wall_seconds']}s; load now {loadavg()}")


if __name__ == "__main__":
    main()
