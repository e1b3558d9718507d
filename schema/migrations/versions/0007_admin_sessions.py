"""admin page sessions kept on the server

The admin pages signed their session into the cookie itself, so sign-out could not end a copy of it: a
cookie copied before sign-out kept working for its eight hours. Sessions now live in ``admin_sessions``
(the cookie holds a random token, stored as its SHA-256) and sign-out ends them.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

from creditrelay.schema.database import MYSQL_TABLE_OPTIONS, exact_collation

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Timestamp = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql")


def upgrade() -> None:
    options = dict(MYSQL_TABLE_OPTIONS)
    if op.get_bind().dialect.name == "mysql":
        options["mysql_collate"] = exact_collation(op.get_bind().dialect)
    op.create_table(
        "admin_sessions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("tokenHash", sa.String(length=64), nullable=False),
        sa.Column("csrf", sa.String(length=64), nullable=False),
        sa.Column("createdAt", Timestamp, nullable=False),
        sa.Column("expiresAt", Timestamp, nullable=False),
        sa.Column("endedAt", Timestamp, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_admin_sessions")),
        sa.UniqueConstraint("tokenHash", name=op.f("uq_admin_sessions_tokenHash")),
        **options,
    )
    op.create_index(op.f("ix_admin_sessions_expiresAt"), "admin_sessions", ["expiresAt"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_admin_sessions_expiresAt"), table_name="admin_sessions")
    op.drop_table("admin_sessions")
