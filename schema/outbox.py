"""The durable outbox's two tables, defined once: the sender's relay keeps them in its own database, and
the ledger's database holds them too, for what billing sends (alerts) — written in the transaction that
decided to send, delivered by the same relay."""

import sqlalchemy as sa

from creditrelay.schema.database import MYSQL_TABLE_OPTIONS, Id, LongText, Timestamp

EVENT_ID_MAX = 64
HOLDER_MAX = 128  # a relay's name, recorded on the events it has claimed
SNIPPET_LENGTH = 200  # how much of an answer an attempt keeps
PENDING, DELIVERED, DEAD = "pending", "delivered", "dead"


def outbox_tables(metadata: sa.MetaData) -> tuple[sa.Table, sa.Table]:
    """``outbox_events`` (one row per event, unique ``eventId``) and ``outbox_attempts``, in ``metadata``."""
    events = sa.Table(
        "outbox_events",
        metadata,
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("eventId", sa.String(EVENT_ID_MAX), nullable=False, unique=True),
        sa.Column("body", LongText, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("nextAttemptAt", Timestamp, nullable=False),
        sa.Column("claimedUntil", Timestamp, nullable=True),
        # the relay whose claim that is: a restarted relay frees its predecessor's claims, no one else's
        sa.Column("claimedBy", sa.String(HOLDER_MAX), nullable=True),
        sa.Column("lastError", sa.String(SNIPPET_LENGTH + 50), nullable=True),
        sa.Column("createdAt", Timestamp, nullable=False),
        sa.Column("deliveredAt", Timestamp, nullable=True),
        sa.Index("ix_outbox_events_due", "status", "nextAttemptAt"),
        **MYSQL_TABLE_OPTIONS,
    )
    attempts = sa.Table(
        "outbox_attempts",
        metadata,
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("eventId", sa.String(64), nullable=False, index=True),
        sa.Column("attemptedAt", Timestamp, nullable=False),
        sa.Column("verdict", sa.String(16), nullable=False),
        sa.Column("statusCode", sa.Integer, nullable=True),
        sa.Column("latencyMs", sa.Integer, nullable=False),
        sa.Column("snippet", sa.String(SNIPPET_LENGTH * 4), nullable=False),
        **MYSQL_TABLE_OPTIONS,
    )
    return events, attempts
