"""usage records indexed by time, not by user

``usage_records(userId, createdAt)`` served no query, and as an index keyed by user every batch of charges
wrote into as many of its pages as it had users (on SQLite each such page is rewritten whole at commit).
The queries that read usage records by themselves — the admin charts, reconcile's window — filter on
``usedAt``, which had no index. On MySQL the foreign key on ``userId`` needs an index of its own; it is
created under the constraint's name, which is where InnoDB puts the one it makes for a foreign key.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(op.f("ix_usage_records_usedAt"), "usage_records", ["usedAt"], unique=False)
    if op.get_bind().dialect.name == "mysql":
        op.create_index("fk_usage_records_userId", "usage_records", ["userId"], unique=False)
    op.drop_index(op.f("ix_usage_records_userId_createdAt"), table_name="usage_records")


def downgrade() -> None:
    op.create_index(op.f("ix_usage_records_userId_createdAt"), "usage_records", ["userId", "createdAt"], unique=False)
    if op.get_bind().dialect.name == "mysql":
        op.drop_index("fk_usage_records_userId", table_name="usage_records")
    op.drop_index(op.f("ix_usage_records_usedAt"), table_name="usage_records")
