"""Outboxes of any size, written fast: rows as the relay leaves them, inserted in multi-row Core statements
rather than through the relay; and the small batches of events the outbox tests enqueue."""

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Engine

from creditrelay.schema.statements import insert_all
from creditrelay.sender.events import encode_event, usage_event
from creditrelay.sender.outbox import DELIVERED

T0 = datetime(2026, 5, 1, 12, 0, 0)
LEASE = timedelta(seconds=60)


def events(count: int, start: int = 0) -> list[tuple[str, bytes]]:
    """``count`` usage events (id, body) with ids ``e000``, ``e001``, … from ``start``."""
    made = [
        usage_event(remote_key_id=1, model="m", credit_cost=1, event_id=f"e{i:03}") for i in range(start, start + count)
    ]
    return [(e["eventId"], encode_event(e)) for e in made]


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
