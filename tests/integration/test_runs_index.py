"""The in-memory runs index (api/runs_index.py) against the SQL it stands in for, on the real database.

The property: for any runs, filter, order, page size and cursor, a page the index answers is
byte for byte the page the SQL answers (runs, total, next cursor), and a filter the SQL refuses
the index refuses too. The sync tests: writes since the last sync, a TRUNCATE and a replay's
table swap are all seen.
"""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest.mock import patch

import asyncpg
import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import api.runs_index
from api import queries
from api.filters import FilterError, parse_order
from api.runs_index import RunsIndex
from consumers.replay import replay
from events.settings import Settings

from .helpers import Scoped

ENTITY = "ri"
T0 = datetime(2026, 3, 1, tzinfo=UTC)
TIMES = [T0 + timedelta(minutes=m) for m in (0, 1, 1, 2, 5)]  # a repeated time: ties go by pk

json_values = st.one_of(
    st.none(), st.booleans(), st.integers(-2, 2), st.sampled_from([0.5, -0.0, 1.5, 1e20, 2**53 + 1]),
    st.sampled_from(["a", "b", "B", "é", ""]), st.just([1]), st.just({"x": 1}), st.just(float("nan")))
time_texts = st.sampled_from([t.isoformat() for t in TIMES] + ["2026-03-01T00:01:30Z"])


@st.composite
def runs(draw: st.DrawFn) -> list[dict[str, Any]]:
    out = []
    for i in range(draw(st.integers(0, 8))):
        config = {k: draw(json_values) for k in draw(st.sets(st.sampled_from(["a", "b"])))}
        if draw(st.booleans()):
            config["n"] = {"m": draw(json_values)} if draw(st.integers(0, 3)) else [draw(json_values)]
        out.append({
            "run_id": f"r{i}", "name": draw(st.sampled_from([None, "a", "b"])),
            "state": draw(st.sampled_from(["finished", "running", "failed"])),
            "run_group": draw(st.sampled_from([None, "g1", "g2"])),
            "tags": sorted(draw(st.sets(st.sampled_from(["x", "y", "z"])))),
            "config": config,
            "summary": {k: draw(json_values) for k in draw(st.sets(st.sampled_from(["loss", "acc"])))},
            "created_at": draw(st.sampled_from(TIMES)),
            "heartbeat_at": draw(st.sampled_from([None, *TIMES])),
            "deleted": draw(st.integers(0, 4)) == 0,
        })
    return out


FIELDS = ["display_name", "tags", "heartbeat_at", "config.a", "config.n.m", "summary_metrics.loss"]
OPERATORS = ["$eq", "$ne", "$lt", "$lte", "$gt", "$gte", "$in", "$nin", "$exists", "$regex"]


def operands(field: str) -> st.SearchStrategy[Any]:
    if field in ("created_at", "heartbeat_at"):
        return st.one_of(time_texts, st.none())
    if field in ("state", "display_name", "group", "tags"):
        return st.one_of(st.sampled_from(["finished", "running", "a", "b", "g1", "x", "y"]), st.none())
    return json_values


@st.composite
def conditions(draw: st.DrawFn) -> dict[str, Any]:
    field = draw(st.sampled_from(FIELDS))
    op = draw(st.sampled_from(OPERATORS))
    if op in ("$in", "$nin"):
        operand: Any = draw(st.lists(operands(field), max_size=3))
    elif op == "$exists":
        operand = draw(st.booleans())
    elif op == "$regex":
        operand = "^a"
    else:
        operand = draw(operands(field))
    if op == "$eq" and draw(st.booleans()):
        return {field: operand}
    return {field: {op: operand}}


filters = st.one_of(st.none(), st.recursive(
    conditions(), lambda sub: st.one_of(
        st.builds(lambda k, v: {k: v}, st.sampled_from(["$and", "$or", "$nor"]), st.lists(sub, max_size=3)),
        st.builds(lambda a, b: {**a, **b}, sub, sub)),
    max_leaves=5))
orders = st.sampled_from(["-created_at", "+created_at", "-updated_at", "summary_metrics.loss",
                          "-summary_metrics.loss", "+config.a", "-config.n.m", "display_name", "-heartbeat_at"])


async def insert(conn: asyncpg.Connection, project: str, rows: list[dict[str, Any]]) -> None:
    for r in rows:
        await conn.execute(
            """INSERT INTO runs (entity, project, run_id, name, state, run_group, tags, config, summary,
                                 created_at, updated_at, heartbeat_at, deleted)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10, $11, $12)""",
            ENTITY, project, r["run_id"], r["name"], r["state"], r["run_group"], r["tags"], r["config"],
            r["summary"], r["created_at"], r["heartbeat_at"], r["deleted"])


async def all_pages(conn: asyncpg.Connection, project: str, index: RunsIndex | None, *, tree: Any, order: str,
                    per_page: int, include_deleted: bool) -> list[bytes] | None:
    """Every page, as the API would encode it; None if the index left the first page to the SQL."""
    pages, cursor = [], None
    for _ in range(20):
        kw = {"filters": tree, "sort": parse_order(order), "per_page": per_page, "cursor": cursor,
              "include_deleted": include_deleted}
        if index is None:
            page = await queries.runs_page(conn, ENTITY, project, **kw)
        else:
            page = await index.page(conn, ENTITY, project, **kw)
            if page is None:
                return None
        pages.append(orjson.dumps(page))
        cursor = page["next_cursor"]
        if cursor is None:
            return pages
    raise AssertionError("more pages than runs")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(rows=runs(), tree=filters, order=orders, per_page=st.integers(1, 3), include_deleted=st.booleans())
async def test_the_index_answers_exactly_as_the_sql(scoped: Scoped, rows: list[dict[str, Any]], tree: Any,
                                                    order: str, per_page: int, include_deleted: bool) -> None:
    conn, project = scoped.conn, f"p-{uuid.uuid4().hex[:10]}"
    await insert(conn, project, rows)
    index = RunsIndex(queries.LIST_COLUMNS, queries.run_dict)
    kw = {"tree": tree, "order": order, "per_page": per_page, "include_deleted": include_deleted}
    try:
        expected = await all_pages(conn, project, None, **kw)
    except (FilterError, asyncpg.DataError) as exc:
        with pytest.raises(type(exc)):
            await all_pages(conn, project, index, **kw)
        event("refused by both")
        return
    got = await all_pages(conn, project, index, **kw)
    event("left to the SQL" if got is None else "answered by the index")
    if got is not None:
        assert got == expected


# SQL's three-valued logic: a comparison with a missing key or an SQL NULL is unknown, and so is
# its negation; EXISTS ($in, $nin on JSON) and IS DISTINCT FROM ($ne) are never unknown.
TRICKY = [{"$nor": [{"config.a": 1}]}, {"$nor": [{"config.a": {"$gt": 0}}]}, {"$nor": [{"config.a": {"$in": [1]}}]},
          {"config.a": {"$in": [None]}}, {"config.a": {"$nin": [None, 1]}}, {"config.a": {"$ne": 1}},
          {"config.a": None}, {"$nor": [{"config.a": None}]}, {"config.a": {"$ne": None}},
          {"$nor": [{"display_name": "a"}]}, {"$nor": [{"display_name": {"$in": ["a"]}}]},
          {"display_name": {"$nin": ["a"]}}, {"$nor": [{"heartbeat_at": {"$gt": TIMES[0].isoformat()}}]},
          {"$nor": [{"heartbeat_at": TIMES[1].isoformat()}]}, {"$or": [{"config.a": 1}, {"$nor": [{"config.a": 1}]}]},
          {"$nor": [{"$and": [{"config.a": {"$lt": 5}}, {"display_name": "b"}]}]}, {"config.a": True},
          {"config.a": {"$gte": False}}, {"config.a": 1.0}, {"tags": {"$ne": "x"}}, {"tags": {"$exists": False}}]


@pytest.mark.parametrize("tree", TRICKY)
async def test_unknown_and_missing_values_as_in_sql(scoped: Scoped, tree: Any) -> None:
    project = "tricky"
    values = [None, 1, True, False, "1", [1], 0, 2.5, "absent"]
    await insert(scoped.conn, project, [
        {"run_id": f"r{i}", "name": ["a", None, "b"][i % 3], "state": "finished", "run_group": None,
         "tags": ["x"] if i % 2 else [], "config": {} if v == "absent" else {"a": v}, "summary": {},
         "created_at": T0, "heartbeat_at": TIMES[i % 3] if i % 4 else None, "deleted": False}
        for i, v in enumerate(values * 2)])
    index = RunsIndex(queries.LIST_COLUMNS, queries.run_dict)
    kw = {"tree": tree, "order": "-created_at", "per_page": 50, "include_deleted": False}
    got = await all_pages(scoped.conn, project, index, **kw)
    assert got is not None
    assert got == await all_pages(scoped.conn, project, None, **kw)


async def test_the_bench_queries_are_answered_by_the_index(scoped: Scoped) -> None:
    """Not vacuous: the usual filters and orders do not fall back to the SQL."""
    project = "usual"
    await insert(scoped.conn, project, [
        {"run_id": f"r{i}", "name": f"n{i}", "state": "finished" if i % 3 else "failed", "run_group": None,
         "tags": ["x"] if i % 2 else [], "config": {"lr": 10.0 ** -(i % 5), "optimizer": ["adam", "sgd"][i % 2]},
         "summary": {"loss": 1.0 / (i + 1)}, "created_at": T0 + timedelta(seconds=i), "heartbeat_at": None,
         "deleted": i == 7} for i in range(30)])
    index = RunsIndex(queries.LIST_COLUMNS, queries.run_dict)
    for tree, order in itertools.product(
            [None, {"$and": [{"config.lr": {"$gt": 0.001}}, {"state": "finished"}]},
             {"$and": [{"config.optimizer": "adam"}, {"state": "finished"}]}, {"tags": {"$in": ["x"]}},
             {"$or": [{"summary_metrics.loss": {"$lt": 0.1}}, {"created_at": {"$gte": T0.isoformat()}}]}],
            ["-created_at", "-summary_metrics.loss", "+config.lr"]):
        kw = {"tree": tree, "order": order, "per_page": 4, "include_deleted": False}
        got = await all_pages(scoped.conn, project, index, **kw)
        assert got is not None, (tree, order)
        assert got == await all_pages(scoped.conn, project, None, **kw)


async def page_ids(conn: asyncpg.Connection, index: RunsIndex, project: str, order: str = "-summary_metrics.loss",
                   tree: Any = None) -> tuple[list[str], int]:
    page = await index.page(conn, ENTITY, project, filters=tree, sort=parse_order(order), per_page=50, cursor=None,
                            include_deleted=False)
    assert page is not None
    page = orjson.loads(orjson.dumps(page))  # runs are served as JSON fragments
    return [r["run_id"] for r in page["runs"]], page["total"]


def run(i: int, loss: float) -> dict[str, Any]:
    return {"run_id": f"r{i}", "name": None, "state": "running", "run_group": None, "tags": [], "config": {},
            "summary": {"loss": loss}, "created_at": T0, "heartbeat_at": None, "deleted": False}


@pytest.mark.parametrize("applied_in_slices_of", [1, api.runs_index.APPLY_SLICE])
async def test_the_index_sees_every_write_since_its_last_sync(scoped: Scoped, local_stack: Settings,
                                                              applied_in_slices_of: int) -> None:
    with patch.object(api.runs_index, "APPLY_SLICE", applied_in_slices_of):
        await sees_every_write(scoped, local_stack)


async def sees_every_write(scoped: Scoped, local_stack: Settings) -> None:
    conn, project = scoped.conn, "writes"
    await insert(conn, project, [run(1, 0.1), run(2, 0.2)])
    index = RunsIndex(queries.LIST_COLUMNS, queries.run_dict)
    assert await page_ids(conn, index, project) == (["r2", "r1"], 2)
    await insert(conn, project, [run(3, 0.15)])
    await conn.execute("UPDATE runs SET summary = '{\"loss\": 0.3}' WHERE project = $1 AND run_id = 'r1'", project)
    assert await page_ids(conn, index, project) == (["r1", "r2", "r3"], 3)
    await conn.execute("UPDATE runs SET deleted = true WHERE project = $1 AND run_id = 'r2'", project)
    assert await page_ids(conn, index, project) == (["r1", "r3"], 2)
    # a transaction still open at one sync is seen by the next one
    other = await asyncpg.connect(local_stack.database_url)
    try:
        await other.execute(f"SET search_path TO {scoped.schema}")
        tx = other.transaction()
        await tx.start()
        await other.execute("UPDATE runs SET summary = '{\"loss\": 0.9}' WHERE project = $1 AND run_id = 'r3'", project)
        await insert(conn, project, [run(4, 0.01)])  # commits after the open one started
        assert await page_ids(conn, index, project) == (["r1", "r3", "r4"], 3)
        await tx.commit()
    finally:
        await other.close()
    assert await page_ids(conn, index, project) == (["r3", "r1", "r4"], 3)


async def test_the_index_loads_again_after_a_truncate(scoped: Scoped) -> None:
    conn, project = scoped.conn, "truncated"
    await insert(conn, project, [run(1, 0.1), run(2, 0.2)])
    index = RunsIndex(queries.LIST_COLUMNS, queries.run_dict)
    assert await page_ids(conn, index, project) == (["r2", "r1"], 2)
    await conn.execute("TRUNCATE runs")
    await insert(conn, project, [run(5, 0.5)])
    assert await page_ids(conn, index, project) == (["r5"], 1)


async def test_a_replay_keeps_the_rows_transaction_ids_current(scoped: Scoped) -> None:
    """The trigger's function moves with the swapped tables (dropping the scratch schema would
    otherwise drop the trigger), and the index loads the swapped-in table."""
    conn, project = scoped.conn, "replayed"
    await insert(conn, project, [run(1, 0.1)])
    index = RunsIndex(queries.LIST_COLUMNS, queries.run_dict)
    assert await page_ids(conn, index, project) == (["r1"], 1)
    await replay(conn, live_schema=scoped.schema)
    await conn.execute(f"SET search_path TO {scoped.schema}")
    assert await page_ids(conn, index, project) == ([], 0)  # runs inserted by hand have no events
    await insert(conn, project, [run(2, 0.2)])
    before = await conn.fetchval("SELECT changed_xid::text::bigint FROM runs WHERE run_id = 'r2'")
    await conn.execute("UPDATE runs SET summary = '{\"loss\": 0.7}' WHERE run_id = 'r2'")
    assert await conn.fetchval("SELECT changed_xid::text::bigint FROM runs WHERE run_id = 'r2'") > before
    assert await page_ids(conn, index, project) == (["r2"], 1)


async def test_projects_past_the_limit_are_left_to_the_sql(scoped: Scoped) -> None:
    conn = scoped.conn
    await insert(conn, "big", [run(i, 0.1 * i) for i in range(3)])
    await insert(conn, "small", [run(i, 0.1 * i) for i in range(2)])
    await insert(conn, "other", [run(i, 0.1 * i) for i in range(2)])
    index = RunsIndex(queries.LIST_COLUMNS, queries.run_dict, max_runs=2)
    kw = {"filters": None, "sort": parse_order("-created_at"), "per_page": 5, "cursor": None,
          "include_deleted": False}
    assert await index.page(conn, ENTITY, "big", **kw) is None
    assert await index.page(conn, ENTITY, "unknown", **kw) is None  # no runs: the SQL answers the 404
    assert await index.page(conn, ENTITY, "small", **kw) is not None
    assert await index.page(conn, ENTITY, "other", **kw) is not None  # 4 runs held > 2: "small" goes
    assert list(index.projects) == [(ENTITY, "other")]
    await insert(conn, "other", [run(5, 0.5)])  # grows past the limit
    assert await index.page(conn, ENTITY, "other", **kw) is None
    assert not index.projects


async def test_a_database_without_changed_xid_is_listed_by_the_sql(scoped: Scoped) -> None:
    """An API newer than the database's migrations still lists runs (by SQL) instead of failing."""
    await insert(scoped.conn, "old", [run(1, 0.1)])
    await scoped.conn.execute("ALTER TABLE runs DROP COLUMN changed_xid CASCADE")
    index = RunsIndex(queries.LIST_COLUMNS, queries.run_dict)
    kw = {"filters": None, "sort": parse_order("-created_at"), "per_page": 5, "cursor": None,
          "include_deleted": False}
    assert await index.page(scoped.conn, ENTITY, "old", **kw) is None
    page = await queries.runs_page(scoped.conn, ENTITY, "old", index=index, **kw)
    assert page["total"] == 1 and not index.projects
