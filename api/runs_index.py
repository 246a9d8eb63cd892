"""An in-memory, columnar copy of each listed project's runs: the runs list is filtered, sorted and
counted on it instead of in PostgreSQL.

Why. A filter on ``config.*`` or ``summary_metrics.*`` costs PostgreSQL ~0.4-0.7 µs per run (it
copies the jsonb, looks up the key and builds a new jsonb value for every comparison), and a
sorted page with its total looks at every run of the project: ~7 ms at 10,000 runs. Here the
same filter is a few numpy comparisons over typed columns (~0.1 ms), and nothing is cached but
the rows: every request evaluates its own filter and order.

How it stays current. Every runs row carries the id of the transaction that last wrote it
(``changed_xid``, migration 0014). A sync is ONE statement that returns its own snapshot's xmin
together with the rows whose ``changed_xid`` is at or above the previous sync's xmin: every
transaction that snapshot did not see has an id at or above it, so no change is missed (a row
read twice is just replaced). Each request syncs first, so what a command has written is seen
(read-your-writes, as with the SQL). A TRUNCATE or a replay's table swap gives ``runs`` a new file
node: the project is then loaded again.

What it answers. Filters and orders whose SQL meaning it reproduces exactly, including SQL's
three-valued logic (a missing key compared with ``$eq`` is unknown, and ``$nor`` of unknown is
not true). Anything else raises :class:`Unsupported` and the caller runs the SQL of
``queries.runs_page_sql``: ``$regex``, order comparisons and sorts on text (PostgreSQL orders
text by its collation), arrays and objects as operands or sort values, non-finite operands, and
integers beyond 2**53 (not exact as float64). A property test holds both paths to the same pages,
totals and cursors.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import numpy as np
import orjson

from .filters import (NOT_NULL, Field, Params, Sort, compile_filter, decode_cursor, encode_cursor, parse_field,
                      parse_time)

# Kinds of a value in a column. For plain columns SQL NULL is MISSING; NULL is JSON's null.
MISSING, NULL, NUMBER, BOOL, STRING, OTHER = range(6)
EXACT = 2**53  # integers up to this are float64 exactly
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)
TOO_BIG_RECHECK_S = 60.0
APPLY_SLICE = 2_000
_ABSENT = object()
NO_TAGS: frozenset[str] = frozenset()

PLAIN = ("state", "name", "run_id", "run_group", "job_type", "notes", "created_at", "updated_at", "heartbeat_at")
PLAIN_INDEX = {column: i for i, column in enumerate(PLAIN)}


class Unsupported(Exception):
    """This filter or order is left to the SQL (its meaning here would not be exactly the SQL's)."""


def _us(t: datetime) -> float:
    return float((t - EPOCH) // MICROSECOND)


class Run:
    """One cached run: the JSON the API serves for it, and what filters and sorts read (~2.4 KB
    for the bench's runs, with their columns).

    config and summary stay JSON text until a filter or an order reads one of their keys: a
    column is built once per key (and kept current), so parsing on demand costs little memory."""

    __slots__ = ("pk", "out", "plain", "tags", "deleted", "config", "summary")

    def __init__(self, row: asyncpg.Record, out: dict[str, Any]) -> None:
        self.pk: int = row["pk"]
        self.out = orjson.Fragment(orjson.dumps(out).decode())  # orjson's bytes keep a 4 KB buffer
        self.plain = tuple(row[column] for column in PLAIN)
        self.tags = frozenset(row["tags"]) if row["tags"] else NO_TAGS
        self.deleted: bool = row["deleted"]
        self.config: str = row["config"]
        self.summary: str = row["summary"]


class Column:
    """One field over all runs: its kind, its number (booleans 0/1, times in µs) and its string code."""

    def __init__(self, n: int) -> None:
        self.kind = np.zeros(n, np.int8)
        self.num = np.zeros(n, np.float64)
        self.code = np.full(n, -1, np.int32)
        self.codes: dict[str, int] = {}
        self.inexact = 0  # how many integers beyond 2**53 it holds
        self.raw: list[Any] = [None] * n  # the value itself (for cursors)

    def grow(self, n: int) -> None:
        extra = n - len(self.kind)
        if extra > 0:
            self.kind = np.concatenate([self.kind, np.zeros(extra, np.int8)])
            self.num = np.concatenate([self.num, np.zeros(extra, np.float64)])
            self.code = np.concatenate([self.code, np.full(extra, -1, np.int32)])
            self.raw.extend([None] * extra)

    def set(self, i: int, value: Any) -> None:
        old = self.raw[i]
        if type(old) is int and abs(old) > EXACT:
            self.inexact -= 1
        self.raw[i] = value
        kind, num, code = MISSING, 0.0, -1
        t = type(value)
        if value is _ABSENT:
            self.raw[i] = None
        elif value is None:
            kind = NULL
        elif t is str:
            kind = STRING
            code = self.codes.setdefault(value, len(self.codes))
        elif t is bool:
            kind, num = BOOL, float(value)
        elif t is float:
            kind, num = NUMBER, value
        elif t is int:
            kind = NUMBER
            if abs(value) > EXACT:
                self.inexact += 1
            else:
                num = float(value)
        elif t is datetime:
            kind, num = NUMBER, _us(value)
        else:
            kind = OTHER
        self.kind[i], self.num[i], self.code[i] = kind, num, code


def _getter(f: Field) -> Callable[[Run], Any]:
    """A field's value in a run; _ABSENT for a missing JSON key or an SQL NULL."""
    if f.kind == "json":
        source, path = f.column, f.path

        def get(run: Run) -> Any:
            # orjson reads integers beyond 64 bits as floats; no stored value has one (orjson
            # wrote every stored number), and a float64 read back is what PostgreSQL compares.
            value: Any = orjson.loads(getattr(run, source))
            for part in path:
                if type(value) is dict:
                    value = value.get(part, _ABSENT)
                elif type(value) is list:  # `#>` would take a numeric part as an array index
                    raise Unsupported("a key path through an array")
                else:
                    return _ABSENT
            return value
        return get
    i = PLAIN_INDEX[f.column]

    def get_plain(run: Run) -> Any:
        value = run.plain[i]
        return _ABSENT if value is None else value
    return get_plain


# -- three-valued logic: a condition is a pair of masks (true, false); neither means unknown --


Truth = tuple[np.ndarray, np.ndarray]


def _and(a: Truth, b: Truth) -> Truth:
    return a[0] & b[0], a[1] | b[1]


def _or(a: Truth, b: Truth) -> Truth:
    return a[0] | b[0], a[1] & b[1]


def _known(true: np.ndarray, unknown: np.ndarray | None = None) -> Truth:
    if unknown is None:
        return true, ~true
    return true & ~unknown, ~true & ~unknown


class ProjectRuns:
    """The runs of one project, as of the last sync."""

    def __init__(self) -> None:
        self.runs: list[Run] = []
        self.position: dict[int, int] = {}
        self.pks = np.zeros(0, np.int64)
        self.deleted = np.zeros(0, bool)
        self.columns: dict[Field, Column] = {}
        self.snap_xmin = 0
        self.filenode: int | None = None
        self.lock = asyncio.Lock()

    def __len__(self) -> int:
        return len(self.runs)

    def apply(self, rows: list[asyncpg.Record], run_dict: Callable[[asyncpg.Record], dict[str, Any]]) -> None:
        changed = []
        for row in rows:
            if row["pk"] is None:
                continue  # the snapshot row of a sync that found no change
            run = Run(row, run_dict(row))
            i = self.position.get(run.pk)
            if i is None:
                i = self.position[run.pk] = len(self.runs)
                self.runs.append(run)
            else:
                self.runs[i] = run
            changed.append(i)
        if not changed:
            return
        n = len(self.runs)
        if n > len(self.pks):
            self.pks = np.concatenate([self.pks, np.zeros(n - len(self.pks), np.int64)])
            self.deleted = np.concatenate([self.deleted, np.zeros(n - len(self.deleted), bool)])
        for i in changed:
            self.pks[i], self.deleted[i] = self.runs[i].pk, self.runs[i].deleted
        for f, col in list(self.columns.items()):
            col.grow(n)
            get = _getter(f)
            try:
                for i in changed:
                    col.set(i, get(self.runs[i]))
            except Unsupported:  # a key path now runs through an array: that field goes to the SQL
                del self.columns[f]

    def column(self, f: Field) -> Column:
        col = self.columns.get(f)
        if col is None:
            get = _getter(f)
            col = Column(len(self.runs))
            for i, run in enumerate(self.runs):
                col.set(i, get(run))
            self.columns[f] = col
        return col

    # -- filters -------------------------------------------------------------------------------

    def where(self, filters: Any, include_deleted: bool) -> np.ndarray:
        live = np.ones(len(self.runs), bool) if include_deleted else ~self.deleted
        if filters is None:
            return live
        return live & self._node(filters)[0]

    def _all(self, value: bool) -> Truth:
        n = len(self.runs)
        return (np.ones(n, bool), np.zeros(n, bool)) if value else (np.zeros(n, bool), np.ones(n, bool))

    def _node(self, node: dict[str, Any]) -> Truth:
        result = self._all(True)
        for key, value in node.items():
            if key == "$and":
                part = self._all(True)
                for sub in value:
                    part = _and(part, self._node(sub))
            elif key in ("$or", "$nor"):
                part = self._all(False)
                for sub in value:
                    part = _or(part, self._node(sub))
                if key == "$nor":
                    part = (part[1], part[0])
            else:
                part = self._condition(parse_field(key), value)
            result = _and(result, part)
        return result

    def _condition(self, f: Field, value: Any) -> Truth:
        if isinstance(value, dict) and value and all(k.startswith("$") for k in value):
            result = self._all(True)
            for op, operand in value.items():
                result = _and(result, self._operator(f, op, operand))
            return result
        return self._operator(f, "$eq", value)

    def _operator(self, f: Field, op: str, operand: Any) -> Truth:
        if op == "$regex":
            raise Unsupported("$regex")
        if f.kind == "tags":
            return self._tags(op, operand)
        col = self.column(f)
        missing = col.kind == MISSING
        if op == "$exists":
            return _known(~missing if operand else missing)
        if f.kind == "json":
            if op == "$eq":
                if operand is None:
                    return _known(missing | (col.kind == NULL))
                return _known(self._json_equal(col, operand), missing)
            if op == "$ne":
                if operand is None:
                    return _known(~missing & (col.kind != NULL))
                return _known(~self._json_equal(col, operand))
            if op in ("$in", "$nin"):  # EXISTS over the list: true or false, never unknown
                found = np.zeros(len(col.kind), bool)
                for item in operand:
                    found |= (col.kind == NULL) if item is None else self._json_equal(col, item)
                return _known(found if op == "$in" else ~found)
            kind = BOOL if type(operand) is bool else NUMBER
            if kind is NUMBER and not _exact_number(operand) or col.inexact:
                raise Unsupported("order comparison with this operand")
            return _known((col.kind == kind) & _compare(op, col.num, float(operand)), missing)
        # state, name, run_id, group, job_type and notes (text), and the times
        if f.kind != "time" and op in ("$lt", "$lte", "$gt", "$gte"):
            raise Unsupported("order comparison of text (the database's collation)")
        if op in ("$eq", "$ne") and operand is None:
            return _known(missing if op == "$eq" else ~missing)
        if op in ("$eq", "$ne"):
            equal = self._plain_equal(f, col, operand)
            return _known(equal, missing) if op == "$eq" else _known(~equal)
        if op in ("$in", "$nin"):
            if f.kind == "time":
                found = np.isin(col.num, [_us(parse_time(f.name, item)) for item in operand]) & ~missing
            else:
                found = np.isin(col.code, [col.codes.get(item, -2) for item in operand])
            return _known(found, missing) if op == "$in" else _known(~found)
        return _known(_compare(op, col.num, _us(parse_time(f.name, operand))), missing)

    @staticmethod
    def _plain_equal(f: Field, col: Column, value: Any) -> np.ndarray:
        if f.kind == "time":
            return (col.kind == NUMBER) & (col.num == _us(parse_time(f.name, value)))
        return col.code == col.codes.get(value, -2)

    @staticmethod
    def _json_equal(col: Column, value: Any) -> np.ndarray:
        """jsonb equality with a non-null scalar (1 equals 1.0, true never equals 1)."""
        t = type(value)
        if t is str:
            return col.code == col.codes.get(value, -2)
        if t is bool:
            return (col.kind == BOOL) & (col.num == float(value))
        if t in (int, float) and _exact_number(value) and not col.inexact:
            return (col.kind == NUMBER) & (col.num == float(value))
        raise Unsupported("comparison with this value")

    def _tags(self, op: str, operand: Any) -> Truth:
        tags = [r.tags for r in self.runs]
        n = len(tags)
        if op == "$exists":
            has = np.fromiter((bool(t) for t in tags), bool, n)
            return _known(has if operand else ~has)
        wanted = frozenset(operand) if op in ("$in", "$nin") else frozenset((operand,))
        found = np.fromiter((not wanted.isdisjoint(t) for t in tags), bool, n)
        return _known(found if op in ("$eq", "$in") else ~found)

    # -- sorting and paging ----------------------------------------------------------------------

    def page(self, matched: np.ndarray, sort: Sort, per_page: int, after: tuple[Any, int] | None) -> dict[str, Any]:
        """The page of ``matched`` runs in ``sort`` order past ``after`` (a decoded cursor: sort value, pk)."""
        f = sort.field
        if f.kind == "json" or f.column in NOT_NULL and f.kind == "time":
            col = self.column(f)
        else:
            raise Unsupported(f"sort by {f.name}")
        positions = np.flatnonzero(matched)
        kinds = col.kind[positions]
        if f.kind == "json" and (col.inexact or bool(np.any((kinds == STRING) | (kinds == OTHER)))):
            raise Unsupported("sort values other than numbers, booleans and null")
        # jsonb orders null < string < number < boolean < array < object, and the SQL sorts a
        # missing key as JSON null: rank 0 for both, 1 for numbers, 2 for booleans (times: 1).
        rank = np.where(kinds == BOOL, 2, np.where(kinds == NUMBER, 1, 0)).astype(np.int8)
        num = col.num[positions]
        pks = self.pks[positions]
        total = len(positions)
        if after is not None:
            value, after_pk = after
            c_rank, c_num = _sort_key(f, value)
            if sort.descending:
                past = (rank < c_rank) | (rank == c_rank) & ((num < c_num) | (num == c_num) & (pks < after_pk))
            else:
                past = (rank > c_rank) | (rank == c_rank) & ((num > c_num) | (num == c_num) & (pks > after_pk))
            positions, rank, num, pks = positions[past], rank[past], num[past], pks[past]
        order = np.lexsort((pks, num, rank))
        if sort.descending:
            order = order[::-1]
        chosen = positions[order[:per_page + 1]].tolist()
        next_cursor = None
        if len(chosen) > per_page:
            last = chosen[per_page - 1]
            value = col.raw[last] if f.kind == "json" else self.runs[last].plain[PLAIN_INDEX[f.column]]
            next_cursor = encode_cursor(sort, value, self.runs[last].pk)
        return {"runs": [self.runs[i].out for i in chosen[:per_page]], "next_cursor": next_cursor, "total": total}


def _sort_key(f: Field, value: Any) -> tuple[int, float]:
    """(rank, number) of a cursor's sort value; decode_cursor gives JSON values as JSON text."""
    if f.kind == "time":
        return 1, _us(value)
    value = orjson.loads(value)
    if value is None:
        return 0, 0.0
    if type(value) is bool:
        return 2, float(value)
    if type(value) in (int, float) and _exact_number(value):
        return 1, float(value)
    raise Unsupported("cursor value")


def _has_nul(value: Any) -> bool:
    if type(value) is str:
        return "\x00" in value
    if type(value) is dict:
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if type(value) in (list, tuple):
        return any(_has_nul(v) for v in value)
    return False


def _exact_number(value: Any) -> bool:
    if type(value) is int:
        return abs(value) <= EXACT
    return type(value) is float and np.isfinite(value)


def _compare(op: str, left: np.ndarray, right: float) -> np.ndarray:
    if op == "$lt":
        return left < right
    if op == "$lte":
        return left <= right
    if op == "$gt":
        return left > right
    if op == "$gte":
        return left >= right
    raise Unsupported(op)


# -- the index of all projects -----------------------------------------------------------------


class RunsIndex:
    """The cached projects of one API process, least recently used first out past ``max_runs``."""

    def __init__(self, list_columns: str, run_dict: Callable[[asyncpg.Record], dict[str, Any]],
                 max_runs: int = 100_000) -> None:
        self.max_runs = max_runs
        self.run_dict = run_dict
        self.projects: OrderedDict[tuple[str, str], ProjectRuns] = OrderedDict()
        self.too_big: dict[tuple[str, str], float] = {}
        self.sync_sql = f"""
            SELECT s.snap_xmin, s.filenode, r.*
            FROM (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS snap_xmin,
                         pg_relation_filenode(to_regclass('runs'))::bigint AS filenode) s
            LEFT JOIN LATERAL (SELECT pk, {list_columns} FROM runs
                               WHERE entity = $1 AND project = $2 AND changed_xid >= $3::text::xid8) r ON true"""

    async def page(self, conn: asyncpg.Connection, entity: str, project: str, *, filters: Any, sort: Sort,
                   per_page: int, cursor: str | None, include_deleted: bool) -> dict[str, Any] | None:
        """The runs page, or None when this index does not answer it (the caller runs the SQL)."""
        compile_filter(filters, Params(entity, project))  # the same checks and 400s as the SQL path
        after = decode_cursor(sort, cursor) if cursor else None
        if _has_nul(filters) or _has_nul(sort.field.path):
            return None  # PostgreSQL refuses NUL in text: the SQL path answers its 400
        runs = await self._synced(conn, entity, project)
        if runs is None:
            return None
        try:
            return runs.page(runs.where(filters, include_deleted), sort, per_page, after)
        except Unsupported:
            return None

    async def _synced(self, conn: asyncpg.Connection, entity: str, project: str) -> ProjectRuns | None:
        key = (entity, project)
        runs = self.projects.get(key)
        if runs is None:
            checked = self.too_big.get(key)
            if self.max_runs <= 0 or checked is not None and time.monotonic() - checked < TOO_BIG_RECHECK_S:
                return None
            count = await conn.fetchval(  # stops past the limit: a 1M-run project is not counted through
                "SELECT count(*) FROM (SELECT FROM runs WHERE entity = $1 AND project = $2 LIMIT $3) r",
                entity, project, self.max_runs + 1)
            if count == 0:
                return None  # unknown projects stay out (the SQL path answers their 404)
            if count > self.max_runs:
                self.too_big[key] = time.monotonic()
                return None
            self.too_big.pop(key, None)
            runs = self.projects[key] = ProjectRuns()
        self.projects.move_to_end(key)
        async with runs.lock:
            try:
                rows = await conn.fetch(self.sync_sql, entity, project, str(runs.snap_xmin))
            except asyncpg.UndefinedColumnError:  # a database not yet migrated to 0014: SQL only
                self.projects.pop(key, None)
                return None
            head = rows[0]
            if head["filenode"] != runs.filenode and runs.filenode is not None:
                fresh = ProjectRuns()  # the table was truncated or swapped: load it again
                fresh.lock = runs.lock
                runs = self.projects[key] = fresh
                rows = await conn.fetch(self.sync_sql, entity, project, "0")
                head = rows[0]
            runs.filenode = head["filenode"]
            for start in range(0, len(rows), APPLY_SLICE):
                if start:
                    await asyncio.sleep(0)  # a big load (~20 us a run) lets other requests in between
                runs.apply(rows[start:start + APPLY_SLICE], self.run_dict)
            runs.snap_xmin = head["snap_xmin"]
        if len(runs) > self.max_runs:  # it grew past the limit: the SQL lists it from now on
            self.projects.pop(key, None)
            self.too_big[key] = time.monotonic()
            return None
        self._evict()
        return runs

    def _evict(self) -> None:
        total = sum(len(r) for r in self.projects.values())
        while total > self.max_runs and len(self.projects) > 1:
            _, oldest = self.projects.popitem(last=False)
            total -= len(oldest)

