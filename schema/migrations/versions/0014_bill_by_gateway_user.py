"""bill by gateway user: a user's id at the gateway maps everything that gateway user spends to them

- ``users.gatewayUserId`` becomes text (new-api's user ids are numbers, LiteLLM's are strings) and unique
  where set: one gateway user bills one creditrelay user. A value several users held (learnt from keys
  the gateway account creditrelay calls as owns, before it could not be) names nobody in particular, and
  is cleared.
- ``api_keys.automatic``: the key was linked by a usage of a mapped gateway user, not by ``key link``.
- ``gateway_keys``: whose each gateway key is, as the gateway's log said (polling), so that a webhook that
  does not say it (seed 004's) still finds the key's user.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

from creditrelay.schema.database import MYSQL_TABLE_OPTIONS, exact_collation

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Timestamp = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql")


def _retype_on_sqlite(type_: str, cast: str) -> None:
    """SQLite would alter ``users`` by copying it, and dropping the table its other tables refer to fails:
    the column is replaced in place instead (ADD, copy, DROP, RENAME: SQLite 3.35+)."""
    op.execute(f'ALTER TABLE users ADD COLUMN "gatewayUserIdNew" {type_}')
    op.execute(f'UPDATE users SET "gatewayUserIdNew" = CAST("gatewayUserId" AS {cast})')  # noqa: S608 - fixed names
    op.execute('ALTER TABLE users DROP COLUMN "gatewayUserId"')
    op.execute('ALTER TABLE users RENAME COLUMN "gatewayUserIdNew" TO "gatewayUserId"')


def upgrade() -> None:
    bind = op.get_bind()
    options = dict(MYSQL_TABLE_OPTIONS)
    if bind.dialect.name == "mysql":
        options["mysql_collate"] = exact_collation(bind.dialect)
    users = sa.table("users", sa.column("gatewayUserId", sa.BigInteger()))
    shared = (
        sa.select(users.c.gatewayUserId)
        .where(users.c.gatewayUserId.is_not(None))
        .group_by(users.c.gatewayUserId)
        .having(sa.func.count() > 1)
    )
    ambiguous = [row[0] for row in bind.execute(shared)]
    if ambiguous:
        bind.execute(users.update().where(users.c.gatewayUserId.in_(ambiguous)).values(gatewayUserId=None))
    if bind.dialect.name == "sqlite":
        _retype_on_sqlite("VARCHAR(64)", "TEXT")
    else:
        op.alter_column(
            "users",
            "gatewayUserId",
            existing_type=sa.BigInteger(),
            type_=sa.String(length=64),
            existing_nullable=True,
            postgresql_using='"gatewayUserId"::text',
        )
    op.create_index(op.f("uq_users_gatewayUserId"), "users", ["gatewayUserId"], unique=True)
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("automatic", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.create_table(
        "gateway_keys",
        sa.Column("remoteKeyId", sa.String(length=64), nullable=False),
        sa.Column("gatewayUserId", sa.String(length=64), nullable=False),
        sa.Column("seenAt", Timestamp, nullable=False),
        sa.PrimaryKeyConstraint("remoteKeyId", name=op.f("pk_gateway_keys")),
        **options,
    )


def downgrade() -> None:
    op.drop_table("gateway_keys")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("automatic")
    bind = op.get_bind()
    users = sa.table("users", sa.column("gatewayUserId", sa.String()))
    digits = "^[0-9]{1,18}$"
    if bind.dialect.name != "sqlite":  # a LiteLLM user id has no number to go back to
        bind.execute(users.update().where(~users.c.gatewayUserId.regexp_match(digits)).values(gatewayUserId=None))
    else:
        bind.execute(users.update().where(users.c.gatewayUserId.op("GLOB")("*[^0-9]*")).values(gatewayUserId=None))
    op.drop_index(op.f("uq_users_gatewayUserId"), "users")
    if bind.dialect.name == "sqlite":
        _retype_on_sqlite("BIGINT", "INTEGER")
        return
    op.alter_column(
        "users",
        "gatewayUserId",
        existing_type=sa.String(length=64),
        type_=sa.BigInteger(),
        existing_nullable=True,
        postgresql_using='"gatewayUserId"::bigint',
    )
