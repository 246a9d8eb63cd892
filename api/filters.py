"""Run filters and sort keys in W&B's MongoDB-like form, translated to SQL over the ``runs`` table.

Pure: no database, no I/O. :func:`compile_filter` turns a filter tree into SQL text with ``$n``
placeholders plus the list of values those placeholders stand for; :func:`sort_key` does the
same for an ``order`` string. Nothing from a request is ever pasted into the SQL text:

- Field names are looked up in an allow-list (:data:`COLUMNS`) and replaced by fixed column
  expressions; ``config.<a.b.c>`` and ``summary_metrics.<key>`` become
  ``(config #> $n::text[])`` with the key path bound as a ``text[]`` parameter.
- Every compared value is a bound parameter. Operators are looked up in fixed tables.

Comparisons on JSON fields (``config.*``, ``summary_metrics.*``) compare ``jsonb`` with a
``jsonb`` parameter (the pool's codec encodes the Python value, tagging NaN/inf), so
``{"config.lr": 0.1}`` matches the number 0.1 and not the string "0.1", and 1 equals 1.0.
PostgreSQL orders jsonb values of different types by type (null < string < number < boolean <
array < object), so the order operators (``$lt``, ``$gte``, ...) also require the stored value
to be of the same JSON type as the operand (``jsonb_typeof``): ``{"summary_metrics.loss":
{"$lt": 1}}`` never matches a string, a missing key or a NaN (NaN is stored tagged, as an
object). ``$regex`` matches JSON strings only, with PostgreSQL's POSIX regular expressions.

Missing keys: ``$eq``/``$lt``/... don't match them; ``$ne`` and ``$nin`` do (as in MongoDB);
``{"config.x": null}`` matches a missing key and a JSON null; ``$exists`` tests presence.

Tags: ``{"tags": "x"}`` / ``{"tags": {"$eq": "x"}}`` mean the run has tag x, ``$ne`` that it
does not, ``$in`` that it has at least one of a list, ``$nin`` none of them, ``$regex`` that
some tag matches.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from events.values import tag_nonfinite, untag_nonfinite

MAX_DEPTH = 16
MAX_PATH_PARTS = 32
MAX_KEY_LENGTH = 256
MAX_LIST = 1000
MAX_PARAMS = 10_000  # bound values in one statement: bounds the size of the SQL a request can cause


class FilterError(ValueError):
    """The filter, order or cursor is not acceptable; the message says why (a 400)."""


# name in a filter -> (SQL expression over runs, kind). The expressions are constants.
COLUMNS: dict[str, tuple[str, str]] = {
    "state": ("state", "text"),
    "display_name": ("name", "text"),
    "name": ("name", "text"),
    "id": ("run_id", "text"),
    "run_id": ("run_id", "text"),
    "group": ("run_group", "text"),
    "job_type": ("job_type", "text"),
    "notes": ("notes", "text"),
    "created_at": ("created_at", "time"),
    "createdAt": ("created_at", "time"),
    "updated_at": ("updated_at", "time"),
    "heartbeat_at": ("heartbeat_at", "time"),
    "tags": ("tags", "tags"),
}
NOT_NULL = {"state", "run_id", "created_at", "updated_at"}  # runs columns declared NOT NULL
JSON_PREFIXES = {"config": "config", "summary_metrics": "summary", "summary": "summary"}

_ORDER_OPS = {"$lt": "<", "$lte": "<=", "$gt": ">", "$gte": ">="}
OPERATORS = {"$eq", "$ne", "$in", "$nin", "$regex", "$exists", *_ORDER_OPS}
_JSON_TYPE = {bool: "boolean", int: "number", float: "number", str: "string", list: "array", dict: "object"}


class Params:
    """The bound values of one statement; :meth:`add` returns the placeholder of a new one."""

    def __init__(self, *initial: Any) -> None:
        self.values: list[Any] = list(initial)

    def add(self, value: Any, cast: str = "") -> str:
        if len(self.values) >= MAX_PARAMS:
            raise FilterError(f"filters too large: more than {MAX_PARAMS} values")
        self.values.append(value)
        return f"${len(self.values)}{cast}"


@dataclass(frozen=True)
class Field:
    """A checked field: a constant SQL expression or a JSON column plus a key path (bound)."""

    name: str
    kind: str  # text | time | tags | json
    column: str
    path: tuple[str, ...] = ()

    def expr(self, params: Params) -> str:
        if self.kind == "json":
            if len(self.path) == 1:  # `->` is a third cheaper per row than `#>` with a path array
                return f"({self.column} -> {params.add(self.path[0], '::text')})"
            return f"({self.column} #> {params.add(list(self.path), '::text[]')})"
        return self.column


def parse_field(name: object) -> Field:
    """Check a field name against the allow-list; raise FilterError if it is not one."""
    if not isinstance(name, str) or not name:
        raise FilterError(f"field names must be non-empty strings, got {name!r}")
    if name in COLUMNS:
        column, kind = COLUMNS[name]
        return Field(name, kind, column)
    head, dot, rest = name.partition(".")
    if dot and head in JSON_PREFIXES:
        parts = tuple(rest.split("."))
        if len(parts) > MAX_PATH_PARTS or any(not p or len(p) > MAX_KEY_LENGTH for p in parts):
            raise FilterError(f"field {name[:80]!r} is not a usable key path")
        if head != "config":  # summary keys are flat ("a.b" is one key), as logged
            parts = (rest,)
        return Field(name, "json", JSON_PREFIXES[head], parts)
    allowed = ", ".join(sorted(COLUMNS))
    raise FilterError(f"unknown field {name[:80]!r}; use one of {allowed}, config.<key> or summary_metrics.<key>")


def compile_filter(filters: Any, params: Params) -> str:
    """SQL for a filter tree (already parsed JSON); its values are appended to ``params``."""
    if filters is None:
        return "TRUE"
    return _node(filters, params, 0)[0]


def _node(node: Any, params: Params, depth: int) -> tuple[str, bool]:
    """SQL for one filter object, and whether it reads config/summary jsonb (the costly part).

    ANDed conditions on plain columns come first: PostgreSQL evaluates a scan's conditions in
    the written order when their costs tie, and jsonb lookups on rows that a state or tag
    condition already ruled out were a third of a filtered runs page."""
    if depth > MAX_DEPTH:
        raise FilterError(f"filters nest deeper than {MAX_DEPTH} levels")
    if not isinstance(node, dict):
        raise FilterError(f"a filter is a JSON object, got {_kind(node)}")
    parts: list[tuple[str, bool]] = []
    for key, value in node.items():
        if key in ("$and", "$or", "$nor"):
            if not isinstance(value, list):
                raise FilterError(f"{key} takes a list of filters, got {_kind(value)}")
            if len(value) > MAX_LIST:
                raise FilterError(f"{key} takes at most {MAX_LIST} filters")
            subs = [_node(v, params, depth + 1) for v in value]
            costly = any(c for _, c in subs)
            if key == "$and":
                parts.append(("(" + " AND ".join(_cheap_first(subs)) + ")" if subs else "TRUE", costly))
            elif key == "$or":
                parts.append(("(" + " OR ".join(sql for sql, _ in subs) + ")" if subs else "FALSE", costly))
            else:
                parts.append(("NOT (" + " OR ".join(sql for sql, _ in subs) + ")" if subs else "TRUE", costly))
        elif isinstance(key, str) and key.startswith("$"):
            raise FilterError(f"unknown logical operator {key[:40]!r}; use $and, $or or $nor")
        else:
            f = parse_field(key)
            parts.append((_condition(f, value, params), f.kind == "json"))
    if not parts:
        return "TRUE", False
    costly = any(c for _, c in parts)
    if len(parts) == 1:
        return parts[0][0], costly
    return "(" + " AND ".join(_cheap_first(parts)) + ")", costly


def _cheap_first(parts: list[tuple[str, bool]]) -> list[str]:
    return [sql for sql, costly in parts if not costly] + [sql for sql, costly in parts if costly]


def _condition(f: Field, value: Any, params: Params) -> str:
    if isinstance(value, dict) and value and all(isinstance(k, str) and k.startswith("$") for k in value):
        conds = [_operator(f, op, operand, params) for op, operand in value.items()]
        return conds[0] if len(conds) == 1 else "(" + " AND ".join(conds) + ")"
    if isinstance(value, dict) and any(isinstance(k, str) and k.startswith("$") for k in value):
        raise FilterError(f"{f.name}: mix of operators and plain keys in one object")
    return _operator(f, "$eq", value, params)


def _operator(f: Field, op: str, operand: Any, params: Params) -> str:
    if op not in OPERATORS:
        raise FilterError(f"unknown operator {op[:40]!r}; use one of {', '.join(sorted(OPERATORS))}")
    if op == "$exists":
        if not isinstance(operand, bool):
            raise FilterError(f"{f.name}: $exists takes true or false")
        if f.kind == "tags":
            return "(cardinality(tags) > 0)" if operand else "(cardinality(tags) = 0)"
        return f"({f.expr(params)} IS {'NOT ' if operand else ''}NULL)"
    if op in ("$in", "$nin"):
        if not isinstance(operand, list):
            raise FilterError(f"{f.name}: {op} takes a list, got {_kind(operand)}")
        if len(operand) > MAX_LIST:
            raise FilterError(f"{f.name}: {op} takes at most {MAX_LIST} values")
    if op == "$regex":
        if not isinstance(operand, str):
            raise FilterError(f"{f.name}: $regex takes a string")
    if f.kind == "json":
        return _json_operator(f, op, operand, params)
    if f.kind == "tags":
        return _tags_operator(f, op, operand, params)
    return _column_operator(f, op, operand, params)


def _json_operator(f: Field, op: str, operand: Any, params: Params) -> str:
    expr = f.expr(params)
    if op == "$regex":
        return f"(jsonb_typeof({expr}) = 'string' AND ({expr} #>> '{{}}') ~ {params.add(operand, '::text')})"
    if op in ("$in", "$nin"):
        _check_json(f, operand)
        found = (f"EXISTS (SELECT 1 FROM jsonb_array_elements({params.add(operand, '::jsonb')}) AS e(v) "
                 f"WHERE e.v = {expr})")
        return f"({found})" if op == "$in" else f"(NOT {found})"
    _check_json(f, operand)
    if operand is None:
        if op == "$eq":
            return f"({expr} IS NULL OR {expr} = 'null'::jsonb)"
        if op == "$ne":
            return f"({expr} IS NOT NULL AND {expr} <> 'null'::jsonb)"
        raise FilterError(f"{f.name}: {op} cannot compare with null")
    if op == "$eq":
        return f"({expr} = {params.add(operand, '::jsonb')})"
    if op == "$ne":
        return f"({expr} IS DISTINCT FROM {params.add(operand, '::jsonb')})"
    jtype = _JSON_TYPE[type(operand)]  # a constant chosen by the Python type, not request text
    return f"(jsonb_typeof({expr}) = '{jtype}' AND {expr} {_ORDER_OPS[op]} {params.add(operand, '::jsonb')})"


def _tags_operator(f: Field, op: str, operand: Any, params: Params) -> str:
    if op in ("$in", "$nin"):
        if not all(isinstance(t, str) for t in operand):
            raise FilterError(f"{f.name}: {op} takes a list of strings")
        p = params.add(operand, "::text[]")
        return f"(tags && {p})" if op == "$in" else f"(NOT (tags && {p}))"
    if not isinstance(operand, str):
        raise FilterError(f"{f.name}: tags are compared with a string (or $in/$nin with a list of strings)")
    if op == "$eq":
        return f"({params.add(operand, '::text')} = ANY(tags))"
    if op == "$ne":
        return f"(NOT ({params.add(operand, '::text')} = ANY(tags)))"
    if op == "$regex":
        return f"EXISTS (SELECT 1 FROM unnest(tags) AS t(tag) WHERE t.tag ~ {params.add(operand, '::text')})"
    raise FilterError(f"{f.name}: {op} does not apply to tags")


def _column_operator(f: Field, op: str, operand: Any, params: Params) -> str:
    col = f.column
    cast = "::timestamptz" if f.kind == "time" else "::text"
    if op == "$regex":
        if f.kind == "time":
            raise FilterError(f"{f.name}: $regex does not apply to times")
        return f"({col} ~ {params.add(operand, '::text')})"
    if op in ("$in", "$nin"):
        values = [_column_value(f, v) for v in operand]
        if any(v is None for v in values):
            raise FilterError(f"{f.name}: {op} takes a list without null")
        p = params.add(values, cast + "[]")
        return f"({col} = ANY({p}))" if op == "$in" else f"(NOT coalesce({col} = ANY({p}), false))"
    value = _column_value(f, operand)
    if value is None:
        if op == "$eq":
            return f"({col} IS NULL)"
        if op == "$ne":
            return f"({col} IS NOT NULL)"
        raise FilterError(f"{f.name}: {op} cannot compare with null")
    if op == "$eq":
        return f"({col} = {params.add(value, cast)})"
    if op == "$ne":
        return f"({col} IS DISTINCT FROM {params.add(value, cast)})"
    return f"({col} {_ORDER_OPS[op]} {params.add(value, cast)})"


def _column_value(f: Field, value: Any) -> Any:
    if value is None:
        return None
    if f.kind == "time":
        return parse_time(f.name, value)
    if not isinstance(value, str):
        raise FilterError(f"{f.name} is compared with a string, got {_kind(value)}")
    return value


def parse_time(name: str, value: Any) -> datetime:
    if not isinstance(value, str):
        raise FilterError(f"{name} is compared with an ISO 8601 time string, got {_kind(value)}")
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
    except ValueError:
        raise FilterError(f"{name}: {value[:40]!r} is not an ISO 8601 time") from None
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def _check_json(f: Field, value: Any, depth: int = 0) -> None:
    """Values compared with JSON fields must be plain JSON (no '$' keys in objects)."""
    if depth > MAX_DEPTH:
        raise FilterError(f"{f.name}: value nests too deeply")
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str) or k.startswith("$"):
                raise FilterError(f"{f.name}: keys of compared objects may not start with '$'")
            _check_json(f, v, depth + 1)
    elif isinstance(value, list):
        for v in value:
            _check_json(f, v, depth + 1)
    elif value is not None and not isinstance(value, (bool, int, float, str)):
        raise FilterError(f"{f.name}: cannot compare with {_kind(value)}")


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def parse_filters(text: str | None) -> Any:
    """The ``filters`` query parameter: a JSON object (or absent)."""
    if text is None or not text.strip():
        return None
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as e:
        raise FilterError(f"filters is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise FilterError(f"filters must be a JSON object, got {_kind(value)}")
    return untag_nonfinite(value)


# -- sorting and keyset cursors ----------------------------------------------------------------


@dataclass(frozen=True)
class Sort:
    """A checked ``order``: the field and direction. Missing values sort as the lowest."""

    field: Field
    descending: bool
    text: str = field(compare=False, default="")

    def expr(self, params: Params) -> str:
        """The sort expression (never NULL, so keyset comparisons are total)."""
        f = self.field
        if f.column in NOT_NULL:  # a bare column lets an index serve the order (created_at)
            return f.column
        if f.kind == "json":
            return f"coalesce({f.expr(params)}, 'null'::jsonb)"
        if f.kind == "text":
            return f"coalesce({f.column}, '')"
        if f.kind == "time":
            return f"coalesce({f.column}, '-infinity'::timestamptz)"
        raise FilterError(f"cannot sort by {f.name}")

    @property
    def cast(self) -> str:
        """The cast of the cursor's value parameter (JSON values travel as JSON text)."""
        return {"json": "::text::jsonb", "text": "::text", "time": "::timestamptz"}[self.field.kind]


def parse_order(order: str | None) -> Sort:
    """``-created_at`` (default), ``+config.lr``, ``summary_metrics.loss`` ..."""
    text = (order or "-created_at").strip()
    descending = text.startswith("-")
    name = text[1:] if text[:1] in "+-" else text
    f = parse_field(name)
    if f.kind == "tags":
        raise FilterError("cannot sort by tags")
    return Sort(f, descending, text)


def encode_cursor(sort: Sort, value: Any, pk: int) -> str:
    if isinstance(value, datetime):
        value = value.isoformat()
    data = orjson.dumps({"o": sort.text, "v": tag_nonfinite(value), "pk": pk})
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def decode_cursor(sort: Sort, cursor: str) -> tuple[Any, int]:
    """(sort value, pk) from a cursor made by :func:`encode_cursor` for the same order."""
    try:
        data = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError):
        raise FilterError("cursor must be the next_cursor of a previous page") from None
    if not isinstance(data, dict) or not isinstance(data.get("pk"), int) or "v" not in data:
        raise FilterError("cursor must be the next_cursor of a previous page")
    if data.get("o") != sort.text:
        raise FilterError("cursor belongs to a different order; start again without a cursor")
    value = untag_nonfinite(data["v"])
    kind = sort.field.kind
    if kind == "time":
        value = parse_time("cursor", value)
    elif kind == "text" and not isinstance(value, str):
        raise FilterError("cursor must be the next_cursor of a previous page")
    elif kind == "json":  # as JSON text: a JSON null must stay a jsonb null, not an SQL NULL
        value = orjson.dumps(tag_nonfinite(value)).decode()
    pk = data["pk"]
    if not -(2**63) <= pk < 2**63:
        raise FilterError("cursor must be the next_cursor of a previous page")
    return value, pk
