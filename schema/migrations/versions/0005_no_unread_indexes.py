"""drop two indexes no query reads

``usage_records(eventId)`` and ``credit_transactions(createdAt)`` served no query: usage records are found
by ``usageKey``, by ``usedAt`` and through their transaction, and transactions by user or by reference.
Every charge still wrote an entry into each, one B-tree insert of the 13 a webhook event costs, and the
pages it touched went into every commit.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index(op.f("ix_usage_records_eventId"), table_name="usage_records")
    op.drop_index(op.f("ix_credit_transactions_createdAt"), table_name="credit_transactions")


def downgrade() -> None:
    op.create_index(op.f("ix_credit_transactions_createdAt"), "credit_transactions", ["createdAt"], unique=False)
    op.create_index(op.f("ix_usage_records_eventId"), "usage_records", ["eventId"], unique=False)
