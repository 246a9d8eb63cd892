"""Exceptions the SDK raises (W&B spells these ``wandb.Error``, ``UsageError``, ``CommError``)."""

from __future__ import annotations


class Error(Exception):
    """Base of every runlog SDK error."""


class UsageError(Error):
    """The SDK was called the wrong way (e.g. ``log()`` before ``init()``)."""


class CommError(Error):
    """The runlog server answered with an error, or could not be reached.

    ``status`` is the HTTP status (None when the server was unreachable) and ``message`` the
    server's JSON ``message`` when it sent one."""

    def __init__(self, message: str, status: int | None = None, url: str | None = None) -> None:
        super().__init__(message if status is None else f"HTTP {status}: {message}")
        self.message = message
        self.status = status
        self.url = url


class RunNotFound(CommError, ValueError):
    """The run does not exist (HTTP 404). A ValueError too, as W&B's ``Could not find run``."""


class RunlogWarning(UserWarning):
    """Something the SDK ignored or could not do, that the user should hear about."""
