"""What the operator surface asks of the ledger: find users, read their transactions, read and replay
webhook deliveries, and the figures of the last hour. The admin API (and, later, the admin pages) call
these; nothing here commits."""

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy import Connection

from creditrelay.billing.accounts import User
from creditrelay.billing.deliveries import DeliveryOutcome, record_deliveries
from creditrelay.billing.matching import DEFAULT_TOLERANCE
from creditrelay.billing.reconcile import failed_deliveries
from creditrelay.schema.database import utc
from creditrelay.schema.money import exact_sum, summed
from creditrelay.schema.tables import (
    api_keys,
    credit_transactions,
    poll_state,
    reconcile_runs,
    usage_records,
    users,
    webhook_logs,
)
from creditrelay.schema.wire import EnvelopeError, Event, parse_event, plain_int

STATUSES = ("processed", "failed", "ignored")
MINUTES = 60


@dataclass(frozen=True, slots=True)
class UsageRef:
    event_id: str | None
    request_id: str | None
    model: str | None


@dataclass(frozen=True, slots=True)
class Transaction:
    id: int
    type: str
    amount: int
    balance: int
    reference: str
    reason: str | None
    source: str | None
    created_at: datetime
    usage: UsageRef | None


@dataclass(frozen=True, slots=True)
class UserDetail(User):
    keys: list[str]
    transactions: list[Transaction]


@dataclass(frozen=True, slots=True)
class WebhookLog:
    id: int
    event_id: str
    event_type: str
    status: str
    error_msg: str | None
    payload: str
    created_at: datetime
    processed_at: datetime | None


@dataclass(frozen=True, slots=True)
class LastHour:
    since: datetime
    per_minute: list[int]
    by_minute: dict[str, list[int]]
    by_status: dict[str, int]


@dataclass(frozen=True, slots=True)
class ReconcileRun:
    at: datetime
    discrepancies: int
    fixed: int


@dataclass(frozen=True, slots=True)
class Stats:
    last_hour: LastHour
    failed_total: int
    poll_lag_seconds: int | None
    last_reconcile: ReconcileRun | None


def search_users(connection: Connection, query: str, limit: int = 20) -> list[User]:
    """Users whose email contains ``query``, or whose Telegram id or gateway key is ``query``."""
    text = query.strip()
    conditions = [users.c.email.contains(text.lower(), autoescape=True)]
    if (telegram_id := plain_int(text)) is not None:
        conditions.append(users.c.telegramId == telegram_id)
    keyed = sa.select(api_keys.c.userId).where(api_keys.c.remoteKeyId == text)
    conditions.append(users.c.id.in_(keyed))
    rows = connection.execute(sa.select(users).where(sa.or_(*conditions)).order_by(users.c.id).limit(limit))
    return [User.of(row) for row in rows]


def by_balance(connection: Connection, limit: int = 200, below: int | None = None) -> list[User]:
    """Users lowest balance first (who needs a look), only those under ``below`` if given."""
    query = sa.select(users).order_by(users.c.balance, users.c.id).limit(limit)
    if below is not None:
        query = query.where(users.c.balance < below)
    return [User.of(row) for row in connection.execute(query)]


def user_detail(connection: Connection, user_id: int, limit: int = 50, before: int | None = None) -> UserDetail | None:
    """A user, their gateway keys, and their transactions newest first with the usage behind each."""
    row = connection.execute(sa.select(users).where(users.c.id == user_id)).one_or_none()
    if row is None:
        return None
    keys = list(connection.scalars(sa.select(api_keys.c.remoteKeyId).where(api_keys.c.userId == user_id)))
    query = (
        sa.select(credit_transactions, usage_records.c.eventId, usage_records.c.requestId, usage_records.c.model)
        .outerjoin(usage_records, usage_records.c.id == credit_transactions.c.usageRecordId)
        .where(credit_transactions.c.userId == user_id)
        .order_by(credit_transactions.c.id.desc())
        .limit(limit)
    )
    if before is not None:
        query = query.where(credit_transactions.c.id < before)
    transactions = [
        Transaction(
            t.id, t.type, t.amount, t.balance, t.reference, t.reason, t.source, t.createdAt,
            None if t.usageRecordId is None else UsageRef(t.eventId, t.requestId, t.model),
        )
        for t in connection.execute(query)
    ]  # fmt: skip
    user = User.of(row)
    return UserDetail(
        user.id, user.email, user.name, user.telegram_id, user.balance, user.created_at, keys, transactions
    )


def list_webhook_logs(
    connection: Connection,
    *,
    status: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 50,
    before: int | None = None,
) -> list[WebhookLog]:
    """Deliveries newest first, filtered; page with ``before`` (the smallest id of the previous page)."""
    query = sa.select(webhook_logs).order_by(webhook_logs.c.id.desc()).limit(limit)
    if status is not None:
        query = query.where(webhook_logs.c.status == status)
    if since is not None:
        query = query.where(webhook_logs.c.createdAt >= since)
    if until is not None:
        query = query.where(webhook_logs.c.createdAt <= until)
    if before is not None:
        query = query.where(webhook_logs.c.id < before)
    return [
        WebhookLog(r.id, r.eventId, r.eventType, r.status, r.errorMsg, r.payload, r.createdAt, r.processedAt)
        for r in connection.execute(query)
    ]


@dataclass(frozen=True, slots=True)
class LogUsage:
    """What a delivery's payload says it charges: key, model and cost (empty when it is no usage), and the
    user that key bills now (empty when nobody)."""

    key: str = ""
    user: str = ""
    model: str = ""
    cost: str = ""


def log_usages(connection: Connection, logs: Sequence[WebhookLog]) -> dict[int, LogUsage]:
    """Each delivery's usage, by log id; one query for the users of all their keys."""
    found: dict[int, tuple[str, str, str]] = {}
    for log in logs:
        try:
            data = json.loads(log.payload).get("data") or {}
            found[log.id] = (
                str(data.get("remoteKeyId", "")),
                str(data.get("model", "")),
                str(data.get("creditCost", "")),
            )
        except (ValueError, AttributeError):
            continue
    keys = sorted({key for key, _, _ in found.values()} - {""})
    emails: dict[str, str] = {}
    if keys:
        query = (
            sa.select(api_keys.c.remoteKeyId, users.c.email)
            .join(users, users.c.id == api_keys.c.userId)
            .where(api_keys.c.remoteKeyId.in_(keys))
        )
        emails = {str(key): str(email) for key, email in connection.execute(query)}
    return {log_id: LogUsage(key, emails.get(key, ""), model, cost) for log_id, (key, model, cost) in found.items()}


def failed_of_key(connection: Connection, remote_key_id: str, limit: int = 500) -> list[Event]:
    """Up to ``limit`` failed usage deliveries of one gateway key, oldest first (read along the
    ``(status, createdAt)`` index; the key is in each payload)."""
    found: list[Event] = []
    after = None
    while len(found) < limit and (rows := failed_deliveries(connection, after)):
        for row in rows:
            try:
                event = parse_event(row.payload.encode())
            except EnvelopeError:
                continue
            if event.usage is not None and str(event.usage.remoteKeyId) == remote_key_id:
                found.append(event)
        after = (rows[-1].createdAt, rows[-1].id)
    return found[:limit]


def replay_key(
    connection: Connection, remote_key_id: str, now: datetime, tolerance: float = DEFAULT_TOLERANCE
) -> dict[str, int]:
    """Run the failed deliveries of one gateway key through billing again (after it was linked): how
    many ended how (``charged``, ``duplicate``, ``unbillable`` …)."""
    events = failed_of_key(connection, remote_key_id)
    outcomes = record_deliveries(connection, events, now, tolerance=tolerance) if events else []
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.status.value] = counts.get(outcome.status.value, 0) + 1
    return counts


def replay(
    connection: Connection, event_id: str, now: datetime, tolerance: float = DEFAULT_TOLERANCE
) -> DeliveryOutcome | None:
    """Run a stored delivery through billing again (a failed one is charged if its key is linked now)."""
    payload = connection.execute(sa.select(webhook_logs.c.payload).where(webhook_logs.c.eventId == event_id)).scalar()
    if payload is None:
        return None
    try:
        event = parse_event(payload.encode())
    except EnvelopeError:
        return None
    [outcome] = record_deliveries(connection, [event], now, tolerance=tolerance)
    return outcome


def stats(connection: Connection, now: datetime) -> Stats:
    """Deliveries per clock minute over the last hour (the current minute last), counts by status, polling
    lag, the last reconcile.

    One statement counts each (status, minute) as a range of the ``(status, createdAt)`` index: the
    database walks the hour's index entries once, with no grouping sort and no function per row, and the
    answer is 180 numbers however many rows the hour holds.
    """
    start = now.replace(second=0, microsecond=0) - timedelta(minutes=MINUTES - 1)
    edges = [start + timedelta(minutes=i) for i in range(MINUTES + 1)]
    logs = webhook_logs.c
    counts = connection.execute(
        sa.select(
            *(
                sa.select(sa.func.count())
                .where(logs.status == status, logs.createdAt >= edges[i], logs.createdAt < edges[i + 1])
                .scalar_subquery()
                for status in STATUSES
                for i in range(MINUTES)
            )
        )
    ).one()
    by_minute = {status: [int(n) for n in counts[k * MINUTES : (k + 1) * MINUTES]] for k, status in enumerate(STATUSES)}
    failed = connection.execute(sa.select(sa.func.count()).where(webhook_logs.c.status == "failed")).scalar()
    watermark = connection.execute(sa.select(sa.func.max(poll_state.c.watermark))).scalar()
    last = connection.execute(sa.select(reconcile_runs).order_by(reconcile_runs.c.id.desc()).limit(1)).one_or_none()
    return Stats(
        LastHour(
            start,
            [sum(counts) for counts in zip(*by_minute.values(), strict=True)],
            by_minute,
            {status: sum(counts) for status, counts in by_minute.items()},
        ),
        int(failed or 0),
        None if watermark is None else max(0, int((now - utc(watermark)).total_seconds())),
        None if last is None else ReconcileRun(last.startedAt, last.discrepancies, last.fixed),
    )


def usage_by_model(connection: Connection, since: datetime) -> list[tuple[str, int]]:
    """Credits charged per model since ``since``, largest first."""
    total = exact_sum(usage_records.c.creditCost, connection.dialect.name, "credits")
    rows = connection.execute(
        sa.select(usage_records.c.model, *total).where(usage_records.c.usedAt >= since).group_by(usage_records.c.model)
    )
    return sorted(((model, summed(parts)) for model, *parts in rows), key=lambda pair: -pair[1])


def usage_by_day(connection: Connection, since: datetime) -> list[tuple[str, int]]:
    """Credits charged per day (UTC) since ``since``, oldest first."""
    day = sa.func.date(usage_records.c.usedAt)
    total = exact_sum(usage_records.c.creditCost, connection.dialect.name, "credits")
    rows = connection.execute(sa.select(day, *total).where(usage_records.c.usedAt >= since).group_by(day).order_by(day))
    return [(str(d), summed(parts)) for d, *parts in rows]
