"""Cleanup: delete old ``processed`` and ``ignored`` webhook logs, and credit API tokens whose window has
passed, in small batches.

``failed`` logs stay until replayed; usage records and transactions are never deleted (usage records are
what keep a late replay a duplicate). A token past its window is refused as too old before it is looked up,
so it goes (``billing.credit_tokens``). Each batch is its own short transaction, so MySQL never holds a long
lock on a table while the receiver writes to it.
"""

from collections.abc import Callable
from datetime import datetime
from functools import partial

import sqlalchemy as sa
from sqlalchemy import Connection, Engine

from creditrelay.billing import credit_tokens
from creditrelay.schema.tables import webhook_logs
from creditrelay.schema.transactions import run_transaction

BATCH = 1000
CLEANED = ("processed", "ignored")


def delete_batch(
    connection: Connection, status: str, older_than: datetime, start: datetime | None, batch: int
) -> tuple[int, datetime | None]:
    """Delete up to ``batch`` logs of ``status`` created in ``[start, older_than)``, oldest first; how many,
    and where the next batch starts (None: none left)."""
    query = (
        sa.select(webhook_logs.c.id, webhook_logs.c.createdAt)
        .where(webhook_logs.c.status == status, webhook_logs.c.createdAt < older_than)
        .order_by(webhook_logs.c.createdAt)
        .limit(batch)
    )
    if start is not None:
        query = query.where(webhook_logs.c.createdAt >= start)
    rows = connection.execute(query).all()
    if rows:
        connection.execute(webhook_logs.delete().where(webhook_logs.c.id.in_([row.id for row in rows])))
    return len(rows), (rows[-1].createdAt if len(rows) == batch else None)


def delete_old_logs(
    engine: Engine,
    older_than: datetime,
    batch: int = BATCH,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Delete processed/ignored logs created before ``older_than``, a short transaction per batch; how many
    were deleted.

    Each batch is read in the order of the ``(status, createdAt)`` index from where the last one ended, so
    every batch costs the same however many old rows there are (ordering by id made each batch sort every
    remaining old row). ``progress`` is told each batch's count.
    """
    total = 0
    for status in CLEANED:
        start: datetime | None = None
        while True:
            deleted, start = run_transaction(engine, partial(delete_batch, status=status, older_than=older_than,
                                                             start=start, batch=batch))  # fmt: skip
            total += deleted
            if progress is not None:
                progress(deleted)
            if start is None:
                break
    return total


def delete_expired_tokens(engine: Engine, now: datetime, batch: int = BATCH) -> int:
    """Delete the credit API tokens whose window ended more than ``credit_tokens.CLEANUP_MARGIN`` before
    ``now``, a short transaction per batch; how many were deleted."""
    total = 0
    while True:
        deleted = run_transaction(engine, partial(credit_tokens.delete_expired, now=now, batch=batch))
        total += deleted
        if deleted < batch:
            return total
