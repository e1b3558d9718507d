"""a signed credit request applies once, clients have rights, pairings can move, pushes make progress

- ``credit_tokens``: every credit-API token once accepted, with the reference it asked for, until its
  timestamp window has passed (a captured request replayed with a new ``external_reference`` is refused).
- ``api_clients.rights``: what a client may do; clients made before keep everything they could do.
- ``usage_matches.pairedUsedAt``: when the usage that paired with an open one was used, so that a later
  arrival can move a pairing to the other twin (a maximum matching, ``billing.matching``).
- ``api_keys.openPollUsages``: a key's share of its user's open polled usages, so that moving a key to
  another user moves its share (a webhook of the moved key still finds its polled usage).
- ``gateway_states.progress`` / ``progressVersion``: the targets the gateway already confirmed for the
  intent at that version, so a push that ran out of time resumes instead of starting over.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

from creditrelay.schema.database import MYSQL_TABLE_OPTIONS, exact_collation

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Timestamp = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql")
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
LongText = sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql")
EVERY_RIGHT = "balance,records,records:all,credit,debit"  # what a client could do before rights existed


def upgrade() -> None:
    options = dict(MYSQL_TABLE_OPTIONS)
    if op.get_bind().dialect.name == "mysql":
        options["mysql_collate"] = exact_collation(op.get_bind().dialect)
    op.create_table(
        "credit_tokens",
        sa.Column("id", Id, nullable=False),
        sa.Column("token", sa.String(length=64), nullable=False),
        sa.Column("reference", sa.String(length=191), nullable=True),
        sa.Column("expiresAt", Timestamp, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_credit_tokens")),
        sa.UniqueConstraint("token", name=op.f("uq_credit_tokens_token")),
        **options,
    )
    op.create_index(op.f("ix_credit_tokens_expiresAt"), "credit_tokens", ["expiresAt"], unique=False)
    with op.batch_alter_table("api_clients") as batch:
        batch.add_column(sa.Column("rights", sa.String(length=255), nullable=False, server_default=EVERY_RIGHT))
    with op.batch_alter_table("usage_matches") as batch:
        batch.add_column(sa.Column("pairedUsedAt", Timestamp, nullable=True))
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("openPollUsages", sa.BigInteger(), nullable=False, server_default="0"))
    matches, records, keys = (
        sa.table("usage_matches", *map(sa.column, ("usageRecordId", "source", "pairedKey"))),
        (sa.table("usage_records", sa.column("id"), sa.column("remoteKeyId"))),
        sa.table("api_keys", sa.column("remoteKeyId"), sa.column("openPollUsages")),
    )
    open_polled = (
        sa.select(sa.func.count())
        .select_from(matches.join(records, records.c.id == matches.c.usageRecordId))
        .where(
            records.c.remoteKeyId == keys.c.remoteKeyId,
            matches.c.source == "poll",
            matches.c.pairedKey.is_(None),
        )
        .scalar_subquery()
    )
    op.execute(keys.update().values(openPollUsages=open_polled))
    with op.batch_alter_table("gateway_states") as batch:
        batch.add_column(sa.Column("progress", LongText, nullable=True))
        batch.add_column(sa.Column("progressVersion", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("gateway_states") as batch:
        batch.drop_column("progressVersion")
        batch.drop_column("progress")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("openPollUsages")
    with op.batch_alter_table("usage_matches") as batch:
        batch.drop_column("pairedUsedAt")
    with op.batch_alter_table("api_clients") as batch:
        batch.drop_column("rights")
    op.drop_index(op.f("ix_credit_tokens_expiresAt"), table_name="credit_tokens")
    op.drop_table("credit_tokens")
