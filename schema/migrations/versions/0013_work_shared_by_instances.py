"""several instances share the background work: a lease table, and claims that name their relay

- ``leases``: work one instance of many does at a time (the poller's passes), held by one until it
  expires; any instance takes it over after that.
- ``outbox_events.claimedBy``: the relay that claimed an event (the ledger's outbox holds the alerts), so a
  restarted relay frees its own predecessor's claims and not those of relays running beside it. Claims made
  before are freed when their lease runs out.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

from creditrelay.schema.database import MYSQL_TABLE_OPTIONS, exact_collation

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Timestamp = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql")


def upgrade() -> None:
    options = dict(MYSQL_TABLE_OPTIONS)
    if op.get_bind().dialect.name == "mysql":
        options["mysql_collate"] = exact_collation(op.get_bind().dialect)
    op.create_table(
        "leases",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.String(length=128), nullable=False),
        sa.Column("expiresAt", Timestamp, nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_leases")),
        **options,
    )
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("outbox_events")}
    if "claimedBy" not in columns:  # a newer relay that opened this outbox may have added it already
        with op.batch_alter_table("outbox_events") as batch:
            batch.add_column(sa.Column("claimedBy", sa.String(length=128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outbox_events") as batch:
        batch.drop_column("claimedBy")
    op.drop_table("leases")
