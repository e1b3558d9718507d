"""orders: members pay for credit packages through Stripe or EPay (issue 35)

- ``orders``: one row per payment, ``created`` → ``paid`` → ``refunded``/``disputed`` or ``failed`` with
  the reason; unique by ``reference`` (provider and out_trade_no), Stripe session and payment intent, and
  by ``firstOfUser`` (set on a member's first paid order only: the first-purchase bonus once per member).

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

from creditrelay.schema.database import MYSQL_TABLE_OPTIONS, exact_collation

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Timestamp = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql")
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    options = dict(MYSQL_TABLE_OPTIONS)
    if op.get_bind().dialect.name == "mysql":
        options["mysql_collate"] = exact_collation(op.get_bind().dialect)
    op.create_table(
        "orders",
        sa.Column("id", Id, nullable=False),
        sa.Column("provider", sa.String(length=16), nullable=False),
        sa.Column("reference", sa.String(length=191), nullable=False),
        sa.Column("outTradeNo", sa.String(length=64), nullable=False),
        sa.Column("sessionId", sa.String(length=191), nullable=True),
        sa.Column("paymentIntentId", sa.String(length=191), nullable=True),
        sa.Column("providerTradeNo", sa.String(length=191), nullable=True),
        sa.Column("userId", Id, nullable=True),
        sa.Column("member", sa.String(length=191), nullable=True),
        sa.Column("package", sa.String(length=32), nullable=False),
        sa.Column("credits", sa.BigInteger(), nullable=True),
        sa.Column("bonus", sa.BigInteger(), nullable=False),
        sa.Column("bonusFirstOnly", sa.Boolean(), nullable=False),
        sa.Column("bonusDays", sa.Integer(), nullable=True),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("failure", sa.String(length=255), nullable=True),
        sa.Column("bonusGiven", sa.BigInteger(), nullable=False),
        sa.Column("firstOfUser", Id, nullable=True),
        sa.Column("refunded", sa.BigInteger(), nullable=False),
        sa.Column("takenBack", sa.BigInteger(), nullable=False),
        sa.Column("createdAt", Timestamp, nullable=False),
        sa.Column("paidAt", Timestamp, nullable=True),
        sa.Column("updatedAt", Timestamp, nullable=False),
        sa.ForeignKeyConstraint(["userId"], ["users.id"], name=op.f("fk_orders_userId")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_orders")),
        sa.UniqueConstraint("reference", name=op.f("uq_orders_reference")),
        sa.UniqueConstraint("sessionId", name=op.f("uq_orders_sessionId")),
        sa.UniqueConstraint("paymentIntentId", name=op.f("uq_orders_paymentIntentId")),
        sa.UniqueConstraint("firstOfUser", name=op.f("uq_orders_firstOfUser")),
        **options,
    )
    op.create_index(op.f("ix_orders_userId_id"), "orders", ["userId", "id"], unique=False)
    op.create_index(op.f("ix_orders_status_id"), "orders", ["status", "id"], unique=False)


def downgrade() -> None:
    op.drop_table("orders")  # with its indexes (MySQL refuses to drop one its foreign key needs)
