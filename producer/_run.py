"""``init()`` and ``Run``: the W&B-style writing side of the SDK.

Everything here is on the training hot path and does no I/O: a call validates and normalizes
its data, becomes one immutable event stamped with this process's writer id and the next
``seq``, and is handed to the run's transport (see ``_transport``), which sends it from a
background thread.
"""

from __future__ import annotations

import atexit
import getpass
import os
import platform
import secrets
import shlex
import socket
import sys
import threading
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

from events.model import EVENT_TYPES, RunRef, Source
from events.values import MAX_STRING_LENGTH, normalize_config, normalize_values

from ._transport import DisabledTransport, KafkaTransport, Transport
from .errors import RunlogWarning, UsageError

MODES = ("online", "disabled")  # "offline" arrives with the spool
FINISH_TIMEOUT = 30.0  # seconds finish() waits for Kafka to acknowledge what was logged
_ID_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
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


def generate_name() -> str:
    """A W&B-looking display name, ``adjective-noun-N`` (N is random: there is no server to count)."""
    return f"{secrets.choice(_ADJECTIVES)}-{secrets.choice(_NOUNS)}-{secrets.randbelow(999) + 1}"


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


def _make_transport(mode: str, settings: Any) -> Transport:
    """The transport a new run gets (tests replace this function to record events)."""
    if mode == "disabled":
        return DisabledTransport()
    return KafkaTransport(settings)


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
    ) -> None:
        self._ref = RunRef(entity=entity, project=project, run_id=run_id)
        self._writer = _get_writer()
        self._source = Source(kind="sdk", writer=self._writer.id, rank=rank)
        self._name, self._group, self._job_type, self._notes = name, group, job_type, notes
        self._tags = tags
        self._mode = mode
        self._rank = rank
        self._transport = transport
        self._lock = threading.RLock()  # step/row state; taken before the writer's lock
        self._step = 0
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
    def writer_id(self) -> str:
        return self._writer.id

    @property
    def transport(self) -> Transport:
        return self._transport

    @property
    def finished(self) -> bool:
        return self._finished

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
        if step is not None and step < 0:
            raise UsageError(f"step must be >= 0, got {step}")
        values = normalize_values(data)
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

    def _commit(self) -> None:
        """Emit the pending row at the current step and move to the next (caller holds the lock)."""
        if not self._row:
            return
        row, self._row = self._row, {}
        self._emit("run.log", {"step": self._step, "values": row})
        self._step += 1
        self._summary._logged(row)

    # finishing --------------------------------------------------------------------------------

    def finish(self, exit_code: int = 0, *, timeout: float | None = FINISH_TIMEOUT) -> None:
        """Commit the pending row, record ``run.finish`` and wait (up to ``timeout`` s) for delivery.

        Calling it again does nothing. Events Kafka did not acknowledge within ``timeout`` are
        lost until the spool exists (a warning says how many)."""
        with self._lock:
            if self._finished:
                return
            self._commit()
            self._emit("run.finish", {"exit_code": int(exit_code), "signal": None})
            self._finished = True
        remaining = self._transport.close(timeout)
        if remaining:
            warnings.warn(
                f"runlog: {remaining} event(s) of run {self.path} were not delivered within {timeout} s",
                RunlogWarning,
                stacklevel=2,
            )
        _forget_run(self)

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.finish(exit_code=0 if exc_type is None else 1)

    def __repr__(self) -> str:
        return f"<Run {self.path} name={self.name!r} step={self._step}{' finished' if self._finished else ''}>"

    # emitting -------------------------------------------------------------------------------

    def _check_live(self, what: str) -> None:
        if self._finished:
            raise UsageError(f"run {self.path} is finished; {what}() needs a new producer.init()")

    def _emit(self, event_type: str, payload: dict[str, Any]) -> Any:
        """Stamp one event (writer id, next seq) and hand it to the transport, atomically, so a
        writer's seq stays gapless and each transport receives its events in seq order."""
        cls = EVENT_TYPES[event_type]
        writer = self._writer
        with writer.lock:
            seq = writer.next_seq.get(self.path, 0)
            event = cls(run=self._ref, source=self._source, seq=seq, payload=payload)
            writer.next_seq[self.path] = seq + 1  # only after the event was built: a validation error costs no seq
            self._transport.send(event)
        return event

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
    mode: str | None = None,
    rank: int | None = None,
) -> Run:
    """Start a run, make it ``producer.run`` and return it (``with producer.init(...) as run:``).

    Defaults: entity from RUNLOG_ENTITY, else the OS user; project from RUNLOG_PROJECT, else
    "uncategorized"; id 8 random base36 characters; name ``adjective-noun-N``; rank from the
    RANK environment variable. ``mode="disabled"`` keeps the API and sends nothing.
    An active run of this process is finished first (as W&B's ``reinit``).
    """
    from events.settings import get_settings

    mode = mode or "online"
    if mode not in MODES:
        if mode == "offline":
            raise UsageError("mode='offline' is not supported yet (it needs the local spool)")
        raise UsageError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    settings = get_settings()
    rank = _env_rank() if rank is None else rank
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 0):
        raise UsageError(f"rank must be a non-negative int, not {rank!r}")
    config_values = dict(_as_config_mapping(config))
    normalize_config(config_values)  # fail here, before anything is started
    run_id = id or generate_id()

    import producer

    if producer.run is not None and not producer.run.finished:
        producer.run.finish()

    transport = _make_transport(mode, settings)
    try:
        run = Run(
            entity=entity or settings.entity or _user(),
            project=project or settings.project or "uncategorized",
            run_id=run_id,
            name=name or generate_name(),
            group=group,
            job_type=job_type,
            tags=_check_tags(tags),
            notes=notes,
            config=config_values,
            mode=mode,
            rank=rank,
            transport=transport,
        )
        run._emit_init()
    except BaseException:
        transport.close(0)
        raise
    _set_run(run)
    return run


@atexit.register
def _deliver_at_exit() -> None:
    """Don't lose what an unfinished run logged when the interpreter exits: deliver it (bounded).

    The run is not marked finished (its exit code is unknown here); exit-code and signal
    handling is the job of a later issue, and the watchdog turns the silence into "crashed"."""
    import producer

    run = producer.run
    if run is not None and not run.finished:
        run.transport.close(FINISH_TIMEOUT)


def log(data: Mapping[str, Any], step: int | None = None, commit: bool | None = None) -> None:
    """``producer.run.log(...)``; see :meth:`Run.log`."""
    import producer

    if producer.run is None:
        raise UsageError("You must call producer.init() before producer.log()")
    producer.run.log(data, step=step, commit=commit)


def finish(exit_code: int = 0, *, timeout: float | None = FINISH_TIMEOUT) -> None:
    """Finish ``producer.run`` if there is one (nothing happens otherwise, as in W&B)."""
    import producer

    if producer.run is not None:
        producer.run.finish(exit_code, timeout=timeout)
