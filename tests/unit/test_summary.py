"""Summaries from define_metric: W&B's rules, NaN never the best, definitions order-independent."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from events import (AlertPayload, InitPayload, LogPayload, MetricPayload, RunAlert, RunInit, RunLog, RunMetric,
                    RunRef, RunSummary, Source, SummaryPayload)
from projections.fold import AlertRow, MetricRow, RunState, fold
from projections.summary import match, summary_entry, update_stats

RUN = RunRef(entity="e", project="p", run_id="r")
SRC = Source(kind="sdk", writer="w", rank=0)
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def play(*payloads: object) -> RunState:
    state: RunState | None = None
    seq = 0
    for payload in (InitPayload(), *payloads):
        cls = {InitPayload: RunInit, LogPayload: RunLog, MetricPayload: RunMetric, SummaryPayload: RunSummary,
               AlertPayload: RunAlert}[type(payload)]
        state, _ = fold(state, cls(run=RUN, source=SRC, seq=seq, time=T0 + timedelta(seconds=seq), payload=payload))
        seq += 1
    assert state is not None
    return state


def logs(key: str, values: list[float]) -> list[LogPayload]:
    return [LogPayload(step=i, values={key: v}) for i, v in enumerate(values)]


def test_undefined_key_shows_its_last_value() -> None:
    assert play(*logs("loss", [3.0, 1.0, 2.0])).summary["loss"] == 2.0


def test_min_max_mean_best_last_first() -> None:
    state = play(MetricPayload(name="loss", summary=["min", "max", "mean", "last", "first"]),
                 MetricPayload(name="acc", summary=["best"], goal="maximize"),
                 *logs("loss", [3.0, 1.0, 2.0]), *logs("acc", [0.1, 0.9, 0.5]))
    assert state.summary["loss"] == {"min": 1.0, "max": 3.0, "mean": 2.0, "last": 2.0, "first": 3.0}
    assert state.summary["acc"] == {"best": 0.9}


def test_best_minimizes_by_default_and_none_hides_the_key() -> None:
    state = play(MetricPayload(name="loss", summary=["best"]), MetricPayload(name="noise", summary=["none"]),
                 *logs("loss", [3.0, 1.0, 2.0]), LogPayload(step=9, values={"noise": 1.0}))
    assert state.summary["loss"] == {"best": 1.0}
    assert "noise" not in state.summary


def test_nan_is_last_but_never_min_max_or_mean() -> None:
    state = play(MetricPayload(name="loss", summary=["min", "max", "mean", "last"]),
                 *logs("loss", [2.0, math.nan, 4.0, math.nan]))
    entry = state.summary["loss"]
    assert (entry["min"], entry["max"], entry["mean"]) == (2.0, 4.0, 3.0)
    assert math.isnan(entry["last"])


def test_glob_definitions_and_the_most_specific_wins() -> None:
    defs = {"val/*": {"summary": ["max"]}, "val/loss*": {"summary": ["min"]}, "val/acc": {"summary": ["last"]}}
    assert match(defs, "val/loss_x") is defs["val/loss*"]
    assert match(defs, "val/f1") is defs["val/*"]
    assert match(defs, "val/acc") is defs["val/acc"]
    assert match(defs, "train/loss") is None


def test_explicit_summary_wins_until_the_next_explicit_update() -> None:
    state = play(*logs("best", [1.0, 2.0]), SummaryPayload(set={"best": 42.0}),
                 LogPayload(step=5, values={"best": 7.0}))
    assert state.summary["best"] == 42.0
    assert state.stats["best"]["last"] == 7.0  # statistics keep counting meanwhile
    state = play(*logs("best", [1.0]), SummaryPayload(set={"best": 42.0}), SummaryPayload(remove=["best"]),
                 LogPayload(step=5, values={"best": 7.0}))
    assert state.summary["best"] == 7.0


def test_alert_within_wait_duration_is_stored_suppressed_not_dropped() -> None:
    state: RunState | None = None
    rows = []
    for seq, (payload, at) in enumerate([(InitPayload(), 0), (AlertPayload(title="lr", text="a", wait_duration=60.0), 1),
                                         (AlertPayload(title="lr", text="b", wait_duration=60.0), 30),
                                         (AlertPayload(title="other", text="c", wait_duration=60.0), 31),
                                         (AlertPayload(title="lr", text="d", wait_duration=60.0), 62)]):
        cls = RunInit if isinstance(payload, InitPayload) else RunAlert
        state, out = fold(state, cls(run=RUN, source=SRC, seq=seq, time=T0 + timedelta(seconds=at), payload=payload))
        rows += [r for r in out if isinstance(r, AlertRow)]
    assert [(r.text, r.suppressed) for r in rows] == [("a", False), ("b", True), ("c", False), ("d", False)]
    assert rows[1].reason is not None and "wait_duration 60s" in rows[1].reason


def test_define_metric_emits_a_definition_row_merging_unless_overwrite() -> None:
    state = play(MetricPayload(name="loss", summary=["min"], step_metric="epoch"), MetricPayload(name="loss", goal="minimize"))
    assert state.metrics["loss"] == {"summary": ["min"], "step_metric": "epoch", "goal": "minimize"}
    state = play(MetricPayload(name="loss", summary=["min"], step_metric="epoch"),
                 MetricPayload(name="loss", summary=["max"], overwrite=True))
    assert state.metrics["loss"] == {"summary": ["max"]}
    _, rows = fold(state, RunMetric(run=RUN, source=SRC, seq=9, payload=MetricPayload(name="acc", hidden=True)))
    assert rows == [MetricRow("acc", {"hidden": True}, rows[0].event_time)]


finite = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e6)
values = st.lists(st.one_of(finite, st.just(math.nan)), min_size=1, max_size=30)
aggs = st.lists(st.sampled_from(["min", "max", "mean", "best", "last", "first"]), min_size=1, max_size=3, unique=True)


@given(values, aggs)
def test_a_definition_before_or_after_the_logs_gives_the_same_summary(vals: list[float], summary: list[str]) -> None:
    definition = MetricPayload(name="m", summary=summary)
    before = play(definition, *logs("m", vals)).summary["m"]
    after = play(*logs("m", vals), definition).summary["m"]
    assert repr(before) == repr(after)  # repr: NaN == NaN for this comparison


@given(values)
def test_stats_agree_with_a_direct_computation(vals: list[float]) -> None:
    stats = None
    for v in vals:
        stats = update_stats(stats, v)
    assert stats is not None
    real = [v for v in vals if not math.isnan(v)]
    shown, entry = summary_entry({"summary": ["min", "max", "mean"]}, stats)
    assert shown
    if real:
        assert entry["min"] == min(real) and entry["max"] == max(real)
        assert math.isclose(entry["mean"], math.fsum(real) / len(real), rel_tol=1e-9, abs_tol=1e-6)
    else:
        assert entry == {}


@given(st.one_of(st.none(), st.dictionaries(st.just("x"), st.floats() | st.integers(-9, 9) | st.text(max_size=2),
                                            min_size=1)),
       st.lists(st.tuples(st.integers(0, 6), st.floats() | st.integers(-9, 9) | st.sampled_from([-0.0, 0.0, "s"])),
                min_size=1, max_size=30),
       st.sampled_from([None, 0, 1, 2]))
def test_accumulating_many_at_once_equals_one_at_a_time(start, points, rank) -> None:
    """``accumulate_many`` (list operations for plain numbers) gives the same statistics, to the
    last bit of the sum and the sign of a zero, as ``accumulate`` point by point."""
    from projections.summary import accumulate, accumulate_many

    def fresh():
        return None if start is None else update_stats(None, start["x"], 3, 1)

    steps, values = [s for s, _ in points], [v for _, v in points]
    one = update_stats(fresh(), values[0], steps[0], rank)
    for s, v in zip(steps[1:], values[1:]):
        accumulate(one, v, s, rank)
    many = update_stats(fresh(), values[0], steps[0], rank)
    accumulate_many(many, steps[1:], values[1:], rank)
    assert repr(many) == repr(one)
