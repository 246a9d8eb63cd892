"""Event ids: UUIDv7 layout and per-process ordering, deterministic ids, writer ids, UTC clock."""

import time
import uuid

from events import deterministic_event_id, new_event_id, new_writer_id, utcnow


def test_uuid7_layout_and_timestamp():
    before = time.time_ns() // 1_000_000
    u = new_event_id()
    after = time.time_ns() // 1_000_000
    assert u.version == 7
    assert u.variant == uuid.RFC_4122
    assert before <= u.int >> 80 <= after + 1  # +1: the counter may have rolled into the next ms


def test_uuid7_increases_across_10000_calls():
    ids = [new_event_id() for _ in range(10_000)]
    assert all(a < b for a, b in zip(ids, ids[1:], strict=False))
    assert len(set(ids)) == len(ids)


def test_deterministic_ids_are_stable_and_unambiguous():
    assert deterministic_event_id("crashed", "a/b/c", "7") == deterministic_event_id("crashed", "a/b/c", "7")
    assert deterministic_event_id("ab", "c") != deterministic_event_id("a", "bc")
    assert deterministic_event_id("x").version == 5


def test_writer_id_and_clock():
    assert len(new_writer_id()) == 32 and new_writer_id() != new_writer_id()
    assert utcnow().utcoffset().total_seconds() == 0
