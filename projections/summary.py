"""Run summaries from logged values and ``define_metric`` definitions (pure functions).

Rules, as W&B defines them where W&B has an answer:
- A key with no definition (or a definition without ``summary``) shows its last value.
- ``summary=["min", "max", ...]`` shows ``{"min": v, "max": v}`` for that key; ``"best"`` is the
  min or max by ``goal`` (minimize when unset); ``"none"`` removes the key from the summary.
- Definitions match by exact name first, then by glob (``"val/*"``); among globs the longest
  pattern wins, then the alphabetically first, so the choice never depends on arrival order.
- An explicit summary update (``run.summary["k"] = v``) wins for its key until the next explicit
  update or removal of that key; logs keep updating the statistics meanwhile.
- NaN is the last value when it was logged last, but never a min, max, best or part of a mean:
  a diverging step must not become the "best" loss. Mean is sum / count of the finite values
  and of the infinities (an infinite value makes the mean infinite, as it should).
Statistics are kept for every key (min, max, sum, count, first, last), so a definition that
arrives after the logs still gives the right summary without rereading history.
"""

from __future__ import annotations

import fnmatch
import math
import sys
from typing import Any

Stats = dict[str, Any]
Definition = dict[str, Any]


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def update_stats(stats: Stats | None, value: Any, step: int = 0, rank: int | None = None) -> Stats:
    """The key's statistics after one more logged value (a new dict; the input is not changed).

    ``last`` is the value at the highest step; at the same step the lowest rank wins (ranks of a
    shared run logging the same key), and at the same step and rank the later event. So the
    summary does not depend on how the ranks' events happened to interleave.
    """
    if stats is None:
        return {"first": value, "last": value, "at": [step, -(rank or 0)], **_number_stats(value)}
    new = stats.copy()
    new["at"] = list(new["at"])
    accumulate(new, value, step, rank)
    return new


def _number_stats(value: Any) -> Stats:
    kind = type(value)
    if (kind is float or kind is int) and value == value:  # a number, and not NaN
        v = float(value)
        return {"min": v, "max": v, "sum": v, "count": 1}
    return {}


def accumulate(stats: Stats, value: Any, step: int, rank: int | None) -> None:
    """``update_stats`` in place, on a dict the caller owns (``fold_logs`` copies each key's
    statistics once per group, then accumulates). Runs once per logged point: written for speed
    (exact type checks: the wire contract only carries int, float, bool, str, None and lists)."""
    neg_rank = -(rank or 0)
    at = stats["at"]
    if step > at[0] or (step == at[0] and neg_rank >= at[1]):
        stats["last"] = value
        at[0], at[1] = step, neg_rank
    kind = type(value)
    if (kind is float or kind is int) and value == value:  # a number, and not NaN
        v = float(value)
        if "count" in stats:
            if v < stats["min"]:
                stats["min"] = v
            if v > stats["max"]:
                stats["max"] = v
            stats["sum"] += v
            stats["count"] += 1
        else:
            stats["min"] = stats["max"] = stats["sum"] = v
            stats["count"] = 1


# CPython before 3.12 adds floats in sum() one after the other in a C double: bit for bit what
# ``total += v`` gives, at a fifth of the cost. From 3.12 on sum() compensates (Neumaier), which
# would make a key's sum depend on how its points were batched, so the loop stays there.
_SEQUENTIAL_SUM = sys.version_info < (3, 12)
_FLOATS = {float}


def no_nan(numbers: list[Any]) -> bool:
    """Numbers only, none NaN, in one pass in C: a NaN makes the sum NaN (so do inf and -inf
    together, which then take a caller's slow path; that is only slower), and None or a string
    cannot be added. ``None in`` plus ``any(map(isnan))`` took three times as long."""
    try:
        total = sum(numbers)
    except TypeError:
        return False
    return total == total


def accumulate_many(stats: Stats, steps: list[int], values: list[Any], rank: int | None) -> bool:
    """``accumulate`` for each (step, value) in order, by one rank. When every value is a number
    and none is NaN (the usual logged metric) it takes list operations: min/max in C, the sum
    still added one value at a time (see _SEQUENTIAL_SUM), so it is the same float as adding
    them one by one. Returns whether every value was a float and none NaN (a plain column)."""
    if not values:
        return True
    kinds = set(map(type, values))
    if not kinds <= {float, int} or not no_nan(values):
        for step, value in zip(steps, values):
            accumulate(stats, value, step, rank)
        return False
    neg_rank = -(rank or 0)
    at, top = stats["at"], max(steps)
    if top > at[0] or (top == at[0] and neg_rank >= at[1]):  # the later of the points at the top step
        stats["last"] = values[len(steps) - 1 - steps[::-1].index(top)]
        at[0], at[1] = top, neg_rank
    numbers = values if kinds == {float} else [float(v) for v in values]
    lo, hi = min(numbers), max(numbers)
    if "count" in stats:
        if lo < stats["min"]:
            stats["min"] = lo
        if hi > stats["max"]:
            stats["max"] = hi
        total = stats["sum"]
    else:
        stats["min"], stats["max"], stats["sum"], stats["count"] = lo, hi, 0.0, 1  # accumulate's key order
        total, numbers = numbers[0], numbers[1:]
    if _SEQUENTIAL_SUM:
        total = sum(numbers, total)
    else:
        for v in numbers:
            total += v
    stats["sum"] = total
    stats["count"] += len(numbers)
    return kinds == _FLOATS


def match(definitions: dict[str, Definition], key: str) -> Definition | None:
    """The definition that applies to ``key``: exact name, else the most specific glob."""
    if key in definitions:
        return definitions[key]
    globs = sorted((name for name in definitions if any(c in name for c in "*?[") and fnmatch.fnmatchcase(key, name)),
                   key=lambda name: (-len(name), name))
    return definitions[globs[0]] if globs else None


def summary_entry(definition: Definition | None, stats: Stats) -> tuple[bool, Any]:
    """(shown, value) of one key in the summary."""
    wanted = (definition or {}).get("summary") or []
    if not wanted:
        return True, stats["last"]
    if "none" in wanted:
        return False, None
    out: dict[str, Any] = {}
    for agg in wanted:
        if agg in ("last", "first"):
            out[agg] = stats[agg]
        elif agg == "mean":
            if stats.get("count"):
                out["mean"] = stats["sum"] / stats["count"]
        elif agg == "best":
            goal = (definition or {}).get("goal") or "minimize"
            side = "min" if goal == "minimize" else "max"
            if side in stats:
                out["best"] = stats[side]
        elif agg in stats:
            out[agg] = stats[agg]
    return True, out


def merge_definition(old: Definition | None, payload: dict[str, Any]) -> Definition:
    """A new ``define_metric`` call: replaces the old definition with ``overwrite=True``, else
    updates only the fields it sets."""
    fields = {k: v for k, v in payload.items() if k not in ("name", "overwrite")}
    if old is None or payload.get("overwrite"):
        return {k: v for k, v in fields.items() if v not in (None, [])}
    merged = dict(old)
    merged.update({k: v for k, v in fields.items() if v not in (None, [])})
    return merged


def recompute(summary: dict[str, Any], keys: list[str], definitions: dict[str, Definition],
              stats: dict[str, Stats], overrides: tuple[str, ...]) -> dict[str, Any]:
    """The summary with ``keys`` recomputed from their statistics (overridden keys untouched)."""
    new = dict(summary)
    if not definitions and not overrides:  # the common case: every key shows its last value
        for key in keys:
            if key in stats:
                new[key] = stats[key]["last"]
        return new
    for key in keys:
        if key in overrides or key not in stats:
            continue
        shown, value = summary_entry(match(definitions, key), stats[key])
        if shown:
            new[key] = value
        else:
            new.pop(key, None)
    return new
