"""Value rules shared by SDK and server: what may be logged, key limits, flattening, NaN tagging.

JSON has no NaN or Infinity (orjson writes them as null), so non-finite floats travel tagged as
``{"$f": "NaN" | "Infinity" | "-Infinity"}`` on the wire, in PostgreSQL jsonb and in API JSON.
User keys may not begin with ``$``, which keeps the tag unambiguous.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from itertools import chain
from typing import Any, TypeAlias

from .errors import TooManyKeys

MAX_EVENT_BYTES = 1_048_576  # one encoded event
MAX_KEYS = 10_000  # keys in one payload mapping
MAX_KEY_LENGTH = 256
MAX_STRING_LENGTH = 65_536
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

Scalar: TypeAlias = None | bool | int | float | str
Value: TypeAlias = Scalar | list[Scalar]
JSON: TypeAlias = Scalar | list["JSON"] | dict[str, "JSON"]

TAG = "$f"
_TAG_OF = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_ALLOWED = "runlog can log numbers, strings, booleans, None and lists of them"


def _transform(obj: Any, fn: Callable[[Any], Any]) -> Any:
    """Apply ``fn`` to every node of nested dicts/lists; the same object comes back if nothing changed."""
    new = fn(obj)
    if new is not obj:
        return new
    if isinstance(obj, dict):
        out = None
        for k, v in obj.items():
            nv = _transform(v, fn)
            if nv is not v:
                if out is None:
                    out = dict(obj)
                out[k] = nv
        return obj if out is None else out
    if isinstance(obj, (list, tuple)):
        items = [_transform(v, fn) for v in obj]
        changed = any(a is not b for a, b in zip(items, obj, strict=True))
        return items if changed else obj
    return obj


def _tag(obj: Any) -> Any:
    """Tag one non-finite float; leave anything else alone."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return {TAG: "NaN" if obj != obj else ("Infinity" if obj > 0 else "-Infinity")}
    return obj


def _untag(obj: Any) -> Any:
    """Turn one ``{"$f": ...}`` tag back into its float; leave anything else alone."""
    if isinstance(obj, dict) and len(obj) == 1 and isinstance(tag := obj.get(TAG), str) and tag in _TAG_OF:
        return _TAG_OF[tag]
    return obj


def tag_nonfinite(obj: Any) -> Any:
    """Replace NaN/±inf floats anywhere in dicts/lists by their ``$f`` tags (JSON-safe)."""
    return _transform(obj, _tag)


def untag_nonfinite(obj: Any) -> Any:
    """Replace ``$f`` tags anywhere in dicts/lists by the floats they stand for."""
    return _transform(obj, _untag)


def check_key(key: object, where: str = "key") -> str:
    """Return ``key`` if it is a usable payload key: a 1..MAX_KEY_LENGTH string not starting with '$'."""
    if not isinstance(key, str):
        raise ValueError(f"{where} {key!r} has type {type(key).__name__}; keys must be strings")
    if not 0 < len(key) <= MAX_KEY_LENGTH:
        raise ValueError(f"{where} {key[:40]!r} has {len(key)} characters; keys need 1 to {MAX_KEY_LENGTH}")
    if key.startswith("$"):
        raise ValueError(f"{where} {key!r} starts with '$', which runlog reserves for its own tags")
    return key


def check_key_count(data: Mapping[Any, Any], where: str) -> None:
    """Raise TooManyKeys if one mapping holds more than MAX_KEYS keys."""
    if len(data) > MAX_KEYS:
        raise TooManyKeys(where, len(data), MAX_KEYS)


def check_scalar(key: str, value: Any) -> Scalar:
    """Return ``value`` as a plain JSON scalar (numpy scalars via ``.item()``), or raise ValueError."""
    if value is None or type(value) is bool:
        return value
    if isinstance(value, str):
        if len(value) > MAX_STRING_LENGTH:
            raise ValueError(f"value of {key!r} is a string of {len(value):,} characters; the limit is {MAX_STRING_LENGTH:,}")
        return str(value)
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise ValueError(f"value of {key!r} is an integer outside the signed 64-bit range")
        return int(value)
    if isinstance(value, float):
        return float(value)
    item = getattr(value, "item", None)
    if callable(item) and not isinstance(value, (list, tuple, dict)):
        try:
            plain = item()
        except Exception:  # e.g. numpy arrays of more than one element
            plain = value
        if plain is None or isinstance(plain, (bool, int, float, str)):
            return check_scalar(key, plain)
    raise ValueError(f"value of {key!r} has type {type(value).__name__}; {_ALLOWED}")


def check_value(key: str, value: Any) -> Value:
    """Return an allowed log/summary value (scalar or list of scalars, tuples become lists), or raise ValueError."""
    if isinstance(value, (list, tuple)):
        if any(isinstance(v, (list, tuple, dict)) for v in value):
            raise ValueError(f"value of {key!r} is a list holding lists or dicts; {_ALLOWED}")
        return [check_scalar(key, v) for v in value]
    return check_scalar(key, value)


def flatten(data: Mapping[str, Any], sep: str = ".") -> dict[str, Any]:
    """Flatten nested mappings into ``sep``-joined keys, as W&B does for ``log``: {"a": {"b": 1}} -> {"a.b": 1}."""
    out: dict[str, Any] = {}

    def walk(prefix: str, node: Mapping[Any, Any]) -> None:
        for k, v in node.items():
            if not isinstance(k, str):
                raise ValueError(f"key {k!r} has type {type(k).__name__}; keys must be strings")
            key = f"{prefix}{sep}{k}" if prefix else k
            if isinstance(v, Mapping):
                walk(key, v)
            elif key in out:
                raise ValueError(f"key {key!r} appears twice after flattening nested dicts")
            else:
                out[key] = v

    walk("", data)
    return out


_GOOD_KEYS: set[str] = set()  # keys check_key accepted: a run logs the same few keys over and over
_FLOAT = {float}
_DICT = {dict}


def check_values(data: Mapping[Any, Any], where: str = "values") -> dict[str, Value]:
    """Check an already flat mapping of values (count, keys, values); return a plain dict."""
    if type(data) is not dict and not isinstance(data, Mapping):  # the exact test first: ABCs are slow
        raise ValueError(f"{where} must be a mapping, not {type(data).__name__}")
    check_key_count(data, where)
    good = _GOOD_KEYS
    if data.keys() <= good and set(map(type, data.values())) <= _FLOAT:  # the usual row: set operations in C
        return dict(data)
    out: dict[str, Value] = {}
    for k, v in data.items():  # once per logged point: known keys and plain numbers take the short way
        if k not in good or type(k) is not str:
            check_key(k)
            if len(good) < 100_000:
                good.add(k)
        t = type(v)
        out[k] = v if t is float or (t is int and INT64_MIN <= v <= INT64_MAX) else check_value(k, v)
    return out


def check_values_many(rows: list[Any], where: str = "values") -> list[dict[str, Value]]:
    """:func:`check_values` for each mapping of ``rows``. The rows of a packed ``run.log`` usually
    hold known keys and only floats: that is checked for all of them at once, in a few passes over
    the list in C (row by row, this check was the largest part of decoding a pack)."""
    if rows and set(map(type, rows)) == _DICT and max(map(len, rows)) <= MAX_KEYS:
        if set(chain.from_iterable(rows)) <= _GOOD_KEYS and set(map(type, chain.from_iterable(map(dict.values, rows)))) <= _FLOAT:
            return list(map(dict, rows))
    return [check_values(r, where) for r in rows]


def normalize_values(data: Mapping[str, Any]) -> dict[str, Value]:
    """Flatten log/summary data and check/convert every value (numpy scalars, tuples)."""
    return check_values(flatten(data))


def _json(path: str, value: Any) -> JSON:
    """Return a config value as plain JSON: nested dicts and lists of allowed scalars."""
    if isinstance(value, Mapping):
        check_key_count(value, path or "config")
        out: dict[str, JSON] = {}
        for k, v in value.items():
            check_key(k, "config key")
            out[k] = _json(f"{path}.{k}" if path else k, v)
        return out
    if isinstance(value, (list, tuple)):
        return [_json(path, v) for v in value]
    return check_scalar(path, value)


def normalize_config(data: Mapping[str, Any]) -> dict[str, JSON]:
    """Check/convert a config mapping; unlike log data it stays nested (dicts and lists may nest)."""
    if not isinstance(data, Mapping):
        raise ValueError(f"config must be a mapping, not {type(data).__name__}")
    return _json("", data)  # type: ignore[return-value]
