"""log()'s hot path: a cheap type check on the caller's thread, the event built on the transport's.

The values a row carries must be exactly what the slow path (``normalize_values``) would give,
bad values must still raise ValueError synchronously without costing a seq, and a deferred
event that cannot be built is counted as failed, logged, and never spooled.
"""

from __future__ import annotations

import logging
import math
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

import producer
from events import RunRef, Source
from events.codec import decode, encode
from events.settings import Settings
from producer import _run
from producer._spool import SpoolFile, iter_records
from events.values import MAX_EVENT_BYTES
from producer._transport import PACK_BYTES, KafkaTransport, MemoryTransport, build_event, build_pack, encode_fast


class RawRecording(MemoryTransport):
    """Takes deferred (raw) events like KafkaTransport does, and builds them as its thread would."""

    def __init__(self) -> None:
        super().__init__()
        self.raw: list[tuple] = []

    def send_raw(self, raw: tuple) -> None:
        self.raw.append(raw)
        self.send(build_event(raw))


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch):
    transports: list[RawRecording] = []

    def make(mode, settings, spool_path=None):
        transports.append(RawRecording())
        return transports[-1]

    monkeypatch.setattr(_run, "_make_transport", make)
    monkeypatch.delenv("RANK", raising=False)
    yield transports
    if producer.run is not None:
        producer.run.finish()


def _rows(transport):
    return [(e.seq, e.payload.step, dict(e.payload.values)) for e in transport.events if e.type == "run.log"]


class FakeNumpyScalar:
    """Looks like a numpy scalar to ``check_scalar`` (an ``item()`` giving a Python number)."""

    def __init__(self, value):
        self.value = value

    def item(self):
        return self.value


def test_log_rows_go_to_the_transport_as_raw_events_in_seq_order(sent):
    run = producer.init(entity="e", project="p", rank=1)
    for i in range(5):
        run.log({"loss": 1.0 / (i + 1), "epoch": i, "ok": True, "note": "x", "none": None})
    (t,) = sent
    assert [r[0] for r in t.raw] == ["run.log"] * 5
    assert [r[3] for r in t.raw] == [1, 2, 3, 4, 5]  # seq 0 is run.init
    assert all(abs(r[4] - time.time()) < 60 for r in t.raw)
    assert t.raw[0][1] is run._ref and t.raw[0][2].rank == 1
    assert _rows(t)[-1] == (5, 4, {"loss": 0.2, "epoch": 4, "ok": True, "note": "x", "none": None})
    run.finish()
    assert [e.seq for e in t.events] == list(range(7))


def test_fast_and_slow_paths_give_the_same_values(sent):
    run = producer.init(project="p")
    run.log({"a": 1.0, "b": {"c": 2}})  # slow: new keys, nested
    assert run._known_keys == {"a"}  # "b" stands for "b.c": never a fast-path key
    run.log({"a": FakeNumpyScalar(3.5), "b": {"c": 4}})  # known key, non-plain value: slow, converted
    run.log({"a": math.nan})  # fast
    run.log({"a": math.inf, "lst": (1, 2.0)})  # new key, tuple: slow
    rows = _rows(sent[0])
    assert [r[2] for r in rows[:2]] == [{"a": 1.0, "b.c": 2}, {"a": 3.5, "b.c": 4}]
    assert math.isnan(rows[2][2]["a"])
    assert rows[3][2] == {"a": math.inf, "lst": [1, 2.0]}
    assert type(rows[1][2]["a"]) is float


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (object(), "'a' has type object"),
        (open, "'a' has type builtin_function_or_method"),
        (2**63, "'a' is an integer outside the signed 64-bit range"),
        ("x" * 70_000, "'a' is a string of 70,000 characters"),
        ([[1]], "'a' is a list holding lists"),
    ],
)
def test_bad_values_raise_synchronously_even_for_known_keys_and_cost_no_seq(sent, bad, match):
    run = producer.init(project="p")
    run.log({"a": 1.0, "b": 2.0})  # "a" is now a known key
    with pytest.raises(ValueError, match=match):
        run.log({"b": 3.0, "a": bad})
    with pytest.raises(ValueError, match="has type int; keys must be strings"):
        run.log({1: 1.0})
    run.log({"a": 2.0})
    assert [(seq, step) for seq, step, _ in _rows(sent[0])] == [(1, 0), (2, 1)]
    assert run.step == 2


def test_mutating_the_logged_dict_afterwards_changes_nothing(sent):
    run = producer.init(project="p")
    data = {"a": 1.0}
    run.log(data)
    run.log(data, commit=False)
    data["a"] = 99.0
    run.log({}, commit=True)
    assert [r[2] for r in _rows(sent[0])] == [{"a": 1.0}, {"a": 1.0}]


def test_encode_fast_gives_the_codecs_bytes():
    ref, src = RunRef(entity="e", project="p", run_id="r"), Source(kind="sdk", writer="w", rank=3)
    for values in ({f"k{i}": float(i) for i in range(10)},
                   {"nan": math.nan, "l": [1.0, -math.inf, None, "s", True], "i": -3, "n": None, "s": "é"}):
        event = build_event(("run.log", ref, src, 7, time.time(), {"step": 7, "values": values}))
        assert encode_fast(event) == encode(event)
        back = decode(encode_fast(event))
        assert back.seq == 7 and back.source.rank == 3 and back.payload.step == 7
    init = build_event(("run.init", ref, src, 0, time.time(), {}))
    assert encode_fast(init) == encode(init)
    rows = [("run.log", ref, src, 7 + i, time.time() + i, {"step": 7 + i, "values": {"x": math.nan if i else 1.0}})
            for i in range(3)]
    pack = build_pack(rows)
    assert encode_fast(pack) == encode(pack)
    back = decode(encode_fast(pack))
    assert (back.seq, back.last_seq, back.time) == (7, 9, pack.time)
    assert [r.step for r in back.payload.more] == [8, 9] and math.isnan(back.payload.more[0].values["x"])


class Stalled(KafkaTransport):
    """A spooler that only drains once closing: everything sent before is queued together."""

    def _drain(self) -> bool:
        return super()._drain() if self._closing.is_set() else False


def test_rows_too_big_to_pack_travel_alone(tmp_path):
    ref, src = RunRef(entity="e", project="p", run_id="r"), Source(kind="sdk", writer="w")
    transport = Stalled(_dead_settings(), spool=SpoolFile(tmp_path / "w.spool"), online=False)
    big = {f"k{i}": "x" * 60_000 for i in range(6)}  # ~360 KB a row: over PACK_BYTES alone, so each travels alone
    for seq in range(5):
        transport.send_raw(("run.log", ref, src, seq, time.time(), {"step": seq, "values": big}))
    transport.close(0.1)  # the stalled spooler drains once closing
    assert transport.counters.failed == 0 and transport.counters.spooled == 5
    assert [seq for seq, _, _ in spooled_rows(tmp_path / "w.spool")] == list(range(5))
    records = [d for _, d in iter_records(tmp_path / "w.spool")]
    assert all(len(d) <= MAX_EVENT_BYTES for d in records)
    assert [1 + len(decode(d).payload.more) for d in records] == [1] * 5  # a row alone may be this big


def test_packs_stay_under_pack_bytes_so_the_producer_never_refuses_them(tmp_path):
    ref, src = RunRef(entity="e", project="p", run_id="r"), Source(kind="sdk", writer="w")
    transport = Stalled(_dead_settings(), spool=SpoolFile(tmp_path / "w.spool"), online=False)
    row = {f"k{i}": "x" * 1000 for i in range(10)}  # ~10 KB a row: 100 of them would be ~1 MiB
    for seq in range(100):
        transport.send_raw(("run.log", ref, src, seq, time.time(), {"step": seq, "values": row}))
    transport.close(0.1)  # the stalled spooler drains once closing
    records = [d for _, d in iter_records(tmp_path / "w.spool")]
    assert all(len(d) <= PACK_BYTES for d in records) and 1 < len(records) < 100
    assert [seq for seq, _, _ in spooled_rows(tmp_path / "w.spool")] == list(range(100))


def test_rows_of_one_run_queued_together_travel_as_one_event_and_others_break_the_pack(tmp_path):
    ref, src = RunRef(entity="e", project="p", run_id="r"), Source(kind="sdk", writer="w")
    other = RunRef(entity="e", project="p", run_id="other")
    transport = Stalled(_dead_settings(), spool=SpoolFile(tmp_path / "w.spool"), online=False)
    for seq in range(3):
        transport.send_raw(("run.log", ref, src, seq, time.time(), {"step": seq, "values": {"x": 1.0}}))
    transport.send_raw(("run.summary", ref, src, 3, time.time(), {"set": {"y": 1}}))  # not a row: ends the pack
    transport.send_raw(("run.log", ref, src, 4, time.time(), {"step": 4, "values": {"x": 1.0}}))
    transport.send_raw(("run.log", other, src, 0, time.time(), {"step": 0, "values": {"x": 1.0}}))  # another run
    transport.send_raw(("run.log", ref, src, 6, time.time(), {"step": 6, "values": {"x": 1.0}}))  # seq 5 missing
    transport.close(0.1)  # the stalled spooler drains once closing
    events = [decode(d) for _, d in iter_records(tmp_path / "w.spool")]
    assert [(e.run.run_id, e.type, e.seq, e.last_seq) for e in events] == [
        ("r", "run.log", 0, 2), ("r", "run.summary", 3, 3), ("r", "run.log", 4, 4), ("other", "run.log", 0, 0),
        ("r", "run.log", 6, 6)]
    assert transport.counters.spooled == 7


def _dead_settings() -> Settings:
    return Settings(bootstrap_servers="127.0.0.1:1", events_topic="t")


def test_a_raw_event_that_cannot_be_built_is_failed_loudly_and_not_spooled(tmp_path, caplog):
    ref, src = RunRef(entity="e", project="p", run_id="r"), Source(kind="sdk", writer="w")
    spool = SpoolFile(tmp_path / "w.spool")
    transport = KafkaTransport(_dead_settings(), spool=spool, online=False)
    with caplog.at_level(logging.ERROR, logger="producer.transport"):
        transport.send_raw(("run.log", ref, src, 0, time.time(), {"step": 0, "values": {"x": 1.0}}))
        transport.send_raw(("run.log", ref, src, 1, time.time(), {"step": 1, "values": {"x": object()}}))
        transport.send_raw(("run.log", ref, src, 2, time.time(), {"step": 2, "values": {"x": 3.0}}))
        assert transport.close(0.1)  # the stalled spooler drains once closing == 2  # offline: the two good ones wait in the spool
    assert transport.counters.failed == 1 and transport.counters.spooled == 2
    assert "could not build run.log event seq 1 of run e/p/r" in caplog.text
    assert "NOT spooled" in caplog.text
    assert [decode(d).seq for _, d in iter_records(tmp_path / "w.spool")] == [0, 2]


def spooled_rows(path) -> list[tuple[int, str, dict]]:
    """(seq, type, values) of every row in a spool file, packed run.log events unpacked."""
    rows = []
    for _, data in iter_records(path):
        e = decode(data)
        if e.type != "run.log":
            rows.append((e.seq, e.type, {}))
            continue
        logged = [e.payload.values, *(r.values for r in e.payload.more)]
        rows += [(e.seq + i, e.type, values) for i, values in enumerate(logged)]
        assert e.last_seq == e.seq + len(logged) - 1
    return rows


def test_offline_run_spools_every_row_in_order(tmp_path, monkeypatch):
    monkeypatch.setenv("RUNLOG_HOME", str(tmp_path))
    monkeypatch.delenv("RANK", raising=False)
    run = producer.init(project="p", mode="offline")
    n = 3000  # more than fit between two drains: the caller outruns the thread
    for i in range(n):
        run.log({"loss": float(i), "epoch": i // 100})
    run.finish(quiet=True)
    rows = spooled_rows(run.spool_path)
    assert [seq for seq, _, _ in rows] == list(range(n + 2))
    assert [t for _, t, _ in rows[:2]] == ["run.init", "run.log"] and rows[-1][1] == "run.finish"
    assert [values["loss"] for _, _, values in rows[1:-1]] == [float(i) for i in range(n)]
    assert run.status().written == n + 2 == run.status().spooled  # counted in rows, packed or not
    assert len(list(iter_records(run.spool_path))) < n // 2  # the caller outran the thread: rows were packed


def test_small_queue_spills_raw_events_on_the_callers_thread(tmp_path):
    ref, src = RunRef(entity="e", project="p", run_id="r"), Source(kind="sdk", writer="w")
    spool = SpoolFile(tmp_path / "w.spool")
    transport = KafkaTransport(_dead_settings(), spool=spool, online=False, queue_max=4)
    for seq in range(500):
        transport.send_raw(("run.log", ref, src, seq, time.time(), {"step": seq, "values": {"x": float(seq)}}))
        assert len(transport._queue) <= 4
    transport.close(0.1)  # the stalled spooler drains once closing
    assert [seq for seq, _, _ in spooled_rows(tmp_path / "w.spool")] == list(range(500))


def _nonfinite_reference(values):
    return any((type(v) is float and not math.isfinite(v))
               or (type(v) is list and any(type(x) is float and not math.isfinite(x) for x in v))
               for v in values.values())


_scalars = (st.floats() | st.sampled_from([1.7e308, -1.7e308, math.inf, -math.inf, math.nan])
            | st.integers(-(2**63), 2**63 - 1) | st.booleans() | st.none() | st.text(max_size=3))


@given(st.dictionaries(st.text(min_size=1, max_size=5), _scalars | st.lists(_scalars, max_size=3), max_size=8))
def test_nonfinite_finds_every_nan_and_infinity(values):
    """_nonfinite takes one sum for the usual row of numbers (finite sum: every value finite; an
    overflow of finite values or anything else takes the loop)."""
    from producer._transport import _nonfinite

    assert _nonfinite(values) == _nonfinite_reference(values)
