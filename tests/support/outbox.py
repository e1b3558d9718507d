"""Outboxes of any size, written fast: rows as the relay leaves them, inserted in multi-row Core statements
rather than through the relay."""

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Engine

from creditrelay.schema.statements import insert_all
from creditrelay.sender.outbox import DELIVERED


def rows(
    first: int, count: int, created: datetime, status: str | Callable[[int], str] = DELIVERED, body: str = "{}"
) -> Iterator[dict[str, Any]]:
    """Outbox rows as the relay leaves them, one millisecond apart from ``created`` on; ``status`` may be a
    function of the row's number."""
    for i in range(first, first + count):
        state = status(i) if callable(status) else status
        at = created + timedelta(milliseconds=i - first)
        yield {
            "eventId": f"e{i:07}", "body": body, "status": state, "attempts": 1, "nextAttemptAt": at,
            "createdAt": at, "deliveredAt": at if state == DELIVERED else None,
        }  # fmt: skip


def bulk_insert(engine: Engine, table: sa.Table, made: Iterator[dict[str, Any]], size: int = 20_000) -> None:
    """Insert in multi-row Core statements, a transaction per ``size`` rows (fast, not the relay)."""
    batch: list[dict[str, Any]] = []
    for row in made:
        batch.append(row)
        if len(batch) == size:
            with engine.begin() as connection:
                insert_all(connection, table, batch)
            batch = []
    if batch:
        with engine.begin() as connection:
            insert_all(connection, table, batch)


def attempt_rows(event_ids: list[str], at: datetime) -> Iterator[dict[str, Any]]:
    """One delivered attempt for each event."""
    for event_id in event_ids:
        yield {"eventId": event_id, "attemptedAt": at, "verdict": "delivered", "statusCode": 200, "latencyMs": 3,
               "snippet": ""}  # fmt: skip
