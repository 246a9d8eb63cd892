"""Codec: every event type round-trips, non-finite floats survive, bad input gives the right EventError."""

import math
from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

import events as ev
from events.codec import dumps
from events.model import MAX_PACKED_ROWS
from events import (
    EVENT_TYPES,
    MAX_EVENT_BYTES,
    MAX_KEYS,
    EventError,
    InvalidEvent,
    OversizedEvent,
    TooManyKeys,
    UndecodableEvent,
    UnknownEventType,
    decode,
    decode_dict,
    encode,
    loads,
    to_jsonable,
)

RUN = ev.RunRef(entity="ent", project="proj", run_id="r1")
SRC = ev.Source(kind="sdk", writer=ev.new_writer_id(), rank=0)
T0 = datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def make(cls, payload=None, **kw):
    """An event of ``cls`` with a fixed envelope."""
    if payload is not None:
        kw["payload"] = payload
    return cls(**{"run": RUN, "source": SRC, "seq": 7, **kw})


SAMPLES = [
    make(ev.RunInit, {"name": "n", "group": "g", "job_type": "train", "tags": ["a", "b"], "notes": "hi",
                      "config": {"lr": 0.1, "opt": {"betas": [0.9, math.nan]}, "l": [{"x": None}]},
                      "resumed": True, "starting_step": 10, "state": "pending",
                      "host": {"hostname": "h", "pid": 42, "gpu": None, "load": 0.5, "cuda": True}}),
    make(ev.RunLog, {"step": 3, "values": {"loss": 0.25, "acc": 1, "ok": True, "s": "é", "n": None, "xs": [1, 2.5]}}),
    make(ev.RunConfig, {"values": {"a": {"b": [1, 2]}}}),
    make(ev.RunSummary, {"set": {"best": -math.inf}, "remove": ["old"]}),
    make(ev.RunTags, {"add": ["x"], "remove": ["y"]}),
    make(ev.RunMetric, {"name": "val/*", "step_metric": "epoch", "step_sync": True, "hidden": False,
                        "summary": ["min", "last"], "goal": "minimize", "overwrite": None}),
    make(ev.RunAlert, {"title": "t" * 64, "text": "loss diverged", "level": "WARN", "wait_duration": 60}),
    make(ev.RunHeartbeat, {"step": 5}),
    make(ev.RunPreempting),
    make(ev.RunFinish, {"exit_code": 143, "signal": 15}),
    make(ev.RunStateChange, {"to": "pending", "reason": "requeue"}),
    make(ev.RunCrashed, {"reason": "no heartbeat for 300s", "last_heartbeat": T0}),
    make(ev.RunPreempted, {"reason": "exited after preempting", "last_heartbeat": None}),
    make(ev.RunUpdate, {"name": "renamed"}),
    make(ev.RunDelete, source=ev.Source(kind="api", writer="api-1")),
    make(ev.RunUndelete, time=T0),
]


def same(a, b) -> bool:
    """Equality that treats NaN as equal to NaN (compares the tagged JSON forms)."""
    return to_jsonable(a) == to_jsonable(b)


def test_samples_cover_every_event_type():
    assert sorted({e.type for e in SAMPLES}) == sorted(EVENT_TYPES)


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: e.type)
def test_round_trip(event):
    data = encode(event)
    back = decode(data)
    assert type(back) is type(event)
    assert same(back, event) and encode(back) == data
    if "nan" not in repr(event):
        assert back == event
    assert back.key == b"ent/proj/r1"


def test_nonfinite_floats_survive_exactly():
    e = make(ev.RunLog, {"step": 0, "values": {"nan": math.nan, "inf": math.inf, "ninf": -math.inf, "xs": [math.nan, -math.inf]}})
    data = encode(e)
    assert b"null" not in data and b'{"$f":"NaN"}' in data
    v = decode(data).payload.values
    assert math.isnan(v["nan"]) and v["inf"] == math.inf and v["ninf"] == -math.inf
    assert math.isnan(v["xs"][0]) and v["xs"][1] == -math.inf


def test_time_is_utc_and_iso_on_the_wire():
    e = make(ev.RunHeartbeat, time=datetime(2025, 1, 1, 12, tzinfo=timezone(timedelta(hours=2))))
    assert e.time == datetime(2025, 1, 1, 10, tzinfo=UTC) and e.time.tzinfo is UTC
    assert orjson.loads(encode(e))["time"] == "2025-01-01T10:00:00Z"


def test_run_ref_path_and_parse():
    assert RUN.path == "ent/proj/r1" and ev.RunRef.parse("ent/proj/r1") == RUN
    with pytest.raises(ValueError, match="entity/project/run_id"):
        ev.RunRef.parse("ent/proj")
    with pytest.raises(ValidationError, match="no '/'"):
        ev.RunRef(entity="e", project="a/b", run_id="r")


# --- rejections --------------------------------------------------------------------------------


def wire(event=SAMPLES[1]) -> dict:
    """A mutable JSON dict of a valid event, to break on purpose."""
    return orjson.loads(encode(event))


def reject(obj_or_bytes, exc):
    """Decode and return the error, asserting its class."""
    data = obj_or_bytes if isinstance(obj_or_bytes, bytes) else orjson.dumps(obj_or_bytes)
    with pytest.raises(exc) as info:
        decode(data)
    assert isinstance(info.value, EventError)
    return info.value


@pytest.mark.parametrize("data", [b"\xff\xfe", b"not json", b"", b"[1, 2]", b'"run.log"', b"null", b"{", "{}".encode("utf-16")])
def test_undecodable(data):
    assert reject(data, UndecodableEvent).reason == "undecodable"


def test_json_array_message():
    assert "got array" in str(reject(b"[]", UndecodableEvent))


def test_unknown_type_names_it_and_the_known_ones():
    err = reject({**wire(), "type": "run.teleport"}, UnknownEventType)
    assert err.reason == "unknown_type" and "'run.teleport'" in str(err) and "run.log" in str(err)


def test_missing_field():
    obj = wire()
    del obj["seq"]
    err = reject(obj, InvalidEvent)
    assert err.reason == "invalid" and "seq: Field required" in str(err)


def test_missing_type_is_invalid():
    obj = wire()
    del obj["type"]
    assert "type" in str(reject(obj, InvalidEvent))


@pytest.mark.parametrize("bad", ["3", True, -1, 1.5])
def test_wrong_step_type(bad):
    obj = wire()
    obj["payload"]["step"] = bad
    err = reject(obj, InvalidEvent)
    assert "payload.step" in str(err) and "\n" not in str(err)


def test_string_numbers_are_not_coerced_anywhere():
    obj = wire()
    obj["seq"] = "7"
    assert "seq" in str(reject(obj, InvalidEvent))
    obj = wire(SAMPLES[9])  # run.finish
    obj["payload"]["exit_code"] = "0"
    assert "payload.exit_code" in str(reject(obj, InvalidEvent))


def test_unix_time_is_rejected():
    obj = wire()
    obj["time"] = 1735689600
    assert "time: must be an ISO 8601 string" in str(reject(obj, InvalidEvent))


@pytest.mark.parametrize("where", ["envelope", "payload", "run", "source"])
def test_extra_field(where):
    obj = wire()
    (obj if where == "envelope" else obj[where])["surprise"] = 1
    assert "surprise: Extra inputs are not permitted" in str(reject(obj, InvalidEvent))


def test_bool_and_int_and_float_values_keep_their_type():
    back = decode(encode(make(ev.RunLog, {"step": 0, "values": {"b": True, "i": 1, "f": 1.0}}))).payload.values
    assert [type(back[k]) for k in "bif"] == [bool, int, float]


def test_oversized():
    big = make(ev.RunLog, {"step": 0, "values": {f"k{i}": "x" * 60_000 for i in range(20)}})
    err = pytest.raises(OversizedEvent, encode, big).value
    assert err.reason == "oversized" and f"{MAX_EVENT_BYTES:,}" in str(err) and err.size > MAX_EVENT_BYTES
    assert reject(b" " * (MAX_EVENT_BYTES + 1), OversizedEvent).size == MAX_EVENT_BYTES + 1


def test_too_many_keys():
    obj = wire()
    obj["payload"]["values"] = {f"k{i}": i for i in range(MAX_KEYS + 1)}
    err = reject(obj, TooManyKeys)
    assert err.reason == "too_many_keys" and "payload.values" in str(err) and f"{MAX_KEYS:,}" in str(err)


def test_too_many_config_keys():
    obj = wire(SAMPLES[2])
    obj["payload"]["values"] = {"nested": {f"k{i}": i for i in range(MAX_KEYS + 1)}}
    reject(obj, TooManyKeys)


@pytest.mark.parametrize("sample,path", [(1, ("values",)), (2, ("values", "a")), (3, ("set",))])
def test_dollar_keys_are_reserved(sample, path):
    obj = wire(SAMPLES[sample])
    target = obj["payload"]
    for p in path:
        target = target[p]
    target["$f"] = "NaN"
    target["z"] = 1  # with a second key it is no tag, so it reaches validation as a user key
    assert "'$f' starts with '$'" in str(reject(obj, InvalidEvent))


def test_alert_rules():
    obj = wire(SAMPLES[6])
    obj["payload"]["title"] = "t" * 65
    assert "payload.title" in str(reject(obj, InvalidEvent))
    obj = wire(SAMPLES[6])
    obj["payload"]["level"] = "FATAL"
    assert "payload.level" in str(reject(obj, InvalidEvent))
    obj = wire(SAMPLES[6])
    obj["payload"]["wait_duration"] = {"$f": "NaN"}
    assert "payload.wait_duration" in str(reject(obj, InvalidEvent))


def test_bad_run_ref():
    obj = wire()
    obj["run"]["project"] = "a/b"
    err = str(reject(obj, InvalidEvent))
    assert "run.project" in err and "'/'" in err


def test_tag_length():
    obj = wire(SAMPLES[4])
    obj["payload"]["add"] = [""]
    assert "payload.add.0" in str(reject(obj, InvalidEvent))


def test_many_problems_stay_one_compact_line():
    obj = wire()
    obj["payload"]["values"] = [1]
    obj["seq"], obj["v"], obj["source"]["kind"] = -1, "1", "robot"
    msg = str(reject(obj, InvalidEvent))
    assert "\n" not in msg and all(p in msg for p in ("seq", "v", "source.kind", "payload.values"))


# --- schema evolution --------------------------------------------------------------------------


def test_upcaster_applies_to_older_versions(monkeypatch):
    def v0_to_v1(obj):
        payload = dict(obj["payload"])
        payload["step"] = payload.pop("iteration")
        return {**obj, "payload": payload}

    monkeypatch.setitem(ev.UPCASTERS, ("run.heartbeat", 0), v0_to_v1)
    obj = {**wire(SAMPLES[7]), "v": 0, "payload": {"iteration": 9}}
    back = decode(orjson.dumps(obj))
    assert back.v == 1 and back.payload.step == 9


def test_upcasters_chain_to_the_current_version(monkeypatch):
    monkeypatch.setitem(ev.SCHEMA_VERSIONS, "run.update", 3)
    monkeypatch.setitem(ev.UPCASTERS, ("run.update", 1), lambda o: {**o, "payload": {"name": o["payload"]["title"]}})
    monkeypatch.setitem(ev.UPCASTERS, ("run.update", 2), lambda o: {**o, "payload": {**o["payload"], "notes": "v3"}})
    back = decode_dict({**wire(SAMPLES[13]), "v": 1, "payload": {"title": "old"}})
    assert back.v == 3 and back.payload.name == "old" and back.payload.notes == "v3"


def test_versions_without_upcaster_or_from_the_future_are_invalid():
    assert "no upcaster from version 0" in str(reject({**wire(), "v": 0}, InvalidEvent))
    assert "newer" in str(reject({**wire(), "v": 2}, InvalidEvent))


def test_a_failing_upcaster_is_still_an_event_error(monkeypatch):
    monkeypatch.setitem(ev.UPCASTERS, ("run.heartbeat", 0), lambda o: o["nope"])
    assert "KeyError" in str(reject({**wire(SAMPLES[7]), "v": 0}, InvalidEvent))


# --- properties --------------------------------------------------------------------------------

keys = st.text(min_size=1, max_size=20).filter(lambda k: not k.startswith("$"))
scalars = (
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats() | st.text(max_size=30)
    | st.sampled_from([math.nan, math.inf, -math.inf, -0.0])
)
log_values = st.dictionaries(keys, scalars | st.lists(scalars, max_size=5), max_size=12)
config = st.recursive(scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(keys, c, max_size=3), max_leaves=25)


@given(step=st.integers(0, 2**63 - 1), values=log_values, seq=st.integers(0, 2**40))
def test_log_round_trip_property(step, values, seq):
    e = make(ev.RunLog, {"step": step, "values": values}, seq=seq)
    data = encode(e)
    back = decode(data)
    assert same(back, e) and encode(back) == data
    for k, v in values.items():
        got = back.payload.values[k]
        if isinstance(v, float) and math.isnan(v):
            assert math.isnan(got)
        elif not isinstance(v, list):
            assert got == v and type(got) is type(v)


@given(cfg=st.dictionaries(keys, config, max_size=6))
def test_config_round_trip_property(cfg):
    e = make(ev.RunInit, {"config": cfg})
    assert same(decode(encode(e)), e)


def packed(rows: list) -> dict:
    """The wire dict of a run.log whose ``more`` is ``rows`` (raw JSON-able objects)."""
    obj = wire(make(ev.RunLog, {"step": 0, "values": {"a": 1.0}}))
    obj["payload"]["more"] = rows
    return obj


def row_is_valid(row) -> bool:
    """One row alone, by the rules of a payload's own step and values (what a pack must agree with)."""
    try:
        ev.LogPayload.model_validate(row)
    except (ValidationError, EventError):
        return False
    return True


pack_rows = st.lists(
    st.fixed_dictionaries({"step": st.integers(0, 10), "values": st.dictionaries(st.sampled_from(["a", "b"]), st.floats(), max_size=2)})
    | st.fixed_dictionaries({"step": st.integers(-1, 3) | st.booleans() | st.text(max_size=2) | st.floats(),
                             "values": log_values | st.integers(0, 9) | st.lists(st.integers(0, 9), max_size=2)})
    | st.dictionaries(st.sampled_from(["step", "values", "x"]), st.integers(0, 3) | st.dictionaries(keys, scalars, max_size=2),
                      max_size=3),
    max_size=6)


@settings(max_examples=300)
@given(rows=pack_rows)
def test_a_pack_is_accepted_exactly_when_each_of_its_rows_is(rows):
    """``more`` is checked as a whole (events.model._rows), for speed: it must accept and return
    what checking each row on its own would."""
    valid = all(row_is_valid(r) for r in rows)
    obj = packed(rows)
    if not valid:
        err = reject(obj, EventError)
        assert "payload.more" in str(err) and "\n" not in str(err)
        return
    back = decode(dumps(obj))  # non-finite floats tagged, as on the wire
    assert repr([(r.step, r.values) for r in back.payload.more]) == repr([(r["step"], r["values"]) for r in rows])
    assert all(type(r) is ev.LogRow for r in back.payload.more)
    assert same(decode(encode(back)), back)


@pytest.mark.parametrize("more,says", [
    ({"step": 1}, "must be a list of rows"),
    ([{"step": 1}], "row 0 must be an object with exactly the fields step and values"),
    ([{"step": 1, "values": {}}, {"step": 2, "values": {}, "x": 1}], "row 1 must be an object"),
    ([{"step": 1, "values": {}}, {"step": True, "values": {}}], "row 1: step must be an integer"),
    ([{"step": 1, "values": {}}, {"step": -1, "values": {}}], "row 1: step must be an integer"),
    ([{"step": 1, "values": {"a": 1.0}}, {"step": 2, "values": {"a": {"b": 1}}}], "row 1: "),
    ([{"step": 1, "values": {"$f": 1.0}}], "row 0: "),
    ([{"step": i, "values": {}} for i in range(MAX_PACKED_ROWS + 1)], "a pack holds at most"),
])
def test_a_bad_row_in_a_pack_is_named(more, says):
    err = reject(packed(more), InvalidEvent)
    assert "payload.more" in str(err) and says in str(err), str(err)


@settings(max_examples=150)
@given(rows=pack_rows)
def test_a_stored_pack_decodes_as_it_did_when_it_was_accepted(rows):
    """Replay decodes stored bodies with ``stored=True``, which skips the row checks they passed."""
    try:
        accepted = decode(dumps(packed(rows)))
    except EventError:
        return  # refused: never stored
    again = decode(encode(accepted), stored=True)
    assert same(again, accepted) and all(type(r) is ev.LogRow for r in again.payload.more)


def test_a_stored_pack_of_an_older_version_is_checked_in_full_after_its_upcast(monkeypatch):
    monkeypatch.setitem(ev.SCHEMA_VERSIONS, "run.log", 2)
    monkeypatch.setitem(ev.UPCASTERS, ("run.log", 1), lambda o: o)
    bad = {**packed([{"step": 1, "values": {"a": {"nested": 1}}}]), "v": 1}
    with pytest.raises(InvalidEvent, match="row 0"):
        decode(orjson.dumps(bad), stored=True)
    assert decode(orjson.dumps({**packed([{"step": 1, "values": {"a": 1.0}}]), "v": 1}), stored=True).v == 2


def test_a_row_with_too_many_keys_is_refused_in_a_pack():
    reject(packed([{"step": 1, "values": {f"k{i}": 1.0 for i in range(ev.MAX_KEYS + 1)}}]), EventError)


def test_pack_rows_are_copies_of_the_given_dicts():
    values = {"a": 1.0}
    payload = ev.LogPayload(step=0, values={"a": 0.0}, more=[ev.LogRow(step=1, values=values)])
    values["a"] = 2.0
    assert payload.more[0].values == {"a": 1.0}


def decode_or_event_error(data: bytes):
    """Decode; an EventError is an accepted outcome, anything else fails the test."""
    try:
        return decode(data)
    except EventError:
        return None


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise_anything_but_event_errors(data):
    decode_or_event_error(data)


json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=20,
)
_fields = ["id", "type", "run", "source", "seq", "time", "v", "payload"]


@settings(max_examples=300)
@given(sample=st.sampled_from(SAMPLES), field=st.sampled_from(_fields), junk=json_like, sub=st.text(max_size=8))
def test_mangled_events_never_raise_anything_but_event_errors(sample, field, junk, sub):
    obj = orjson.loads(encode(sample))
    if isinstance(obj[field], dict) and sub:
        obj[field][sub] = junk
    else:
        obj[field] = junk
    try:
        data = ev.dumps(obj)
    except orjson.JSONEncodeError:  # e.g. integers beyond 64 bits: not a wire message at all
        return
    decode_or_event_error(data)
    try:
        decode_dict(obj)
    except EventError:
        pass


@given(json_like)
def test_arbitrary_json_never_raises_anything_but_event_errors(obj):
    try:
        decode_dict(obj)
    except EventError:
        pass


def test_loads_untags_tags_spelled_with_escapes_and_skips_text_without_any() -> None:
    # The untag walk is skipped when the text has no '$' and no backslash-u escape; an escaped
    # "$f" is still a tag.
    assert math.isnan(loads(b'{"a": {"\\u0024f": "NaN"}}')["a"])
    assert loads(b'{"a": [1, {"$\\u0066": "-Infinity"}]}')["a"][1] == -math.inf
    assert loads('{"a": {"$f": "Infinity"}}')["a"] == math.inf
    assert loads(memoryview(b'[{"$f": "NaN"}]'))[0] != 0
    assert loads(b'{"a": {"f": "NaN"}, "b": [1.5]}') == {"a": {"f": "NaN"}, "b": [1.5]}
