"""stripe_events: the Stripe events POST /api/payments/stripe received (issue 35)

- ``stripe_events``: one row per Stripe event id, with what became of it (processed, ignored, failed, or
  pending: a refund or dispute waiting for its payment's event); indexed by payment intent and status.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

from creditrelay.schema.database import MYSQL_TABLE_OPTIONS, exact_collation

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Timestamp = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql")
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    options = dict(MYSQL_TABLE_OPTIONS)
    if op.get_bind().dialect.name == "mysql":
        options["mysql_collate"] = exact_collation(op.get_bind().dialect)
    op.create_table(
        "stripe_events",
        sa.Column("id", Id, nullable=False),
        sa.Column("eventId", sa.String(length=191), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("objectId", sa.String(length=191), nullable=True),
        sa.Column("paymentIntentId", sa.String(length=191), nullable=True),
        sa.Column("amount", sa.BigInteger(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("detail", sa.String(length=255), nullable=True),
        sa.Column("createdAt", Timestamp, nullable=False),
        sa.Column("updatedAt", Timestamp, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stripe_events")),
        sa.UniqueConstraint("eventId", name=op.f("uq_stripe_events_eventId")),
        **options,
    )
    op.create_index(
        op.f("ix_stripe_events_paymentIntentId_status"), "stripe_events", ["paymentIntentId", "status"], unique=False
    )


def downgrade() -> None:
    op.drop_table("stripe_events")
