"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("email", sa.String(length=191), nullable=False),
        sa.Column("name", sa.String(length=191), nullable=True),
        sa.Column("telegramId", sa.BigInteger(), nullable=True),
        sa.Column("balance", sa.BigInteger(), nullable=False),
        sa.Column("createdAt", sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql"), nullable=False),
        sa.Column("updatedAt", sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("email", name=op.f("uq_users_email")),
        sa.UniqueConstraint("telegramId", name=op.f("uq_users_telegramId")),
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
        mysql_engine="InnoDB",
    )
    op.create_table(
        "webhook_logs",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("eventId", sa.String(length=64), nullable=False),
        sa.Column("eventType", sa.String(length=64), nullable=False),
        sa.Column("payload", sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql"), nullable=False),
        sa.Column("payloadHash", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("errorMsg", sa.String(length=1000), nullable=True),
        sa.Column("processedAt", sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql"), nullable=True),
        sa.Column("createdAt", sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_logs")),
        sa.UniqueConstraint("eventId", name=op.f("uq_webhook_logs_eventId")),
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
        mysql_engine="InnoDB",
    )
    op.create_index(op.f("ix_webhook_logs_createdAt"), "webhook_logs", ["createdAt"], unique=False)
    op.create_index(op.f("ix_webhook_logs_status_createdAt"), "webhook_logs", ["status", "createdAt"], unique=False)
    op.create_table(
        "api_keys",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("remoteKeyId", sa.String(length=64), nullable=False),
        sa.Column("userId", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("createdAt", sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql"), nullable=False),
        sa.Column("updatedAt", sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql"), nullable=False),
        sa.ForeignKeyConstraint(["userId"], ["users.id"], name=op.f("fk_api_keys_userId")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("remoteKeyId", name=op.f("uq_api_keys_remoteKeyId")),
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
        mysql_engine="InnoDB",
    )
    op.create_index(op.f("ix_api_keys_userId"), "api_keys", ["userId"], unique=False)
    op.create_table(
        "usage_records",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("usageKey", sa.String(length=160), nullable=False),
        sa.Column("userId", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("remoteKeyId", sa.String(length=64), nullable=False),
        sa.Column("eventId", sa.String(length=64), nullable=True),
        sa.Column("requestId", sa.String(length=128), nullable=True),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("promptTokens", sa.BigInteger(), nullable=False),
        sa.Column("completionTokens", sa.BigInteger(), nullable=False),
        sa.Column("totalTokens", sa.BigInteger(), nullable=False),
        sa.Column("creditCost", sa.BigInteger(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("usedAt", sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql"), nullable=False),
        sa.Column("createdAt", sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql"), nullable=False),
        sa.ForeignKeyConstraint(["userId"], ["users.id"], name=op.f("fk_usage_records_userId")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_records")),
        sa.UniqueConstraint("usageKey", name=op.f("uq_usage_records_usageKey")),
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
        mysql_engine="InnoDB",
    )
    op.create_index(op.f("ix_usage_records_eventId"), "usage_records", ["eventId"], unique=False)
    op.create_index(op.f("ix_usage_records_userId_createdAt"), "usage_records", ["userId", "createdAt"], unique=False)
    op.create_table(
        "credit_transactions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("userId", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("balance", sa.BigInteger(), nullable=False),
        sa.Column("reference", sa.String(length=191), nullable=False),
        sa.Column("usageRecordId", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("reason", sa.String(length=255), nullable=True),
        sa.Column("source", sa.String(length=64), nullable=True),
        sa.Column("createdAt", sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql"), nullable=False),
        sa.CheckConstraint(  # an expression: each database quotes the camelCase column its own way
            (sa.column("type") == "usage") == sa.column("usageRecordId").is_not(None),
            name=op.f("ck_credit_transactions_usage_has_record"),
        ),
        sa.ForeignKeyConstraint(
            ["usageRecordId"], ["usage_records.id"], name=op.f("fk_credit_transactions_usageRecordId")
        ),
        sa.ForeignKeyConstraint(["userId"], ["users.id"], name=op.f("fk_credit_transactions_userId")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_credit_transactions")),
        sa.UniqueConstraint("reference", name=op.f("uq_credit_transactions_reference")),
        sa.UniqueConstraint("usageRecordId", name=op.f("uq_credit_transactions_usageRecordId")),
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
        mysql_engine="InnoDB",
    )
    op.create_index(op.f("ix_credit_transactions_createdAt"), "credit_transactions", ["createdAt"], unique=False)
    op.create_index(op.f("ix_credit_transactions_userId_id"), "credit_transactions", ["userId", "id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_credit_transactions_userId_id"), table_name="credit_transactions")
    op.drop_index(op.f("ix_credit_transactions_createdAt"), table_name="credit_transactions")
    op.drop_table("credit_transactions")
    op.drop_index(op.f("ix_usage_records_userId_createdAt"), table_name="usage_records")
    op.drop_index(op.f("ix_usage_records_eventId"), table_name="usage_records")
    op.drop_table("usage_records")
    op.drop_index(op.f("ix_api_keys_userId"), table_name="api_keys")
    op.drop_table("api_keys")
    op.drop_index(op.f("ix_webhook_logs_status_createdAt"), table_name="webhook_logs")
    op.drop_index(op.f("ix_webhook_logs_createdAt"), table_name="webhook_logs")
    op.drop_table("webhook_logs")
    op.drop_table("users")
