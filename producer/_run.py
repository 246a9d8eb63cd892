"""``init()`` and ``Run``: the W&B-style writing side of the SDK.

Everything here is on the training hot path and does no I/O: a call validates and normalizes
its data, becomes one immutable event stamped with this process's writer id and the next
``seq``, and is handed to the run's transport (see ``_transport``), which sends it from a
background thread.
"""

from __future__ import annotations

import atexit
import datetime as _dt
import getpass
import math
import os
import platform
import secrets
import shlex
import signal as _signal
import socket
import sys
import threading
import time
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from events.model import EVENT_TYPES, MetricPayload, RunRef, Source
from events.values import (
    INT64_MAX,
    INT64_MIN,
    MAX_KEY_LENGTH,
    MAX_KEYS,
    MAX_STRING_LENGTH,
    normalize_config,
    normalize_values,
)

from ._transport import DisabledTransport, KafkaTransport, Transport
from .errors import RunlogWarning, UsageError

MODES = ("online", "offline", "disabled")
METRIC_SUMMARIES = ("min", "max", "mean", "best", "last", "none", "first")
ALERT_LEVELS = ("INFO", "WARN", "ERROR")
FINISH_TIMEOUT = 30.0  # seconds finish() waits for Kafka to acknowledge what was logged
_ID_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
# log()'s fast path: value types that need no further check, and those that need a range/length check
_PLAIN_TYPES = frozenset({float, bool, type(None)})
_SCALAR_TYPES = frozenset({float, bool, type(None), int, str})
_KNOWN_KEYS_MAX = 100_000  # keys log() remembers as checked (per run); beyond, new keys take the slow path
_ADJECTIVES = (
    "amber autumn bold brisk calm cosmic crisp dainty dark dry eager fancy fiery frosty gentle "
    "glad golden grateful hardy hazy icy jolly kind lively lucky misty noble olive polar proud "
    "quiet rapid royal rosy serene silver smooth snowy solar still sunny swift tidy vivid warm wild"
).split()
_NOUNS = (
    "aurora bird breeze brook cloud comet dawn dew dream dust field fire flower fog forest frost "
    "glade grass haze hill lake leaf meadow moon morning mountain night ocean paper pine plant "
    "pond rain river sea shadow sky smoke snow sound star sun sunset surf thunder tree wave wind"
).split()


# -- the writer: one per process -----------------------------------------------------------


class _Writer:
    """This process as a writer: one writer id, and a gapless ``seq`` from 0 for each run.

    Per run, not per process: only one run's events share a Kafka partition (and so an order),
    and the consumer tracks (writer, run) pairs; a seq spanning runs would look like gaps."""

    def __init__(self) -> None:
        from events.ids import new_writer_id

        self.id = new_writer_id()
        self.next_seq: dict[str, int] = {}
        self.lock = threading.Lock()
        self.deferred_signal: tuple[int, Any] | None = None  # a signal that arrived inside _emit


_writer: _Writer | None = None
_writer_lock = threading.Lock()


def _get_writer() -> _Writer:
    global _writer
    with _writer_lock:
        if _writer is None:
            _writer = _Writer()
        return _writer


def _forget_writer() -> None:
    """A forked child is a new writer (its own id, seq from 0), never a copy of its parent."""
    global _writer, _writer_lock
    _writer, _writer_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_writer)


# -- defaults ---------------------------------------------------------------------------------


def generate_id(length: int = 8) -> str:
    """A random run id like W&B's: ``length`` lowercase base36 characters."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(length))


def generate_name(seed: str | None = None) -> str:
    """A W&B-looking display name, ``adjective-noun-N`` (N is random: there is no server to count).

    With a ``seed`` (an explicit run id) the name follows from it, so the ranks of a shared run
    that all start with ``id=X`` and no name agree on one name instead of overwriting each other's."""
    if seed is None:
        return f"{secrets.choice(_ADJECTIVES)}-{secrets.choice(_NOUNS)}-{secrets.randbelow(999) + 1}"
    import random

    rng = random.Random(seed)
    return f"{rng.choice(_ADJECTIVES)}-{rng.choice(_NOUNS)}-{rng.randrange(999) + 1}"


def default_entity(settings: Any) -> str:
    """W&B's order: RUNLOG_ENTITY, else the entity of the API key (``rl_<entity>_<secret>``), else
    the OS user name. The public client completes ``project/run_id`` paths the same way."""
    if settings.entity:
        return str(settings.entity)
    from .public import find_api_key

    key = find_api_key(settings)
    if key and key.startswith("rl_") and "_" in key[3:]:
        return key[3:].rsplit("_", 1)[0]
    return _user()


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in some containers
        return "user"


def _env_rank() -> int | None:
    value = os.environ.get("RANK")
    if value is None or not value.strip():
        return None
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"environment variable RANK={value!r} is not an integer") from None


def _host_info() -> dict[str, Any]:
    return {
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "user": _user(),
        "python": platform.python_version(),
        "os": platform.platform(),
        "program": sys.argv[0] if sys.argv and sys.argv[0] else None,
        "args": shlex.join(sys.argv[1:])[:MAX_STRING_LENGTH],  # host values are flat scalars
    }


def _as_config_mapping(config: Any) -> Mapping[str, Any]:
    if config is None:
        return {}
    if isinstance(config, Mapping):
        return config
    if hasattr(config, "__dict__") and not isinstance(config, type):  # argparse.Namespace & co
        return vars(config)
    raise UsageError(f"config must be a dict or an argparse.Namespace, not {type(config).__name__}")


def _check_tags(tags: Iterable[str] | None) -> tuple[str, ...]:
    if tags is None:
        return ()
    if isinstance(tags, str):
        raise UsageError("tags must be a list of strings, not a single string")
    out: list[str] = []
    for tag in tags:
        if not isinstance(tag, str) or not tag:
            raise UsageError(f"tag {tag!r} is not a non-empty string")
        if tag not in out:
            out.append(tag)
    return tuple(out)


def _make_transport(mode: str, settings: Any, spool_path: Path | None = None) -> Transport:
    """The transport a new run gets (tests replace this function to record events).

    Online and offline runs write every event to the spool file ``spool_path`` first."""
    if mode == "disabled":
        return DisabledTransport()
    from ._spool import SpoolFile

    spool = SpoolFile(spool_path) if spool_path is not None else None
    return KafkaTransport(settings, spool=spool, online=mode == "online")


@dataclass(frozen=True)
class RunStatus:
    """``run.status()``: how far the run's events got."""

    written: int  # events the run produced (each logged row counts, packed or not)
    sent: int  # handed to Kafka
    acknowledged: int  # acknowledged by Kafka (acks=all)
    spooled: int  # written to the local spool
    spooled_unsent: int  # in the spool and not acknowledged: what `runlog sync` would send


# -- config and summary: dicts that emit events -----------------------------------------------


class Config(dict):
    """``run.config``: a dict whose item set, ``update`` and attribute set emit ``run.config``.

    Values are checked (``normalize_config``) before anything changes, so a bad value raises
    and leaves the config as it was. Attribute access works as in W&B (``run.config.lr``)."""

    def __init__(self, run: Run | None, initial: Mapping[str, Any] = ()) -> None:
        super().__init__(initial)
        object.__setattr__(self, "_run", run)

    def __setitem__(self, key: str, value: Any) -> None:
        self.update({key: value})

    def update(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        values = dict(*args, **kwargs)
        if not values:
            return
        checked = normalize_config(values)
        if self._run is not None:
            self._run._emit("run.config", {"values": checked})
        super().update(values)

    def setdefaults(self, values: Mapping[str, Any]) -> None:
        """Set the keys that are not set yet (W&B's ``config.setdefaults``)."""
        self.update({k: v for k, v in values.items() if k not in self})

    def setdefault(self, key: str, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return self[key]

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config has no key {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __delitem__(self, key: str) -> None:
        raise UsageError("config keys cannot be removed; set a new value instead")

    def pop(self, *args: Any) -> Any:
        raise UsageError("config keys cannot be removed; set a new value instead")

    popitem = clear = pop  # type: ignore[assignment]

    def as_dict(self) -> dict[str, Any]:
        return dict(self)


class Summary(dict):
    """``run.summary``: a dict whose item set / ``update`` / ``del`` emit ``run.summary``.

    By default it holds the last value logged for each key (as in W&B); an explicit set names
    the keys it sets, and wins until that key is logged again."""

    def __init__(self, run: Run | None) -> None:
        super().__init__()
        self._run = run

    def __setitem__(self, key: str, value: Any) -> None:
        self.update({key: value})

    def update(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        values = normalize_values(dict(*args, **kwargs))
        if not values:
            return
        if self._run is not None:
            self._run._emit("run.summary", {"set": values, "remove": []})
        super().update(values)

    def __delitem__(self, key: str) -> None:
        if key not in self:
            raise KeyError(key)
        if self._run is not None:
            self._run._emit("run.summary", {"set": {}, "remove": [key]})
        super().__delitem__(key)

    def pop(self, key: str, *default: Any) -> Any:
        if key not in self:
            if default:
                return default[0]
            raise KeyError(key)
        value = self[key]
        del self[key]
        return value

    def _logged(self, row: Mapping[str, Any]) -> None:
        """Follow a committed history row, without an event (the server does the same fold)."""
        super().update(row)


# -- the run --------------------------------------------------------------------------------------


class Run:
    """One run as its writer sees it. Create it with :func:`producer.init`."""

    def __init__(
        self,
        *,
        entity: str,
        project: str,
        run_id: str,
        name: str,
        group: str | None,
        job_type: str | None,
        tags: tuple[str, ...],
        notes: str | None,
        config: Mapping[str, Any],
        mode: str,
        rank: int | None,
        transport: Transport,
        run_dir: Path | None = None,
        resumed: bool = False,
        starting_step: int = 0,
        api_url: str | None = None,
    ) -> None:
        self._ref = RunRef(entity=entity, project=project, run_id=run_id)
        self._path = self._ref.path
        self._dir = run_dir
        self._preempting = False
        self._writer = _get_writer()
        self._source = Source(kind="sdk", writer=self._writer.id, rank=rank)
        self._name, self._group, self._job_type, self._notes = name, group, job_type, notes
        self._tags = tags
        self._mode = mode
        self._rank = rank
        self._transport = transport
        # Transports that build events on their own thread take log rows as RawEvent tuples.
        self._send_raw = getattr(transport, "send_raw", None)
        self._known_keys: set[str] = set()  # log keys already checked (plain str keys, see _fast_values)
        self._lock = threading.RLock()  # step/row state; taken before the writer's lock
        self._resumed = resumed
        self._starting_step = starting_step
        self._start_time = time.time()
        self._api_url = api_url
        self._step = starting_step
        self._row: dict[str, Any] = {}  # the uncommitted history row (commit=False)
        self._finished = False
        self._config = Config(self, config)  # the initial values travel in run.init, not run.config
        self._summary = Summary(self)

    # identity -------------------------------------------------------------------------------

    @property
    def id(self) -> str:
        return self._ref.run_id

    @property
    def entity(self) -> str:
        return self._ref.entity

    @property
    def project(self) -> str:
        return self._ref.project

    @property
    def path(self) -> str:
        """``entity/project/run_id`` (also the Kafka key of its events)."""
        return self._ref.path

    @property
    def name(self) -> str:
        return self._name

    @property
    def group(self) -> str | None:
        return self._group

    @property
    def job_type(self) -> str | None:
        return self._job_type

    @property
    def notes(self) -> str | None:
        return self._notes

    @property
    def mode(self) -> str:
        return self._mode

    @property
    def rank(self) -> int | None:
        return self._rank

    @property
    def resumed(self) -> bool:
        """True if ``init(resume=...)`` continued an existing run."""
        return self._resumed

    @property
    def starting_step(self) -> int:
        """The first step of this process: 0, or for a resumed run the step after its last one."""
        return self._starting_step

    @property
    def start_time(self) -> float:
        """When this process started the run (unix seconds)."""
        return self._start_time

    @property
    def url(self) -> str | None:
        """The run in the runlog API (None for a disabled run). runlog has no web UI of its own."""
        return self.get_url()

    def get_url(self) -> str | None:
        if self._api_url is None:
            return None
        from .public import _run_url

        return self._api_url.rstrip("/") + _run_url(self.entity, self.project, self.id)

    def get_project_url(self) -> str | None:
        if self._api_url is None:
            return None
        from .public import _project_url

        return self._api_url.rstrip("/") + _project_url(self.entity, self.project)

    def project_name(self) -> str:
        return self.project

    @property
    def writer_id(self) -> str:
        return self._writer.id

    @property
    def transport(self) -> Transport:
        return self._transport

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def dir(self) -> str | None:
        """The directory holding this run's spool (None for ``mode="disabled"``)."""
        return None if self._dir is None else str(self._dir)

    @property
    def spool_path(self) -> str | None:
        """This process's spool file for the run."""
        path = getattr(self._transport, "spool", None)
        path = getattr(path, "path", None)
        return None if path is None else str(path)

    def status(self) -> RunStatus:
        """Counts of events written, sent, acknowledged, spooled, and spooled but unacknowledged."""
        c = getattr(self._transport, "counters", None)
        if c is None:
            return RunStatus(0, 0, 0, 0, 0)
        spooled = getattr(c, "spooled", 0)
        return RunStatus(c.written, c.sent, c.acked, spooled, max(spooled - c.acked, 0))

    @property
    def disabled(self) -> bool:
        return self._mode == "disabled"

    # mutable state --------------------------------------------------------------------------

    @property
    def tags(self) -> tuple[str, ...]:
        return self._tags

    @tags.setter
    def tags(self, value: Iterable[str]) -> None:
        new = _check_tags(value)
        with self._lock:
            old = self._tags
            add = [t for t in new if t not in old]
            remove = [t for t in old if t not in new]
            if add or remove:
                self._emit("run.tags", {"add": add, "remove": remove})
            self._tags = new

    @property
    def config(self) -> Config:
        return self._config

    @property
    def summary(self) -> Summary:
        return self._summary

    @property
    def step(self) -> int:
        """The step the next committed row gets (W&B's ``run.step``)."""
        return self._step

    # logging --------------------------------------------------------------------------------

    def log(self, data: Mapping[str, Any], step: int | None = None, commit: bool | None = None) -> None:
        """Log a dict of metrics to the run's history, with W&B's step/commit semantics.

        - no ``step``: the values join the current row, which is committed (at ``run.step``,
          then ``run.step`` += 1) unless ``commit=False``;
        - ``step`` == ``run.step``: the values join the current row; it is committed only with
          ``commit=True`` (otherwise when a later step is logged, or at finish);
        - ``step`` > ``run.step``: the pending row is committed first, then ``run.step = step``;
        - ``step`` < ``run.step``: the data is ignored with a warning.

        Nested dicts are flattened with "."; numpy scalars become Python numbers; anything else
        raises ValueError naming the key. No I/O happens here.
        """
        if not isinstance(data, Mapping):
            raise UsageError(f"log() takes a dict of values, not {type(data).__name__}")
        if step is not None and (isinstance(step, bool) or not isinstance(step, int)):
            if hasattr(step, "item") and isinstance(step.item(), int):  # numpy integers
                step = step.item()
            else:
                raise UsageError(f"step must be an int, not {type(step).__name__}")
        if step is not None and not 0 <= step <= INT64_MAX:
            raise UsageError(f"step must be >= 0 (and fit in 64 bits), got {step}")
        values = data if self._fast_values(data) else self._slow_values(data)
        with self._lock:
            self._check_live("log")
            if step is not None:
                if step < self._step:
                    warnings.warn(
                        f"Tried to log to step {step} that is less than the current step {self._step}. "
                        "Steps must be monotonically increasing, so this data will be ignored.",
                        RunlogWarning,
                        stacklevel=2,
                    )
                    return
                if step > self._step:
                    self._commit()
                    self._step = step
            elif commit is None:
                commit = True
            self._row.update(values)
            if commit:
                self._commit()

    def _fast_values(self, data: Any) -> bool:
        """Whether ``data`` is a flat dict that needs no conversion: every key already checked
        by an earlier log() of this run, every value a float, bool, None, int64 or short string.

        A few C-level set operations for the common case (a training loop logging the same
        keys every step); anything else (new or nested keys, numpy scalars, lists) takes
        :meth:`_slow_values`, which converts it or raises the ValueError naming key and type."""
        if type(data) is not dict or len(data) > MAX_KEYS or not data.keys() <= self._known_keys:
            return False
        types = set(map(type, data.values()))
        if types <= _PLAIN_TYPES:
            return True
        if not types <= _SCALAR_TYPES:
            return False
        for v in data.values():
            t = type(v)
            if (t is int and not INT64_MIN <= v <= INT64_MAX) or (t is str and len(v) > MAX_STRING_LENGTH):
                return False
        return True

    def _slow_values(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """Flatten, check and convert with the contract's rules; remember plain top-level keys."""
        values = normalize_values(data)
        known = self._known_keys
        if len(known) < _KNOWN_KEYS_MAX:
            # A key is "known" only if it stands for itself (not a dict flattened into "a.b").
            known.update(k for k in data if type(k) is str and k in values and len(k) <= MAX_KEY_LENGTH)
        return values

    def _commit(self) -> None:
        """Emit the pending row at the current step and move to the next (caller holds the lock)."""
        if not self._row:
            return
        row, self._row = self._row, {}
        if self._send_raw is not None:
            self._emit_raw("run.log", {"step": self._step, "values": row})
        else:
            self._emit("run.log", {"step": self._step, "values": row})
        self._step += 1
        self._summary._logged(row)

    # finishing --------------------------------------------------------------------------------

    def finish(self, exit_code: int | None = None, quiet: bool | None = None, *,
               timeout: float | None = FINISH_TIMEOUT, _signal_number: int | None = None) -> None:
        """Commit the pending row, record ``run.finish`` and wait (up to ``timeout`` s) for delivery.

        Calling it again does nothing. Events Kafka did not acknowledge within ``timeout`` stay
        in the spool; unless ``quiet``, a line says how many and the ``runlog sync`` command
        that sends them."""
        with self._lock:
            if self._finished:
                return
            self._commit()
            code = 0 if exit_code is None else int(exit_code)
            self._emit("run.finish", {"exit_code": code, "signal": _signal_number})
        remaining = self._transport.close(timeout)
        _forget_run(self)
        if remaining and not quiet:
            where = self.dir or ""
            if self._mode == "offline":
                head = f"runlog: offline run {self.path}: {remaining} event(s) spooled in {where}"
            else:
                head = f"runlog: {remaining} event(s) of run {self.path} were not acknowledged by Kafka within {timeout} s and remain spooled in {where}"
            print(f"{head}\nrunlog: send them with: runlog sync {shlex.quote(where)}", file=sys.stderr, flush=True)

    # the rest of the run surface ----------------------------------------------------------------

    def mark_preempting(self) -> None:
        """Tell the server this run is about to be preempted (a later exit becomes ``preempted``)."""
        with self._lock:
            self._check_live("mark_preempting")
            self._emit("run.preempting", {})
            self._preempting = True

    def alert(self, title: str, text: str, level: Any = "INFO", wait_duration: Any = None) -> None:
        """Raise an alert (W&B's ``run.alert``). ``level``: INFO, WARN or ERROR; ``wait_duration``
        (seconds or a ``timedelta``) suppresses repeats of the same title for that long."""
        if not isinstance(title, str) or not title or len(title) > 64:
            raise UsageError(f"alert title must be a string of 1 to 64 characters, got {title!r:.80}")
        if not isinstance(text, str):
            raise UsageError(f"alert text must be a string, not {type(text).__name__}")
        if len(text) > MAX_STRING_LENGTH:
            raise UsageError(f"alert text is longer than {MAX_STRING_LENGTH} characters")
        lvl = getattr(level, "value", level)
        lvl = lvl.upper() if isinstance(lvl, str) else lvl
        lvl = "WARN" if lvl == "WARNING" else lvl
        if lvl not in ALERT_LEVELS:
            raise UsageError(f"alert level must be one of {', '.join(ALERT_LEVELS)}, not {level!r}")
        if isinstance(wait_duration, _dt.timedelta):
            wait: float | None = wait_duration.total_seconds()
        elif wait_duration is None:
            wait = None
        elif isinstance(wait_duration, (int, float)) and not isinstance(wait_duration, bool):
            wait = float(wait_duration)
        else:
            raise UsageError(f"wait_duration must be seconds or a timedelta, not {type(wait_duration).__name__}")
        if wait is not None and (not math.isfinite(wait) or wait < 0):
            raise UsageError(f"wait_duration must be a finite number of seconds >= 0, not {wait_duration!r}")
        with self._lock:
            self._check_live("alert")
            self._emit("run.alert", {"title": title, "text": text, "level": lvl, "wait_duration": wait})

    def define_metric(
        self,
        name: str,
        step_metric: str | None = None,
        step_sync: bool | None = None,
        hidden: bool | None = None,
        summary: str | Iterable[str] | None = None,
        goal: str | None = None,
        overwrite: bool | None = None,
    ) -> dict[str, Any]:
        """Say how a metric (or a glob like ``"val/*"``) is stepped, summarized and shown.

        ``summary`` is W&B's comma-separated string (``"min,max"``) or a list, of min, max,
        mean, best, last, first, none; ``best`` needs a ``goal`` (minimize or maximize).
        Returns the definition that was recorded."""
        payload = _metric_payload(name, step_metric, step_sync, hidden, summary, goal, overwrite)
        with self._lock:
            self._check_live("define_metric")
            self._emit("run.metric", payload)
        return payload

    def _heartbeat(self) -> None:
        """Called from the transport's thread every ``heartbeat_interval`` seconds."""
        self._emit("run.heartbeat", {"step": self._step}, only_if_live=True)

    def _finish_by_signal(self, signum: int) -> None:
        self.finish(exit_code=128 + signum, _signal_number=signum)

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            self.finish(exit_code=1, _signal_number=int(_signal.SIGINT))
        else:
            self.finish(exit_code=0 if exc_type is None else 1)

    def __repr__(self) -> str:
        return f"<Run {self.path} name={self.name!r} step={self._step}{' finished' if self._finished else ''}>"

    # emitting -------------------------------------------------------------------------------

    def _check_live(self, what: str) -> None:
        if self._finished:
            raise UsageError(f"run {self.path} is finished; {what}() needs a new producer.init()")

    def _emit(self, event_type: str, payload: dict[str, Any], only_if_live: bool = False) -> Any:
        """Stamp one event (writer id, next seq) and hand it to the transport, atomically, so a
        writer's seq stays gapless and each transport receives its events in seq order.

        ``run.finish`` marks the run finished inside the same critical section, so nothing
        emitted ``only_if_live`` (heartbeats) can follow it."""
        cls = EVENT_TYPES[event_type]
        writer = self._writer
        with writer.lock:
            if self._finished:
                if only_if_live:
                    return None
                raise UsageError(f"run {self.path} is finished")
            seq = writer.next_seq.get(self.path, 0)
            event = cls(run=self._ref, source=self._source, seq=seq, payload=payload)
            writer.next_seq[self.path] = seq + 1  # only after the event was built: a validation error costs no seq
            self._transport.send(event)
            if event_type == "run.finish":
                self._finished = True
        if writer.deferred_signal is not None:  # SIGTERM/SIGINT arrived while we held the lock
            _run_deferred_signal(writer)
        return event

    def _emit_raw(self, event_type: str, payload: dict[str, Any]) -> None:
        """:meth:`_emit` for payloads already checked (log rows): stamp the seq and the time
        here, in order, and leave building and encoding the event to the transport's thread."""
        writer = self._writer
        with writer.lock:
            if self._finished:
                raise UsageError(f"run {self._path} is finished")
            seq = writer.next_seq.get(self._path, 0)
            writer.next_seq[self._path] = seq + 1
            self._send_raw((event_type, self._ref, self._source, seq, time.time(), payload))
        if writer.deferred_signal is not None:
            _run_deferred_signal(writer)

    def _emit_init(self, resumed: bool = False, starting_step: int = 0) -> None:
        self._emit(
            "run.init",
            {
                "name": self._name,
                "group": self._group,
                "job_type": self._job_type,
                "tags": list(self._tags),
                "notes": self._notes,
                "config": normalize_config(self._config),
                "resumed": resumed,
                "starting_step": starting_step,
                "state": "running",
                "host": _host_info(),
            },
        )


# -- module-level API ---------------------------------------------------------------------------


def _set_run(run: Run | None) -> None:
    import producer

    producer.run = run


def _forget_run(run: Run) -> None:
    import producer

    if producer.run is run:
        producer.run = None


def init(
    entity: str | None = None,
    project: str | None = None,
    name: str | None = None,
    id: str | None = None,  # noqa: A002 - W&B's name for it
    group: str | None = None,
    job_type: str | None = None,
    tags: Iterable[str] | None = None,
    notes: str | None = None,
    config: Any = None,
    resume: bool | str | None = None,
    mode: str | None = None,
    dir: str | os.PathLike[str] | None = None,  # noqa: A002 - W&B's name for it
    rank: int | None = None,
) -> Run:
    """Start a run, make it ``producer.run`` and return it (``with producer.init(...) as run:``).

    Defaults: entity from RUNLOG_ENTITY, else the OS user; project from RUNLOG_PROJECT, else
    "uncategorized"; id 8 random base36 characters; name ``adjective-noun-N``; rank from the
    RANK environment variable. ``mode="disabled"`` keeps the API and sends nothing;
    ``mode="offline"`` only writes the spool (send it later with ``runlog sync``).
    The spool lives in ``$RUNLOG_HOME/spool/<entity>+<project>+<id>/`` (with ``dir=D``:
    ``D/runlog/<entity>+<project>+<id>/``), one ``<writer>.spool`` file per process.
    An active run of this process is finished first (as W&B's ``reinit``).

    ``resume`` (W&B's meanings; needs ``id``, and asks the API whether that run exists):
    ``"allow"`` or True resumes it if it exists, else starts it new; ``"must"`` resumes it or
    raises (also when the API cannot be reached); ``"never"`` raises if it exists; None/False
    (the default) does not ask. A resumed run sends ``run.init`` with ``resumed=True``, keeps
    its name, config and summary, and continues its step counter (``run.starting_step`` is
    the step after its last logged one). With the API unreachable, ``"allow"`` and ``"never"``
    start the run as new and say so with a warning. Offline runs cannot ask: ``"must"``
    raises, the others warn.

    Several processes may write into one run (distributed training): give each the same
    ``id`` and its ``rank`` (or the RANK environment variable). Each process is its own writer;
    the server ends the run when the last writer that joined it finishes.
    """
    from events.settings import get_settings

    mode = mode or "online"
    if mode not in MODES:
        raise UsageError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    settings = get_settings()
    rank = _env_rank() if rank is None else rank
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 0):
        raise UsageError(f"rank must be a non-negative int, not {rank!r}")
    config_values = dict(_as_config_mapping(config))
    normalize_config(config_values)  # fail here, before anything is started
    resume_mode = _check_resume(resume)
    if resume_mode == "must" and not id:
        raise UsageError("resume='must' needs the id of the run to resume: init(id=..., resume='must')")
    run_id = id or generate_id()

    import producer

    if producer.run is not None and not producer.run.finished:
        producer.run.finish()

    entity = entity or default_entity(settings)
    project = project or settings.project or "uncategorized"
    RunRef(entity=entity, project=project, run_id=run_id)  # a bad path fails before anything starts
    prior = None
    if resume_mode is not None and id and mode != "disabled":
        prior = _existing_run(resume_mode, mode, settings, entity, project, run_id)
    starting_step = 0
    if prior is not None:  # resume it: W&B keeps the name, config and summary, and counts on
        last = prior.get("last_step")
        starting_step = 0 if last is None else int(last) + 1
        name = name or prior.get("name")
        config_values = {**(prior.get("config") or {}), **config_values}
    rdir = spool_path = None
    if mode != "disabled":
        from ._spool import SPOOL_SUFFIX, run_dir

        rdir = run_dir(settings.home, entity, project, run_id, dir)
        spool_path = rdir / f"{_get_writer().id}{SPOOL_SUFFIX}"
    transport = _make_transport(mode, settings, spool_path=spool_path)
    try:
        run = Run(
            entity=entity,
            project=project,
            run_id=run_id,
            name=name or generate_name(seed=id),
            group=group,
            job_type=job_type,
            tags=_check_tags(tags),
            notes=notes,
            config=config_values,
            mode=mode,
            rank=rank,
            transport=transport,
            run_dir=rdir,
            resumed=prior is not None,
            starting_step=starting_step,
            api_url=None if mode == "disabled" else settings.api_url,
        )
        if prior is not None:
            dict.update(run._summary, prior.get("summary") or {})  # what the server has, no event
        run._emit_init(resumed=prior is not None, starting_step=starting_step)
        if mode != "disabled" and hasattr(transport, "set_ticker"):
            transport.set_ticker(run._heartbeat, settings.heartbeat_interval)
    except BaseException:
        transport.close(0)
        raise
    _set_run(run)
    _install_hooks()
    return run


_RESUME_MODES = ("allow", "must", "never")
RESUME_CHECK_TIMEOUT = 10.0  # seconds init() waits for the API to say whether a run exists


def _check_resume(resume: Any) -> str | None:
    """W&B's ``resume`` values as one of allow/must/never, or None (do not ask)."""
    if resume is None or resume is False:
        return None
    if resume is True:
        return "allow"
    if isinstance(resume, str) and resume in _RESUME_MODES:
        return resume
    raise UsageError(f"resume must be 'allow', 'must', 'never', True, False or None, not {resume!r}")


def _lookup_run(settings: Any, entity: str, project: str, run_id: str) -> dict[str, Any] | None:
    """The run as the API has it, None if it does not exist; CommError if the API cannot tell."""
    from .errors import RunNotFound
    from .public import Api

    api = Api(settings.api_url, default_entity=entity, timeout=RESUME_CHECK_TIMEOUT)
    try:
        run = api.run(f"{entity}/{project}/{run_id}")
    except RunNotFound:
        return None
    last = run.lastHistoryStep
    return {"name": run.name, "state": run.state, "config": run.config, "summary": run.summary,
            "deleted": run.deleted, "last_step": None if last is None or last < 0 else last}


def _existing_run(resume: str, mode: str, settings: Any, entity: str, project: str,
                  run_id: str) -> dict[str, Any] | None:
    """Apply ``resume`` to run ``entity/project/run_id``: its API record to resume, or None to
    start it new; raises UsageError/CommError as W&B would."""
    from .errors import CommError

    path = f"{entity}/{project}/{run_id}"
    if mode != "online":
        if resume == "must":
            raise UsageError(f"resume='must' cannot check that run {path} exists in {mode} mode; use mode='online'")
        warnings.warn(f"runlog: {mode} mode cannot check whether run {path} exists; starting it as a new run "
                      f"(resume={resume!r} not applied)", RunlogWarning, stacklevel=3)
        return None
    try:
        found = _lookup_run(settings, entity, project, run_id)
    except CommError as exc:
        if resume == "must":
            raise CommError(f"resume='must': cannot check that run {path} exists, the runlog API at "
                            f"{settings.api_url} did not answer: {exc}", status=exc.status, url=exc.url) from None
        warnings.warn(f"runlog: cannot reach the runlog API at {settings.api_url} to check whether run {path} "
                      f"exists ({exc}); starting it as a new run (resume={resume!r} not applied)",
                      RunlogWarning, stacklevel=3)
        return None
    if found is not None and found.get("deleted"):
        raise UsageError(f"run {path} was deleted; undelete it or choose another id")
    if resume == "must" and found is None:
        raise UsageError(f"resume='must' but run {path} does not exist")
    if resume == "never" and found is not None:
        raise UsageError(f"resume='never' but run {path} already exists; choose another id or resume='allow'")
    return found


# -- lifecycle: exit, uncaught exceptions, signals -------------------------------------------------

_prev_excepthook: Any = None
_prev_signal_handlers: dict[int, Any] = {}


@atexit.register
def _finish_at_exit() -> None:
    """The interpreter exits normally with a run still open: finish it (exit code 0)."""
    import producer

    run = producer.run
    if run is not None and not run.finished:
        run.finish(exit_code=0)


def _excepthook(exc_type: Any, exc: Any, tb: Any) -> None:
    """An uncaught exception: report it as before, then finish the run as failed (exit code 1)."""
    import producer

    prev = _prev_excepthook or sys.__excepthook__
    try:
        prev(exc_type, exc, tb)
    finally:
        run = producer.run
        if run is not None and not run.finished:
            if isinstance(exc_type, type) and issubclass(exc_type, KeyboardInterrupt):
                run.finish(exit_code=1, _signal_number=int(_signal.SIGINT))
            else:
                run.finish(exit_code=1)


def _on_signal(signum: int, frame: Any) -> None:
    """SIGTERM/SIGINT: finish the run with ``signal=signum``, then do what was done before."""
    import producer

    run = producer.run
    if run is not None and not run.finished:
        lock = run._writer.lock
        # Another thread (the heartbeat) holds the lock only for microseconds; if we cannot get
        # it, this thread was interrupted inside _emit: finish when that _emit releases it.
        if lock.acquire(timeout=0.2):
            lock.release()
            run._finish_by_signal(signum)
        else:
            run._writer.deferred_signal = (signum, frame)
            return
    _chain_signal(signum, frame)


def _run_deferred_signal(writer: _Writer) -> None:
    pending, writer.deferred_signal = writer.deferred_signal, None
    if pending is not None:
        _on_signal(*pending)


def _chain_signal(signum: int, frame: Any) -> None:
    prev = _prev_signal_handlers.get(signum, _signal.SIG_DFL)
    if prev is None or prev == _signal.SIG_DFL:
        # The default action (terminate): restore it and die by the same signal.
        _signal.signal(signum, _signal.SIG_DFL)
        os.kill(os.getpid(), signum)
    elif callable(prev):
        prev(signum, frame)  # e.g. default_int_handler raises KeyboardInterrupt


def _install_hooks() -> None:
    """Hook sys.excepthook (once) and SIGTERM/SIGINT (once, main thread only)."""
    global _prev_excepthook
    if sys.excepthook is not _excepthook:
        _prev_excepthook = sys.excepthook
        sys.excepthook = _excepthook
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (_signal.SIGTERM, _signal.SIGINT):
        try:
            current = _signal.getsignal(signum)
            if current is _on_signal or current == _signal.SIG_IGN:
                continue  # ours already, or ignored on purpose: leave it alone
            _signal.signal(signum, _on_signal)
            _prev_signal_handlers[int(signum)] = current
        except (ValueError, OSError):  # not the main interpreter, or unsupported
            pass


def _metric_payload(name: Any, step_metric: Any, step_sync: Any, hidden: Any, summary: Any, goal: Any,
                    overwrite: Any) -> dict[str, Any]:
    """Check ``define_metric``'s arguments (UsageError naming the bad one) into a payload."""
    if not isinstance(name, str) or not name:
        raise UsageError(f"define_metric name must be a non-empty string, not {name!r}")
    if step_metric is not None and (not isinstance(step_metric, str) or not step_metric):
        raise UsageError(f"step_metric must be a metric name, not {step_metric!r}")
    for arg, value in (("step_sync", step_sync), ("hidden", hidden), ("overwrite", overwrite)):
        if value is not None and not isinstance(value, bool):
            raise UsageError(f"{arg} must be True, False or None, not {value!r}")
    if summary is None:
        summaries: list[str] = []
    elif isinstance(summary, str):
        summaries = [part.strip().lower() for part in summary.split(",") if part.strip()]
    elif isinstance(summary, Iterable):
        summaries = []
        for part in summary:
            if not isinstance(part, str):
                raise UsageError(f"summary entries must be strings, not {type(part).__name__}")
            summaries.append(part.strip().lower())
    else:
        raise UsageError(f"summary must be a string like 'min,max' or a list, not {type(summary).__name__}")
    for part in summaries:
        if part not in METRIC_SUMMARIES:
            raise UsageError(f"unknown summary {part!r}; use {', '.join(METRIC_SUMMARIES)}")
    summaries = list(dict.fromkeys(summaries))
    if goal is not None:
        goal = {"min": "minimize", "max": "maximize"}.get(goal, goal) if isinstance(goal, str) else goal
        if goal not in ("minimize", "maximize"):
            raise UsageError(f"goal must be 'minimize' or 'maximize', not {goal!r}")
    if "best" in summaries and goal is None:
        raise UsageError("summary 'best' needs a goal ('minimize' or 'maximize')")
    try:
        MetricPayload(name=name, step_metric=step_metric, step_sync=step_sync, hidden=hidden,
                      summary=summaries, goal=goal, overwrite=overwrite)
    except ValueError as exc:
        raise UsageError(f"bad define_metric arguments for {name!r}: {exc}") from None
    return {"name": name, "step_metric": step_metric, "step_sync": step_sync, "hidden": hidden,
            "summary": summaries, "goal": goal, "overwrite": overwrite}


def log(data: Mapping[str, Any], step: int | None = None, commit: bool | None = None) -> None:
    """``producer.run.log(...)``; see :meth:`Run.log`."""
    import producer

    if producer.run is None:
        raise UsageError("You must call producer.init() before producer.log()")
    producer.run.log(data, step=step, commit=commit)


def finish(exit_code: int | None = None, quiet: bool | None = None, *, timeout: float | None = FINISH_TIMEOUT) -> None:
    """Finish ``producer.run`` if there is one (nothing happens otherwise, as in W&B)."""
    import producer

    if producer.run is not None:
        producer.run.finish(exit_code, quiet, timeout=timeout)


def _active(what: str) -> Run:
    import producer

    if producer.run is None:
        raise UsageError(f"You must call producer.init() before producer.{what}()")
    return producer.run


def alert(title: str, text: str, level: Any = "INFO", wait_duration: Any = None) -> None:
    """``producer.run.alert(...)``; see :meth:`Run.alert`."""
    _active("alert").alert(title, text, level=level, wait_duration=wait_duration)


def define_metric(name: str, step_metric: str | None = None, step_sync: bool | None = None,
                  hidden: bool | None = None, summary: Any = None, goal: str | None = None,
                  overwrite: bool | None = None) -> dict[str, Any]:
    """``producer.run.define_metric(...)``; see :meth:`Run.define_metric`."""
    return _active("define_metric").define_metric(name, step_metric, step_sync, hidden, summary, goal, overwrite)


def mark_preempting() -> None:
    """``producer.run.mark_preempting()``; see :meth:`Run.mark_preempting`."""
    _active("mark_preempting").mark_preempting()
