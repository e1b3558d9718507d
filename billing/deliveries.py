"""Webhook deliveries: record each event id once in ``webhook_logs`` and bill the usage it carries.

A delivery's fate is decided by constraints: the log row is inserted with ``ON CONFLICT DO NOTHING`` /
``INSERT IGNORE`` in a transient ``received`` state, then read back. A row still ``received`` is this
transaction's own (every committed row has a final state; an insert that meets another transaction's
uncommitted row waits for it, and READ COMMITTED reads then see its commit). A ``failed`` row with the
same body is retried (a key may have been linked since), anything else is a duplicate, or a conflict
when the body differs. Money is guarded one level down: usage goes through ``ledger.apply_usage``, whose
usage key is charged only by the transaction whose insert wrote it.

The read back is deliberately not ``FOR UPDATE``: the insert already holds a shared lock on a duplicate
row, and 40 racing deliveries upgrading it to exclusive deadlock each other.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection

from billing.ledger import Usage, UsageOutcome, UsageStatus, apply_usage, insert_new
from schema.database import utc
from schema.tables import webhook_logs
from schema.wire import Event

RECEIVED, PROCESSED, FAILED, IGNORED = "received", "processed", "failed", "ignored"


class DeliveryStatus(StrEnum):
    CHARGED = "charged"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"
    UNBILLABLE = "unbillable"
    IGNORED = "ignored"


@dataclass(frozen=True)
class DeliveryOutcome:
    event_id: str
    status: DeliveryStatus
    error: str | None = None
    user_id: int | None = None
    balance: int | None = None


def usage_of(event: Event) -> Usage:
    assert event.usage is not None
    data = event.usage
    return Usage(
        usage_key=event.usage_key,
        remote_key_id=str(data.remoteKeyId),
        model=data.model,
        credit_cost=data.creditCost,
        used_at=utc(event.timestamp),
        source="webhook",
        event_id=event.event_id,
        request_id=data.requestId,
        prompt_tokens=data.promptTokens,
        completion_tokens=data.completionTokens,
        total_tokens=data.totalTokens,
    )


def _log_row(event: Event, now: datetime) -> dict[str, Any]:
    return {
        "eventId": event.event_id,
        "eventType": event.event_type,
        "payload": event.payload,
        "payloadHash": event.payload_hash,
        "status": RECEIVED,
        "createdAt": now,
    }


def _claim(connection: Connection, events: Sequence[Event], now: datetime) -> dict[str, tuple[str, str]]:
    """Insert the log rows that are new, then read every row of the batch; eventId -> (hash, status)."""
    insert_new(connection, webhook_logs, [_log_row(e, now) for e in events], "eventId")
    query = sa.select(webhook_logs.c.eventId, webhook_logs.c.payloadHash, webhook_logs.c.status).where(
        webhook_logs.c.eventId.in_([e.event_id for e in events])
    )
    return {event_id: (digest, status) for event_id, digest, status in connection.execute(query)}


def _from_usage(event: Event, outcome: UsageOutcome) -> DeliveryOutcome:
    if outcome.status is UsageStatus.UNKNOWN_KEY:
        assert event.usage is not None
        error = f"unknown remoteKeyId {event.usage.remoteKeyId}: no api_keys row links it to a user"
        return DeliveryOutcome(event.event_id, DeliveryStatus.UNBILLABLE, error)
    status = DeliveryStatus.CHARGED if outcome.status is UsageStatus.CHARGED else DeliveryStatus.DUPLICATE
    return DeliveryOutcome(event.event_id, status, None, outcome.user_id, outcome.balance)


def _finish(connection: Connection, outcomes: Sequence[DeliveryOutcome], now: datetime) -> None:
    if not outcomes:
        return
    final = {DeliveryStatus.UNBILLABLE: FAILED, DeliveryStatus.IGNORED: IGNORED}
    statement = (
        webhook_logs.update()
        .where(webhook_logs.c.eventId == sa.bindparam("event_id"))
        .values(status=sa.bindparam("new_status"), errorMsg=sa.bindparam("error"), processedAt=now)
    )
    rows = [
        {"event_id": o.event_id, "new_status": final.get(o.status, PROCESSED), "error": o.error}
        for o in sorted(outcomes, key=lambda o: o.event_id)
    ]
    connection.execute(statement, rows)


def _repeat(first: DeliveryOutcome, same_body: bool) -> DeliveryOutcome:
    """The outcome of an event id given twice in one batch: the first one's, never charged twice."""
    if not same_body:
        return DeliveryOutcome(first.event_id, DeliveryStatus.CONFLICT, "eventId repeated with another body")
    if first.status is DeliveryStatus.CHARGED:
        return DeliveryOutcome(first.event_id, DeliveryStatus.DUPLICATE, None, first.user_id)
    return first


def record_deliveries(connection: Connection, events: Sequence[Event], now: datetime) -> list[DeliveryOutcome]:
    """Record and bill a batch of delivered events; one outcome per event, in order."""
    first: dict[str, int] = {}
    for index, event in enumerate(events):
        first.setdefault(event.event_id, index)
    unique = sorted((events[i] for i in first.values()), key=lambda e: e.event_id)
    stored = _claim(connection, unique, now) if unique else {}

    verdicts: dict[str, DeliveryOutcome] = {}
    to_bill: list[Event] = []
    settled: list[DeliveryOutcome] = []
    for event in unique:
        digest, status = stored[event.event_id]
        if digest != event.payload_hash:
            verdicts[event.event_id] = DeliveryOutcome(
                event.event_id, DeliveryStatus.CONFLICT, "eventId already received with another body"
            )
        elif status not in (RECEIVED, FAILED):
            verdicts[event.event_id] = DeliveryOutcome(event.event_id, DeliveryStatus.DUPLICATE)
        elif event.usage is None:
            ignored = DeliveryOutcome(event.event_id, DeliveryStatus.IGNORED)
            verdicts[event.event_id] = ignored
            settled.append(ignored)
        else:
            to_bill.append(event)
    for event, outcome in zip(to_bill, apply_usage(connection, [usage_of(e) for e in to_bill], now), strict=True):
        verdicts[event.event_id] = _from_usage(event, outcome)
        settled.append(verdicts[event.event_id])
    _finish(connection, settled, now)

    results = []
    for index, event in enumerate(events):
        verdict = verdicts[event.event_id]
        if first[event.event_id] == index:
            results.append(verdict)
        else:
            results.append(_repeat(verdict, event.payload_hash == events[first[event.event_id]].payload_hash))
    return results
