"""gateway enforcement and alerts: suspend a user at the gateway when their credits run out

``gateway_states`` holds each user's latest intent (suspend or resume) and the version the gateway last
confirmed; ``gateway_calls`` records every call and its answer; ``users.gatewayUserId`` is the user's id at
the gateway. The outbox's two tables join the ledger's database: alerts are written there in the
transaction whose balance change crossed a line, and delivered by the sender's relay.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

from creditrelay.schema.database import MYSQL_TABLE_OPTIONS, exact_collation

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Timestamp = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql")
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
LongText = sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql")


def upgrade() -> None:
    options = dict(MYSQL_TABLE_OPTIONS)
    if op.get_bind().dialect.name == "mysql":
        options["mysql_collate"] = exact_collation(op.get_bind().dialect)
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("gatewayUserId", sa.BigInteger(), nullable=True))
    op.create_table(
        "gateway_states",
        sa.Column("userId", Id, nullable=False, autoincrement=False),
        sa.Column("desired", sa.String(length=16), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("applied", sa.BigInteger(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("nextAttemptAt", Timestamp, nullable=True),
        sa.Column("leaseOwner", sa.String(length=64), nullable=True),
        sa.Column("leaseUntil", Timestamp, nullable=True),
        sa.Column("lastError", sa.String(length=255), nullable=True),
        sa.Column("updatedAt", Timestamp, nullable=False),
        sa.ForeignKeyConstraint(["userId"], ["users.id"], name=op.f("fk_gateway_states_userId")),
        sa.PrimaryKeyConstraint("userId", name=op.f("pk_gateway_states")),
        **options,
    )
    op.create_index(op.f("ix_gateway_states_nextAttemptAt"), "gateway_states", ["nextAttemptAt"], unique=False)
    op.create_index(op.f("ix_gateway_states_desired"), "gateway_states", ["desired"], unique=False)
    op.create_table(
        "gateway_calls",
        sa.Column("id", Id, nullable=False),
        sa.Column("userId", Id, nullable=False),
        sa.Column("target", sa.String(length=64), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("statusCode", sa.Integer(), nullable=True),
        sa.Column("answer", sa.String(length=255), nullable=False),
        sa.Column("at", Timestamp, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_gateway_calls")),
        **options,
    )
    op.create_index(op.f("ix_gateway_calls_userId_id"), "gateway_calls", ["userId", "id"], unique=False)
    if sa.inspect(op.get_bind()).has_table("outbox_events"):
        return  # a relay's outbox was kept in this database already: its tables serve the alerts too
    op.create_table(
        "outbox_events",
        sa.Column("id", Id, nullable=False),
        sa.Column("eventId", sa.String(length=64), nullable=False),
        sa.Column("body", LongText, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("nextAttemptAt", Timestamp, nullable=False),
        sa.Column("claimedUntil", Timestamp, nullable=True),
        sa.Column("lastError", sa.String(length=250), nullable=True),
        sa.Column("createdAt", Timestamp, nullable=False),
        sa.Column("deliveredAt", Timestamp, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox_events")),
        sa.UniqueConstraint("eventId", name=op.f("uq_outbox_events_eventId")),
        **options,
    )
    op.create_index("ix_outbox_events_due", "outbox_events", ["status", "nextAttemptAt"], unique=False)
    op.create_table(
        "outbox_attempts",
        sa.Column("id", Id, nullable=False),
        sa.Column("eventId", sa.String(length=64), nullable=False),
        sa.Column("attemptedAt", Timestamp, nullable=False),
        sa.Column("verdict", sa.String(length=16), nullable=False),
        sa.Column("statusCode", sa.Integer(), nullable=True),
        sa.Column("latencyMs", sa.Integer(), nullable=False),
        sa.Column("snippet", sa.String(length=800), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox_attempts")),
        **options,
    )
    op.create_index(op.f("ix_outbox_attempts_eventId"), "outbox_attempts", ["eventId"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_outbox_attempts_eventId"), table_name="outbox_attempts")
    op.drop_table("outbox_attempts")
    op.drop_index("ix_outbox_events_due", table_name="outbox_events")
    op.drop_table("outbox_events")
    op.drop_index(op.f("ix_gateway_calls_userId_id"), table_name="gateway_calls")
    op.drop_table("gateway_calls")
    op.drop_index(op.f("ix_gateway_states_desired"), table_name="gateway_states")
    op.drop_index(op.f("ix_gateway_states_nextAttemptAt"), table_name="gateway_states")
    op.drop_table("gateway_states")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("gatewayUserId")
