"""Background processes of the local stack: start detached, record, find, stop.

Each process we start gets a pid file under ``$RUNLOG_HOME/run/NAME.pid`` holding its pid and
a marker string that must appear in its command line. ``stop`` only signals a pid whose
command line still carries the marker, so ``runlog down`` stops exactly what ``runlog up``
started and never a stranger that inherited a recycled pid.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path


class StackError(Exception):
    """Something about the local stack a person must fix; the message is one clear sentence."""


@dataclass(frozen=True)
class Recorded:
    name: str
    pid: int
    marker: str


def run_dir(home: Path) -> Path:
    path = home / "run"
    path.mkdir(parents=True, exist_ok=True)
    return path


def log_path(home: Path, name: str) -> Path:
    path = home / "logs"
    path.mkdir(parents=True, exist_ok=True)
    return path / f"{name}.log"


def cmdline(pid: int) -> str:
    """The command line of ``pid`` with NULs as spaces, or "" when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace")


def is_alive(pid: int, marker: str) -> bool:
    """True when ``pid`` runs and is still the process we started (its cmdline has ``marker``)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    state = _proc_state(pid)
    if state in ("Z", "X", ""):
        return False
    return marker in cmdline(pid)


def _proc_state(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[0]


def record(home: Path, name: str, pid: int, marker: str) -> None:
    (run_dir(home) / f"{name}.pid").write_text(json.dumps({"pid": pid, "marker": marker}))


def recorded(home: Path, name: str) -> Recorded | None:
    path = run_dir(home) / f"{name}.pid"
    try:
        data = json.loads(path.read_text())
        return Recorded(name, int(data["pid"]), str(data["marker"]))
    except (OSError, ValueError, KeyError):
        return None


def forget(home: Path, name: str) -> None:
    (run_dir(home) / f"{name}.pid").unlink(missing_ok=True)


def running(home: Path, name: str) -> Recorded | None:
    """The recorded process ``name`` if it still runs, else None."""
    rec = recorded(home, name)
    if rec is not None and is_alive(rec.pid, rec.marker):
        return rec
    return None


def spawn(home: Path, name: str, argv: Sequence[str], marker: str, env: dict[str, str] | None = None) -> int:
    """Start ``argv`` detached (own session, stdout and stderr to the log file) and record it.

    ``posix_spawn`` rather than ``subprocess.Popen``: the process outlives us on purpose, and
    there is no Popen object to be collected (and warned about) while it still runs.
    """
    log = str(log_path(home, name))
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644),
        (os.POSIX_SPAWN_DUP2, 1, 2),
    ]
    pid = os.posix_spawnp(argv[0], list(argv), dict(env if env is not None else os.environ),
                          file_actions=actions, setsid=True)
    record(home, name, pid, marker)
    # Until the child has exec'd, its command line is still ours and lacks the marker.
    wait_until(lambda: marker in cmdline(pid) or _proc_state(pid) in ("Z", "X", ""), 10, 0.01)
    return pid


def stop(home: Path, name: str, timeout: float = 30.0) -> bool:
    """SIGTERM the recorded process group, SIGKILL after ``timeout``; True if something was stopped."""
    rec = running(home, name)
    if rec is None:
        forget(home, name)
        return False
    _signal_group(rec.pid, signal.SIGTERM)
    if not wait_until(lambda: not is_alive(rec.pid, rec.marker), timeout):
        _signal_group(rec.pid, signal.SIGKILL)
        wait_until(lambda: not is_alive(rec.pid, rec.marker), 10)
    forget(home, name)
    return True


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def wait_until(check: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def port_open(host: str, port: int) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def ensure_port_free(host: str, port: int, what: str, env_var: str) -> None:
    """Raise a one-sentence StackError when another process already listens on the port."""
    if port_open(host, port):
        raise StackError(
            f"{what} cannot start: port {host}:{port} is already in use by another process "
            f"(stop it, or choose another port with {env_var})."
        )


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
