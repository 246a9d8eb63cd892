"""The on-disk spool: framing, torn writes, the acked side file, and the bounded queue spilling to it."""

from __future__ import annotations

import os
import socket
import time
import zlib

import pytest

from events import RunLog, RunRef, Source
from events.codec import decode, encode
from events.settings import Settings
from producer._spool import HEADER, SpoolFile, find_spools, frame, iter_records, read_acked, run_dir, write_acked
from producer._sync import inspect
from producer._transport import KafkaTransport


def _event(seq: int) -> RunLog:
    return RunLog(run=RunRef(entity="e", project="p", run_id="r"), source=Source(kind="sdk", writer="w"),
                  seq=seq, payload={"step": seq, "values": {"x": float(seq)}})


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _settings(**kw) -> Settings:
    return Settings(bootstrap_servers=f"127.0.0.1:{_dead_port()}", events_topic="t", **kw)


def _wait(check, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_framing_round_trip(tmp_path):
    spool = SpoolFile(tmp_path / "w.spool")
    datas = [encode(_event(i)) for i in range(5)]
    positions = [spool.write(d) for d in datas]
    spool.flush()
    assert [p[0] for p in positions] == list(range(5))
    raw = (tmp_path / "w.spool").read_bytes()
    length, crc = HEADER.unpack_from(raw, 0)
    assert length == len(datas[0]) and crc == zlib.crc32(datas[0])
    assert raw == b"".join(frame(d) for d in datas)
    records = list(iter_records(tmp_path / "w.spool"))
    assert [d for _, d in records] == datas
    assert [end for _, end in [(None, e) for e, _ in records]] == [p[2] for p in positions]
    assert [decode(d).seq for _, d in records] == list(range(5))
    assert [(i, d) for i, _, d in spool.read(0, 0, 100)] == list(enumerate(datas))
    assert [i for i, _, _ in spool.read(positions[2][1], 2, 2)] == [2, 3]
    spool.close()


@pytest.mark.parametrize("cut", [1, HEADER.size - 1, HEADER.size, HEADER.size + 5])
def test_torn_last_record_is_ignored_and_overwritten(tmp_path, cut):
    path = tmp_path / "w.spool"
    spool = SpoolFile(path)
    for i in range(3):
        spool.write(encode(_event(i)))
    spool.close()
    size = path.stat().st_size
    last = len(frame(encode(_event(2))))
    with open(path, "r+b") as f:  # a write torn in the middle of the last record
        f.truncate(size - last + cut)
    assert [decode(d).seq for _, d in iter_records(path)] == [0, 1]
    reopened = SpoolFile(path)  # the same writer continues: the torn tail is cut off
    assert reopened.records == 2
    reopened.write(encode(_event(2)))
    reopened.close()
    assert [decode(d).seq for _, d in iter_records(path)] == [0, 1, 2]


def test_corrupt_last_record_is_ignored(tmp_path):
    path = tmp_path / "w.spool"
    spool = SpoolFile(path)
    for i in range(3):
        spool.write(encode(_event(i)))
    spool.close()
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # flip a byte of the last record's data: its checksum fails
    path.write_bytes(bytes(data))
    assert [decode(d).seq for _, d in iter_records(path)] == [0, 1]
    assert inspect(path).total == 2


def test_ack_frontier_is_contiguous_and_saved_atomically(tmp_path):
    path = tmp_path / "w.spool"
    spool = SpoolFile(path)
    pos = [spool.write(encode(_event(i))) for i in range(4)]
    spool.flush()
    spool.ack(1, pos[1][2])  # out of order: the frontier waits for record 0
    assert (spool.acked_records, spool.acked_offset) == (0, 0)
    spool.ack(0, pos[0][2])
    assert (spool.acked_records, spool.acked_offset) == (2, pos[1][2])
    spool.sync()
    assert read_acked(path) == (2, pos[1][2])
    assert not list(tmp_path.glob("*.tmp*"))  # the temporary file was renamed away
    state = inspect(path)
    assert (state.total, state.acked, state.unsent) == (4, 2, 2)
    assert [decode(d).seq for _, d in state.records] == [2, 3]
    spool.close()
    write_acked(path, 9, 12345)  # a side file that does not match the spool: resend everything
    assert inspect(path).unsent == 4
    (tmp_path / "w.acked").write_bytes(b"garbage")
    assert read_acked(path) == (0, 0)


def test_a_live_spool_is_locked(tmp_path):
    path = tmp_path / "w.spool"
    spool = SpoolFile(path)
    with pytest.raises(RuntimeError, match="in use"):
        SpoolFile(path)
    spool.close()
    SpoolFile(path).close()


def test_layout_and_discovery(tmp_path):
    assert run_dir(tmp_path, "e", "p", "r") == tmp_path / "spool" / "e+p+r"
    assert run_dir(tmp_path, "e", "p", "r", base=tmp_path / "mine") == tmp_path / "mine" / "runlog" / "e+p+r"
    a = run_dir(tmp_path, "e", "p", "r") / "w1.spool"
    b = run_dir(tmp_path, "e", "p", "s") / "w2.spool"
    for p in (a, b):
        SpoolFile(p).close()
    assert find_spools([tmp_path / "spool"]) == sorted([a.resolve(), b.resolve()])
    assert find_spools([a]) == [a.resolve()]


def test_offline_transport_writes_everything_to_the_spool(tmp_path):
    path = tmp_path / "w.spool"
    transport = KafkaTransport(_settings(), spool=SpoolFile(path), online=False)
    for seq in range(500):
        transport.send(_event(seq))
    assert transport.flush(5) == 500  # spooled, not acknowledged
    assert transport.counters.spooled == 500
    assert transport.close(5) == 500
    assert [decode(d).seq for _, d in iter_records(path)] == list(range(500))


def test_queue_cap_spills_to_disk_and_reads_back_in_order(tmp_path):
    """No broker: past the cap, records live only in the spool; the sender reads them back in order."""
    path = tmp_path / "w.spool"
    transport = KafkaTransport(_settings(), spool=SpoolFile(path), queue_max=10)
    for seq in range(200):
        transport.send(_event(seq))
    _wait(lambda: transport.counters.spooled == 200)
    assert len(transport._window) <= 10 and transport._spill is not None  # the rest only on disk
    seen = [i for i, _, _, _ in transport._window]
    transport._window.clear()
    while transport._spill is not None:
        transport._refill()
        seen += [i for i, _, _, _ in transport._window]
        assert len(transport._window) <= 10
        transport._window.clear()
    assert seen == list(range(200))
    assert transport.close(0.1) == 200


def test_queue_stays_bounded_when_the_spooler_is_stalled(tmp_path):
    """The caller outruns the background thread: send() spools the oldest events itself."""

    class Stalled(KafkaTransport):
        def _drain(self) -> bool:
            return super()._drain() if self._closing.is_set() else False

    path = tmp_path / "w.spool"
    transport = Stalled(_settings(), spool=SpoolFile(path), queue_max=10)
    worst = 0
    for seq in range(300):
        transport.send(_event(seq))
        worst = max(worst, len(transport._queue))
    assert worst <= 10
    assert transport.counters.spooled >= 290
    transport.close(0.1)  # what was still queued is spooled at close
    assert [decode(d).seq for _, d in iter_records(path)] == list(range(300))
    assert os.path.exists(path.with_suffix(".acked")) is False
