"""The `runlog` command as a person uses it: clear errors, and `down` leaves nothing behind."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from deploy import process

pytestmark = pytest.mark.integration

RUNLOG = [sys.executable, "-m", "deploy.cli"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stack_env(home: Path, kafka_port: int) -> dict[str, str]:
    return {
        **os.environ,
        "RUNLOG_HOME": str(home),
        "RUNLOG_BOOTSTRAP_SERVERS": f"127.0.0.1:{kafka_port}",
        "RUNLOG_KAFKA_CONTROLLER_PORT": str(free_port()),
        "RUNLOG_DATABASE_URL": f"postgresql://runlog@127.0.0.1:{free_port()}/runlog",
        "RUNLOG_API_URL": f"http://127.0.0.1:{free_port()}",
        "RUNLOG_CONSUMERS": "2",
    }


def test_up_with_kafkas_port_taken_says_so_in_one_sentence_and_starts_nothing(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([*RUNLOG, "up"], env=stack_env(tmp_path / "home", port),
                                capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    assert f"Kafka cannot start: port 127.0.0.1:{port} is already in use" in result.stderr
    assert not (tmp_path / "home" / "postgres" / "data").exists()


def test_up_without_java_says_so_in_one_sentence(tmp_path: Path) -> None:
    env = {**stack_env(tmp_path / "home", free_port()), "PATH": str(tmp_path / "empty-bin")}
    result = subprocess.run([*RUNLOG, "up"], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    assert "Kafka needs a Java runtime (JDK 17 or newer) on PATH, and `java` was not found." in result.stderr


@pytest.mark.slow
def test_up_twice_is_harmless_and_down_stops_every_process_it_started(tmp_path: Path) -> None:
    env = stack_env(tmp_path / "home", free_port())
    first = subprocess.run([*RUNLOG, "up"], env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    run_dir = tmp_path / "home" / "run"
    pids = {p.stem: process.recorded(tmp_path / "home", p.stem) for p in run_dir.glob("*.pid")}
    # RUNLOG_CONSUMERS=2: two projection consumers in one group.
    assert set(pids) == {"postgres", "kafka", "consumer", "consumer-2", "watchdog", "notifier", "api"}
    assert all(rec and process.is_alive(rec.pid, rec.marker) for rec in pids.values())

    second = subprocess.run([*RUNLOG, "up"], env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    assert "started" not in second.stdout  # everything was already running
    status = subprocess.run([*RUNLOG, "status"], env=env, capture_output=True, text=True, timeout=60)
    assert status.stdout.count("running") == 7

    down = subprocess.run([*RUNLOG, "down"], env=env, capture_output=True, text=True, timeout=120)
    assert down.returncode == 0, down.stderr
    assert [n for n, rec in pids.items() if rec and process.is_alive(rec.pid, rec.marker)] == []
    home = str(tmp_path / "home")
    leftovers = [pid for pid in os.listdir("/proc") if pid.isdigit() and home in process.cmdline(int(pid))
                 and process._proc_state(int(pid)) not in ("Z", "")]
    assert leftovers == []
