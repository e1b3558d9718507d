"""credits that expire and credits held before a request (issue 34)

- ``credit_grants``: a top-up with an expiry, a priority or of kind ``promo``, spent before the credits
  without expiry, in priority → expiry → age order; its remainder leaves as an ``expiry`` transaction.
- ``users.liveGrants``: how many live grants the user has, read with the row lock a charge takes already,
  so a user without grants costs a charge nothing more.
- ``credit_holds``: credits set aside before a request, one per (source, requestId); ``users.openHolds``
  counts a user's open ones, so a usage of a user without holds looks for none.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

from creditrelay.schema.database import MYSQL_TABLE_OPTIONS, exact_collation

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Timestamp = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql")
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    options = dict(MYSQL_TABLE_OPTIONS)
    if op.get_bind().dialect.name == "mysql":
        options["mysql_collate"] = exact_collation(op.get_bind().dialect)
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("liveGrants", sa.BigInteger(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("openHolds", sa.BigInteger(), nullable=False, server_default="0"))
    op.create_table(
        "credit_grants",
        sa.Column("id", Id, nullable=False),
        sa.Column("userId", Id, nullable=False),
        sa.Column("reference", sa.String(length=191), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=True),
        sa.Column("expiresAt", Timestamp, nullable=True),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("remaining", sa.BigInteger(), nullable=False),
        sa.Column("used", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=255), nullable=True),
        sa.Column("createdAt", Timestamp, nullable=False),
        sa.Column("closedAt", Timestamp, nullable=True),
        sa.ForeignKeyConstraint(["userId"], ["users.id"], name=op.f("fk_credit_grants_userId")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_credit_grants")),
        sa.UniqueConstraint("reference", name=op.f("uq_credit_grants_reference")),
        **options,
    )
    op.create_index(op.f("ix_credit_grants_userId_state"), "credit_grants", ["userId", "state"], unique=False)
    op.create_index(op.f("ix_credit_grants_state_expiresAt"), "credit_grants", ["state", "expiresAt"], unique=False)
    op.create_table(
        "credit_holds",
        sa.Column("id", Id, nullable=False),
        sa.Column("userId", Id, nullable=False),
        sa.Column("remoteKeyId", sa.String(length=64), nullable=True),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("requestId", sa.String(length=128), nullable=True),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("settled", sa.BigInteger(), nullable=True),
        sa.Column("settledBy", sa.String(length=191), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("expiresAt", Timestamp, nullable=False),
        sa.Column("createdAt", Timestamp, nullable=False),
        sa.Column("closedAt", Timestamp, nullable=True),
        sa.ForeignKeyConstraint(["userId"], ["users.id"], name=op.f("fk_credit_holds_userId")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_credit_holds")),
        sa.UniqueConstraint("source", "requestId", name=op.f("uq_credit_holds_source_requestId")),
        **options,
    )
    op.create_index(
        op.f("ix_credit_holds_userId_state_expiresAt"), "credit_holds", ["userId", "state", "expiresAt"], unique=False
    )
    op.create_index(op.f("ix_credit_holds_state_expiresAt"), "credit_holds", ["state", "expiresAt"], unique=False)


def downgrade() -> None:
    op.drop_table("credit_holds")  # with its indexes (MySQL refuses to drop one its foreign key needs)
    op.drop_table("credit_grants")
    if op.get_bind().dialect.name == "sqlite":  # in place: a batch would copy users, which others refer to
        op.execute('ALTER TABLE users DROP COLUMN "openHolds"')
        op.execute('ALTER TABLE users DROP COLUMN "liveGrants"')
        return
    op.drop_column("users", "openHolds")
    op.drop_column("users", "liveGrants")
