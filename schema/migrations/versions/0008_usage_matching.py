"""usages matched across the webhook and the gateway's log when they share no request id

Seed 004's webhook carries no request id, so the same usage read back from new-api's log had another
usage key and was charged twice. ``usage_matches`` holds the usages open for matching (fingerprint and
time) and, once paired, the other path's key (unique: it pairs once); ``users.openPollUsages`` counts a
user's polled usages still waiting for their webhook, read with the row lock the ledger already takes.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

from creditrelay.schema.database import MYSQL_TABLE_OPTIONS, exact_collation

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Timestamp = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql")
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    options = dict(MYSQL_TABLE_OPTIONS)
    if op.get_bind().dialect.name == "mysql":
        options["mysql_collate"] = exact_collation(op.get_bind().dialect)
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("openPollUsages", sa.BigInteger(), nullable=False, server_default="0"))
    op.create_table(
        "usage_matches",
        sa.Column("id", Id, nullable=False),
        sa.Column("usageRecordId", Id, nullable=False),
        sa.Column("userId", Id, nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("matchKey", sa.String(length=32), nullable=False),
        sa.Column("usedAt", Timestamp, nullable=False),
        sa.Column("creditCost", sa.BigInteger(), nullable=False),
        sa.Column("pairedKey", sa.String(length=160), nullable=True),
        sa.Column("pairedCost", sa.BigInteger(), nullable=True),
        sa.Column("pairedAt", Timestamp, nullable=True),
        sa.ForeignKeyConstraint(["usageRecordId"], ["usage_records.id"], name=op.f("fk_usage_matches_usageRecordId")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_matches")),
        **options,
    )
    op.create_index(op.f("ix_usage_matches_source_usedAt"), "usage_matches", ["source", "usedAt"], unique=False)
    op.create_index(
        "uq_usage_matches_pairedKey",
        "usage_matches",
        ["pairedKey"],
        unique=True,
        sqlite_where=sa.text('"pairedKey" IS NOT NULL'),
        postgresql_where=sa.text('"pairedKey" IS NOT NULL'),
    )


def downgrade() -> None:
    op.drop_index("uq_usage_matches_pairedKey", table_name="usage_matches")
    op.drop_index(op.f("ix_usage_matches_source_usedAt"), table_name="usage_matches")
    op.drop_table("usage_matches")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("openPollUsages")
