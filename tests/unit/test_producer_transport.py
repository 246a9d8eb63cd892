"""Transports without a broker: the Kafka transport must never block or raise on the caller's thread."""

from __future__ import annotations

import socket
import time

import pytest

from events import RunLog, RunRef, Source
from events.settings import Settings
from producer._transport import Counters, DisabledTransport, KafkaTransport, MemoryTransport, Transport


def _event(seq: int) -> RunLog:
    return RunLog(run=RunRef(entity="e", project="p", run_id="r"), source=Source(kind="sdk", writer="w"),
                  seq=seq, payload={"step": seq, "values": {"x": seq}})


def _dead_port() -> int:
    """A local port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_simple_transports_follow_the_protocol():
    for transport in (DisabledTransport(), MemoryTransport()):
        assert isinstance(transport, Transport)
        transport.send(_event(0))
        assert transport.flush(0) == 0 and transport.close(0) == 0
        assert transport.counters.pending == 0
    memory = MemoryTransport()
    memory.send(_event(1))
    assert [e.seq for e in memory.events] == [1]


def test_counters_pending():
    assert Counters(written=5, sent=4, acked=2, failed=1).pending == 2


def test_kafka_transport_with_no_broker_never_blocks_the_caller():
    settings = Settings(bootstrap_servers=f"127.0.0.1:{_dead_port()}", events_topic="t")
    transport = KafkaTransport(settings)
    assert isinstance(transport, Transport)
    start = time.monotonic()
    for seq in range(1000):
        transport.send(_event(seq))
    assert time.monotonic() - start < 0.5  # send is an append, not I/O
    assert transport.counters.written == 1000
    start = time.monotonic()
    assert transport.flush(0.3) == 1000  # nothing acknowledged: all 1000 remain
    assert 0.25 < time.monotonic() - start < 2
    assert transport.connected is False and transport.last_error is not None
    start = time.monotonic()
    assert transport.close(0.2) == 1000
    assert time.monotonic() - start < 3
    assert transport.close(0) == 1000  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        transport.send(_event(1000))


def test_switch_boost_shortens_the_interval_while_any_owner_is_behind_and_restores_it():
    import sys

    from producer._transport import _SwitchBoost

    before = sys.getswitchinterval()
    boost, a, b = _SwitchBoost(), object(), object()
    try:
        boost.engage(a)
        assert sys.getswitchinterval() == pytest.approx(_SwitchBoost.INTERVAL)
        boost.engage(a)  # twice: still one owner
        boost.engage(b)
        boost.disengage(a)
        assert sys.getswitchinterval() == pytest.approx(_SwitchBoost.INTERVAL)  # b is still behind
        boost.disengage(b)
        assert sys.getswitchinterval() == before
        boost.disengage(b)  # not engaged: nothing happens
        assert sys.getswitchinterval() == before
        boost.engage(a)
        sys.setswitchinterval(0.002)  # the program changed it meanwhile: that setting stays
        boost.disengage(a)
        assert sys.getswitchinterval() == pytest.approx(0.002)
    finally:
        sys.setswitchinterval(before)


def test_a_transport_that_fell_behind_gives_the_switch_interval_back(monkeypatch):
    import sys

    import producer._transport as transport_module

    engaged = []
    engage = transport_module._BOOST.engage
    monkeypatch.setattr(transport_module._BOOST, "engage", lambda owner: (engaged.append(owner), engage(owner)))
    before = sys.getswitchinterval()
    transport = KafkaTransport(Settings(bootstrap_servers=f"127.0.0.1:{_dead_port()}", events_topic="t"),
                               online=False)
    with transport.spool.lock:  # the spooler waits for this lock: it falls behind, surely
        for seq in range(20 * KafkaTransport.BEHIND):
            transport.send(_event(seq))
    assert transport.flush(10) == 20 * KafkaTransport.BEHIND  # offline: spooled, none acknowledged
    transport.close(5)
    assert engaged and engaged[0] is transport  # it did fall behind
    assert sys.getswitchinterval() == before
