"""API keys: ``rl_<entity>_<secret>``, stored as the sha256 of the whole key, per entity, with scopes.

A key is looked up by its hash (no parsing of the entity out of the text, so entities with
underscores are fine). Writes need a live key with the ``write`` scope for the run's entity;
reads need one with ``read`` only when ``RUNLOG_API_AUTH_READS=true``:

- no key, or a key that is unknown or revoked: 401;
- a key of another entity, or without the scope: 403.

The development key: when ``RUNLOG_API_KEY`` is unset, the API makes sure at startup that
``$RUNLOG_HOME/api-key`` (mode 0600) holds a live key of the default entity (RUNLOG_ENTITY, else
the OS user), creating one if needed; the public client ``producer.Api()`` reads that file.
"""

from __future__ import annotations

import getpass
import hashlib
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from events.settings import Settings

log = logging.getLogger("runlog.api")

SCOPES = ("read", "write")
KEY_FILE = "api-key"


@dataclass(frozen=True)
class Key:
    id: int
    entity: str
    scopes: tuple[str, ...]


class AuthError(Exception):
    """401 (no or bad key) or 403 (key not allowed here)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def new_key_text(entity: str) -> str:
    # Hex: no "_" in the secret, so the entity can be read back from the key (the SDK's default entity).
    return f"rl_{entity}_{secrets.token_hex(24)}"


async def create_key(conn: asyncpg.Connection, entity: str, scopes: tuple[str, ...] = SCOPES,
                     label: str | None = None) -> tuple[int, str]:
    """Create a key; returns (id, key text). The text is shown once and never stored."""
    if not entity or "/" in entity:
        raise ValueError(f"not an entity name: {entity!r}")
    text = new_key_text(entity)
    key_id = await conn.fetchval(
        "INSERT INTO api_keys (entity, key_hash, prefix, scopes, label) VALUES ($1, $2, $3, $4, $5) RETURNING id",
        entity, hash_key(text), text[: len(entity) + 8], list(scopes), label)
    return int(key_id), text


async def lookup(conn: asyncpg.Connection, key: str) -> Key | None:
    """The live key with this text, or None (unknown or revoked)."""
    row = await conn.fetchrow(
        "SELECT id, entity, scopes FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL", hash_key(key))
    return None if row is None else Key(row["id"], row["entity"], tuple(row["scopes"]))


def bearer(authorization: str | None) -> str | None:
    """The key from ``Authorization: Bearer <key>`` (or a bare key), else None."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    if value and scheme.lower() == "bearer":
        return value.strip() or None
    return None if value else scheme or None


async def authorize(conn: asyncpg.Connection, authorization: str | None, entity: str, scope: str) -> Key:
    text = bearer(authorization)
    if text is None:
        raise AuthError(401, f"an API key is needed ({scope} access to entity {entity!r}): "
                             "send 'Authorization: Bearer <key>'; create one with `runlog keys create`")
    if len(text) > 500:
        raise AuthError(401, "the API key is not valid")
    key = await lookup(conn, text)
    if key is None:
        raise AuthError(401, "the API key is not valid (unknown or revoked)")
    if key.entity != entity:
        raise AuthError(403, f"this API key belongs to entity {key.entity!r}, not {entity!r}")
    if scope not in key.scopes:
        raise AuthError(403, f"this API key has no {scope} scope (scopes: {', '.join(key.scopes) or 'none'})")
    return key


def default_entity(settings: Settings) -> str:
    if settings.entity:
        return settings.entity
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers (same default as the SDK)
        return "user"


async def ensure_dev_key(conn: asyncpg.Connection, settings: Settings) -> Path | None:
    """Make ``$RUNLOG_HOME/api-key`` hold a live read+write key of the default entity.

    Does nothing when RUNLOG_API_KEY is set (the operator manages keys). Returns the file path."""
    if settings.api_key:
        return None
    path = Path(settings.home) / KEY_FILE
    entity = default_entity(settings)
    try:
        current = path.read_text().strip()
    except OSError:
        current = ""
    if current:
        key = await lookup(conn, current)
        if key is not None and key.entity == entity and "write" in key.scopes:
            return path
    _, text = await create_key(conn, entity, SCOPES, label="development key (API startup)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{KEY_FILE}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
    os.replace(tmp, path)
    log.info("development API key for entity %s written to %s", entity, path)
    return path
