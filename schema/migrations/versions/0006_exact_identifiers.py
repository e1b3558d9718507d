"""identifiers compare byte for byte on MySQL: a binary NO PAD collation

``utf8mb4_bin`` is a PAD SPACE collation: ``"R1 "`` equals ``"R1"`` in comparisons and unique keys, so a
usage with request id ``"R1 "`` after ``"R1"`` was taken for a duplicate (and not charged) on MySQL while
SQLite charged it. Every table moves to the server's binary NO PAD collation (``utf8mb4_nopad_bin`` on
MariaDB, ``utf8mb4_0900_bin`` on MySQL 8). That tells apart strictly more values, so existing rows can
never collide. On MySQL each table is rebuilt (a copy): run it at a quiet time on a large database. SQLite
compares bytes already.

Going down to PAD SPACE fails on a unique key if rows that differ only in trailing spaces exist by then.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from collections.abc import Sequence

from alembic import op

from creditrelay.schema.database import convert_to_exact_collation

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = (
    "users",
    "api_keys",
    "usage_records",
    "credit_transactions",
    "webhook_logs",
    "poll_state",
    "unbilled_usage",
    "reconcile_runs",
    "api_clients",
)


def upgrade() -> None:
    convert_to_exact_collation(op.get_bind(), TABLES)


def downgrade() -> None:
    if op.get_bind().dialect.name == "mysql":
        for name in TABLES:
            op.execute(f"ALTER TABLE `{name}` CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
