"""What the operator's overview asks of the ledger: the figures of the last hour (the usage page's are in
``usage_report``); and the admin API's user search and detail, and single replays. The users list and
webhook logs live in ``user_queries`` and ``log_queries``. Nothing here commits."""

from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy import Connection

from creditrelay.billing import user_queries
from creditrelay.billing.accounts import User
from creditrelay.billing.deliveries import DeliveryOutcome, charged_credits, record_deliveries
from creditrelay.billing.log_queries import STATUSES
from creditrelay.billing.user_queries import Transaction
from creditrelay.schema.database import utc
from creditrelay.schema.tables import (
    poll_state,
    reconcile_runs,
    webhook_logs,
)
from creditrelay.schema.wire import EnvelopeError, parse_event

MINUTES = 60
__all__ = ["STATUSES"]


@dataclass(frozen=True, slots=True)
class UserDetail(User):
    keys: list[str]
    transactions: list[Transaction]


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
    """Users whose email or name contains ``query``, or whose Telegram id or gateway key is ``query``."""
    return user_queries.users_page(connection, user_queries.UserQuery(sort="oldest", text=query), limit).users


def user_detail(connection: Connection, user_id: int, limit: int = 50, before: int | None = None) -> UserDetail | None:
    """A user, their gateway keys, and their transactions newest first with the usage behind each."""
    found = user_queries.user_detail(connection, user_id)
    if found is None:
        return None
    page = user_queries.transactions(connection, user_id, limit, before)
    keys = [link.remote_key_id for link in found.keys]
    return UserDetail(
        found.id,
        found.email,
        found.name,
        found.telegram_id,
        found.balance,
        found.created_at,
        found.gateway_user_id,
        keys,
        page.transactions,
    )


@dataclass(frozen=True, slots=True)
class Replayed:
    outcome: DeliveryOutcome
    credits: int  # what it charged (0 unless charged now)


def replay(connection: Connection, event_id: str, now: datetime) -> Replayed | None:
    """Run a stored delivery through billing again (a failed one is charged if its key is linked now)."""
    payload = connection.execute(sa.select(webhook_logs.c.payload).where(webhook_logs.c.eventId == event_id)).scalar()
    if payload is None:
        return None
    try:
        event = parse_event(payload.encode())
    except EnvelopeError:
        return None
    [outcome] = record_deliveries(connection, [event], now)
    return Replayed(outcome, charged_credits([event], [outcome]))


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
