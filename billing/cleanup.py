"""Log cleanup: delete old ``processed`` and ``ignored`` webhook logs in small batches.

``failed`` logs stay until replayed; usage records and transactions are never deleted (usage records are
what keep a late replay a duplicate). Each batch is its own short transaction, so MySQL never holds a long
lock on ``webhook_logs`` while the receiver writes to it.
"""

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy import Connection, Engine

from billing.database import run_transaction
from schema.tables import webhook_logs

BATCH = 1000


def delete_old_logs(engine: Engine, older_than: datetime, batch: int = BATCH) -> int:
    """Delete processed/ignored logs created before ``older_than``; how many were deleted."""

    def one_batch(connection: Connection) -> int:
        ids = list(
            connection.scalars(
                sa.select(webhook_logs.c.id)
                .where(webhook_logs.c.status.in_(["processed", "ignored"]), webhook_logs.c.createdAt < older_than)
                .order_by(webhook_logs.c.id)
                .limit(batch)
            )
        )
        if ids:
            connection.execute(webhook_logs.delete().where(webhook_logs.c.id.in_(ids)))
        return len(ids)

    total = 0
    while True:
        deleted = run_transaction(engine, one_batch)
        total += deleted
        if deleted < batch:
            return total
