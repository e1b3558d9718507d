"""Admin page sessions, kept in the database: opened at sign-in, looked up per page, ended at sign-out.

The browser holds a random token; only its SHA-256 is stored, so reading the table does not sign anyone
in. A session ends at sign-out or after its lifetime, whichever comes first.
"""

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy import Connection

from creditrelay.schema.tables import admin_sessions

LIFETIME = timedelta(hours=8)


@dataclass(frozen=True)
class Session:
    token: str  # what the cookie carries
    csrf: str  # what every form of the session must carry


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def open_session(connection: Connection, now: datetime) -> Session:
    """A new session (and sessions long expired are deleted)."""
    connection.execute(admin_sessions.delete().where(admin_sessions.c.expiresAt < now - LIFETIME))
    session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32))
    connection.execute(
        admin_sessions.insert().values(
            tokenHash=_hash(session.token), csrf=session.csrf, createdAt=now, expiresAt=now + LIFETIME
        )
    )
    return session


def find_session(connection: Connection, token: str, now: datetime) -> Session | None:
    """The live session of ``token``: not ended, not expired."""
    csrf = connection.execute(
        sa.select(admin_sessions.c.csrf).where(
            admin_sessions.c.tokenHash == _hash(token),
            admin_sessions.c.endedAt.is_(None),
            admin_sessions.c.expiresAt > now,
        )
    ).scalar_one_or_none()
    return None if csrf is None else Session(token, csrf)


def end_session(connection: Connection, token: str, now: datetime) -> None:
    connection.execute(
        admin_sessions.update()
        .where(admin_sessions.c.tokenHash == _hash(token), admin_sessions.c.endedAt.is_(None))
        .values(endedAt=now)
    )
