"""Client projects of the credit API: registered by source, identified by an API key stored hashed, each
with its own HMAC secret (or the operator's ``CREDIT_SYNC_SECRET``) and its rights
(``schema.credit_sync.RIGHTS``: what it may read and change).

An API key is 32 random bytes, so a plain SHA-256 of it is a safe, indexable stand-in; the HMAC secret
must be recomputed on every request, so it is stored as given (or left empty: ``CREDIT_SYNC_SECRET``).
"""

import hashlib
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from creditrelay.schema.credit_sync import DEFAULT_RIGHTS, RIGHTS, parse_rights
from creditrelay.schema.errors import InvalidInput
from creditrelay.schema.shapes import iso
from creditrelay.schema.statements import savepoint
from creditrelay.schema.tables import api_clients

ACTIVE, REVOKED = "active", "revoked"
_SOURCE = re.compile(r"[A-Za-z0-9_.-]{1,48}")


class ClientError(InvalidInput):
    """A client operation cannot be done as asked."""


@dataclass(frozen=True)
class Client:
    source: str
    secret: str | None
    rights: frozenset[str]


def _stored(rights: str | Iterable[str]) -> str:
    """Rights as ``api_clients.rights`` keeps them; ``InvalidInput`` naming an unknown one."""
    return ",".join(parse_rights(rights))


def _granted(stored: str) -> list[str]:
    """The rights a stored value grants, in ``RIGHTS`` order (a name that is not a right grants nothing)."""
    names = set(stored.split(","))
    return [right for right in RIGHTS if right in names]


def hash_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


def _new_credentials(own_secret: bool) -> tuple[str, str | None]:
    return f"crk_{secrets.token_urlsafe(32)}", secrets.token_urlsafe(32) if own_secret else None


def add_client(
    connection: Connection,
    source: str,
    now: datetime,
    *,
    own_secret: bool = True,
    rights: str | Iterable[str] = DEFAULT_RIGHTS,
) -> dict[str, Any]:
    """Register ``source`` with ``rights``; the only time its API key and secret are shown."""
    if not _SOURCE.fullmatch(source):
        raise ClientError("a source is 1-48 letters, digits, '_', '.' or '-'")
    stored = _stored(rights)
    api_key, secret = _new_credentials(own_secret)
    row = {
        "source": source,
        "apiKeyHash": hash_key(api_key),
        "apiKeyPrefix": api_key[:12],
        "secret": secret,
        "status": ACTIVE,
        "rights": stored,
        "createdAt": now,
        "updatedAt": now,
    }
    try:
        with savepoint(connection, "add_client"):
            connection.execute(api_clients.insert().values(**row))
    except IntegrityError:
        raise ClientError(f"a client {source!r} exists (use `client rotate`)") from None
    return {"source": source, "api_key": api_key, "secret": secret}


def rotate_client(connection: Connection, source: str, now: datetime, *, own_secret: bool = True) -> dict[str, Any]:
    """New API key (and secret) for ``source``; the old ones stop working at once. Re-activates a revoked client."""
    api_key, secret = _new_credentials(own_secret)
    changed = connection.execute(
        api_clients.update()
        .where(api_clients.c.source == source)
        .values(apiKeyHash=hash_key(api_key), apiKeyPrefix=api_key[:12], secret=secret, status=ACTIVE, updatedAt=now)
    ).rowcount
    if not changed:
        raise ClientError(f"no client {source!r}")
    return {"source": source, "api_key": api_key, "secret": secret}


def revoke_client(connection: Connection, source: str, now: datetime) -> dict[str, Any]:
    changed = connection.execute(
        api_clients.update().where(api_clients.c.source == source).values(status=REVOKED, updatedAt=now)
    ).rowcount
    if not changed:
        raise ClientError(f"no client {source!r}")
    return {"source": source, "status": REVOKED}


def set_rights(connection: Connection, source: str, rights: str | Iterable[str], now: datetime) -> dict[str, Any]:
    """What ``source`` may do from its next request on: exactly ``rights``."""
    stored = _stored(rights)
    changed = connection.execute(
        api_clients.update().where(api_clients.c.source == source).values(rights=stored, updatedAt=now)
    ).rowcount
    if not changed:
        raise ClientError(f"no client {source!r}")
    return {"source": source, "rights": _granted(stored)}


def list_clients(connection: Connection) -> list[dict[str, Any]]:
    rows = connection.execute(sa.select(api_clients).order_by(api_clients.c.source))
    return [
        {
            "source": row.source,
            "status": row.status,
            "apiKeyPrefix": row.apiKeyPrefix,
            "ownSecret": row.secret is not None,
            "rights": _granted(row.rights),
            "createdAt": iso(row.createdAt),
            "updatedAt": iso(row.updatedAt),
        }
        for row in rows
    ]


def authenticate(connection: Connection, api_key: str) -> Client | None:
    """The active client holding ``api_key``, if any."""
    row = connection.execute(
        sa.select(api_clients.c.source, api_clients.c.secret, api_clients.c.rights).where(
            api_clients.c.apiKeyHash == hash_key(api_key), api_clients.c.status == ACTIVE
        )
    ).one_or_none()
    return None if row is None else Client(row.source, row.secret, frozenset(_granted(row.rights)))
