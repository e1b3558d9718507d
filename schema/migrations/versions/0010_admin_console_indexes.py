"""the admin console's logs by gateway key as index ranges

``webhook_logs.remoteKeyId`` is the usage's gateway key, copied from the payload (the receiver writes it
with the row; this migration fills it in for the rows already stored, with the database's own JSON
functions), indexed with the status and the id: the logs of one key or one user, of one status, newest
first, and replay by key, read a range of it instead of every payload.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The key as the receiver writes it (``str`` of an integer or the string itself), read from stored payloads
# (all of them JSON: nothing else is recorded).
BACKFILL = {
    "sqlite": "UPDATE webhook_logs SET remoteKeyId = CAST(json_extract(payload, '$.data.remoteKeyId') AS TEXT)"
    " WHERE eventType = 'usage' AND json_valid(payload)",
    "mysql": "UPDATE webhook_logs SET remoteKeyId = JSON_UNQUOTE(JSON_EXTRACT(payload, '$.data.remoteKeyId'))"
    " WHERE eventType = 'usage' AND JSON_VALID(payload)",
    "postgresql": """UPDATE webhook_logs SET "remoteKeyId" = payload::json -> 'data' ->> 'remoteKeyId'"""
    """ WHERE "eventType" = 'usage'""",
}


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    with op.batch_alter_table("webhook_logs") as batch:
        batch.add_column(sa.Column("remoteKeyId", sa.String(length=64), nullable=True))
    op.execute(BACKFILL[dialect])
    op.create_index(
        op.f("ix_webhook_logs_remoteKeyId_status_id"), "webhook_logs", ["remoteKeyId", "status", "id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_webhook_logs_remoteKeyId_status_id"), table_name="webhook_logs")
    with op.batch_alter_table("webhook_logs") as batch:
        batch.drop_column("remoteKeyId")
