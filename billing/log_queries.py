"""What the operator's webhook logs read: deliveries filtered by status, time, gateway key, user or event
id, a keyset page at a time in either direction, each row with the key, user, model and cost its usage
carries; and the failed ones of a filter, run through billing again.

Each filter reads a range of an index, so a page costs the same at the millionth row as at the first:

- by key or by user (the keys that bill them now): for each key and status, the newest rows of
  ``(remoteKeyId, status, id)``, merged; rows in id order;
- by status, by time, or both: ``(status, createdAt)`` or ``(createdAt)``, rows in arrival order
  (``createdAt``, then id);
- unfiltered: the primary key; by event id: its unique index.

A page is named by the id of the row it continues from (``before`` for older rows, ``after`` for newer),
as the admin API's ``before`` always was.
"""

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection, Engine

from creditrelay.billing.deliveries import charged_credits, record_deliveries
from creditrelay.schema.errors import InvalidInput
from creditrelay.schema.tables import api_keys, users, webhook_logs
from creditrelay.schema.transactions import run_transaction
from creditrelay.schema.wire import EnvelopeError, Event, parse_event

STATUSES = ("processed", "failed", "ignored")
MERGED_RANGES = 150  # keys x statuses merged range by range; past it, one query the database plans itself


@dataclass(frozen=True, slots=True)
class LogFilter:
    status: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    key: str | None = None  # a gateway key
    user_id: int | None = None  # the keys that bill this user now
    event_id: str | None = None

    @property
    def keyed(self) -> bool:
        return self.key is not None or self.user_id is not None


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
    remote_key_id: str | None = None


@dataclass(frozen=True, slots=True)
class LogPage:
    logs: list[WebhookLog]
    older: int | None = None  # ``before`` for the page of older rows, None when this page holds the first
    newer: int | None = None  # ``after`` for the page of newer rows, None when this page holds the newest


def _keys(connection: Connection, wanted: LogFilter) -> list[str]:
    query = sa.select(api_keys.c.remoteKeyId).order_by(api_keys.c.remoteKeyId)
    if wanted.user_id is not None:
        query = query.where(api_keys.c.userId == wanted.user_id)
    if wanted.key is not None:
        query = query.where(api_keys.c.remoteKeyId == wanted.key)
        if wanted.user_id is None:  # a key nobody has still has deliveries (failed ones)
            return [wanted.key]
    return [str(key) for key in connection.scalars(query)]


def _times(wanted: LogFilter) -> list[sa.ColumnElement[bool]]:
    logs = webhook_logs.c
    return [
        *([logs.createdAt >= wanted.since] if wanted.since is not None else []),
        *([logs.createdAt <= wanted.until] if wanted.until is not None else []),
    ]


def _keyed_ids(
    connection: Connection, wanted: LogFilter, keys: Sequence[str], limit: int, before: int | None, after: int | None
) -> list[int]:
    """Ids of the rows of ``keys``, newest first (oldest first with ``after``): each (key, status) range of
    the index read for its first ``limit`` rows, then merged (one statement)."""
    logs = webhook_logs.c
    statuses = [wanted.status] if wanted.status else list(STATUSES)
    bound = [logs.id < before] if before is not None else [logs.id > after] if after is not None else []
    order = logs.id.asc() if after is not None else logs.id.desc()
    if not keys:
        return []
    if len(keys) * len(statuses) > MERGED_RANGES:
        query = sa.select(logs.id).where(logs.remoteKeyId.in_(keys), logs.status.in_(statuses), *_times(wanted), *bound)
        return [int(i) for i in connection.scalars(query.order_by(order).limit(limit))]
    ranges = [
        sa.select(logs.id)
        .where(logs.remoteKeyId == key, logs.status == status, *_times(wanted), *bound)
        .order_by(order)
        .limit(limit)
        .subquery()
        .select()  # a subquery each, so that every database takes its ORDER BY and LIMIT
        for key in keys
        for status in statuses
    ]
    merged = sa.union_all(*ranges).subquery()
    ids = connection.scalars(
        sa.select(merged.c.id).order_by(merged.c.id.asc() if after is not None else merged.c.id.desc())
    )
    return [int(i) for i in list(ids)[:limit]]


def _timed_ids(
    connection: Connection, wanted: LogFilter, limit: int, before: int | None, after: int | None
) -> list[int]:
    """Ids in arrival order (``createdAt``, then id) — or, with no status or time to filter on, in id
    order (the primary key's) — newest first, or oldest first with ``after``."""
    logs = webhook_logs.c
    query = sa.select(logs.id).where(*_times(wanted), *([logs.status == wanted.status] if wanted.status else []))
    ascending = after is not None
    if wanted.status is None and wanted.since is None and wanted.until is None:
        bound = [logs.id < before] if before is not None else [logs.id > after] if after is not None else []
        order = [logs.id.asc() if ascending else logs.id.desc()]
        return [int(i) for i in connection.scalars(query.where(*bound).order_by(*order).limit(limit))]
    cursor = before if before is not None else (after or None)  # after=0: from the first arrival, no bound
    if cursor is not None:
        # where the row the page continues from arrived (if cleanup deleted it, its neighbour on that side)
        near = sa.select(logs.createdAt).where(logs.id >= cursor if ascending else logs.id <= cursor)
        at = connection.execute(near.order_by(logs.id.asc() if ascending else logs.id.desc()).limit(1)).scalar()
        if at is None:
            return []
        position = sa.tuple_(logs.createdAt, logs.id)
        if ascending:  # the plain bound lets the database start its index range there
            query = query.where(logs.createdAt >= at, position > sa.tuple_(at, cursor))
        else:
            query = query.where(logs.createdAt <= at, position < sa.tuple_(at, cursor))
    order = [logs.createdAt.asc(), logs.id.asc()] if ascending else [logs.createdAt.desc(), logs.id.desc()]
    return [int(i) for i in connection.scalars(query.order_by(*order).limit(limit))]


def _event_ids(connection: Connection, wanted: LogFilter) -> list[int]:
    """The delivery of ``wanted.event_id`` (its unique index), if the other filters let it through."""
    logs = webhook_logs.c
    query = sa.select(logs.id).where(logs.eventId == wanted.event_id, *_times(wanted))
    if wanted.status is not None:
        query = query.where(logs.status == wanted.status)
    if wanted.keyed:
        query = query.where(logs.remoteKeyId.in_(_keys(connection, wanted)))
    return [int(i) for i in connection.scalars(query)]


def find_logs(
    connection: Connection, wanted: LogFilter, limit: int = 50, *, before: int | None = None, after: int | None = None
) -> LogPage:
    """A page of the deliveries ``wanted`` asks for, newest first: the first page, the one older than the
    row ``before``, or the one newer than the row ``after`` (``after=0``: the oldest page)."""
    if wanted.status is not None and wanted.status not in STATUSES:
        raise InvalidInput(f"status: one of {', '.join(STATUSES)}")
    if before is not None and after is not None:
        raise InvalidInput("before, after: a page continues one way, older or newer (give one of them)")
    if wanted.event_id is not None:  # at most one row: the cursors only say whether it is on that side
        ids = [
            i for i in _event_ids(connection, wanted) if (before is None or i < before) and (after is None or i > after)
        ]
    elif wanted.keyed:
        ids = _keyed_ids(connection, wanted, _keys(connection, wanted), limit + 1, before, after)
    else:
        ids = _timed_ids(connection, wanted, limit + 1, before, after)
    more = len(ids) > limit
    ids = ids[:limit]
    rows = {r.id: r for r in connection.execute(sa.select(webhook_logs).where(webhook_logs.c.id.in_(ids)))}
    logs = [_log(rows[i]) for i in ids if i in rows]
    if after is not None:  # read oldest first: shown newest first, and older rows exist (the cursor's)
        logs.reverse()
        return LogPage(logs, logs[-1].id if logs and after else None, logs[0].id if logs and more else None)
    return LogPage(logs, logs[-1].id if logs and more else None, logs[0].id if logs and before is not None else None)


def _log(r: Any) -> WebhookLog:
    return WebhookLog(
        r.id, r.eventId, r.eventType, r.status, r.errorMsg, r.payload, r.createdAt, r.processedAt, r.remoteKeyId
    )


def failed_count(connection: Connection) -> int:
    """Deliveries waiting to be replayed: a range of the ``(status, createdAt)`` index."""
    query = sa.select(sa.func.count()).where(webhook_logs.c.status == "failed")
    return int(connection.execute(query).scalar() or 0)


@dataclass(frozen=True, slots=True)
class LogUsage:
    """What a delivery's payload says it charges: key, model and cost (empty when it is no usage), and the
    user that key bills now (empty when nobody)."""

    key: str = ""
    user: str = ""
    user_id: int | None = None
    model: str = ""
    cost: str = ""


def log_usages(connection: Connection, logs: Sequence[WebhookLog]) -> dict[int, LogUsage]:
    """Each delivery's usage, by log id; one query for the users of all their keys."""
    found: dict[int, tuple[str, str, str]] = {}
    for log in logs:
        try:
            data = json.loads(log.payload).get("data") or {}
            key = log.remote_key_id if log.remote_key_id is not None else str(data.get("remoteKeyId", ""))
            found[log.id] = (key, str(data.get("model", "")), str(data.get("creditCost", "")))
        except (ValueError, AttributeError):
            continue
    keys = sorted({key for key, _, _ in found.values()} - {""})
    owners: dict[str, tuple[int, str]] = {}
    if keys:
        query = (
            sa.select(api_keys.c.remoteKeyId, users.c.id, users.c.email)
            .join(users, users.c.id == api_keys.c.userId)
            .where(api_keys.c.remoteKeyId.in_(keys))
        )
        owners = {str(key): (int(user_id), str(email)) for key, user_id, email in connection.execute(query)}
    return {
        log_id: LogUsage(key, owners.get(key, (0, ""))[1], owners.get(key, (None, ""))[0], model, cost)
        for log_id, (key, model, cost) in found.items()
    }


def failed_chunk(
    connection: Connection, wanted: LogFilter, limit: int, after: int = 0
) -> tuple[list[Event], int | None]:
    """Up to ``limit`` failed deliveries ``wanted`` selects, oldest first from the row after ``after``,
    parsed (a stored payload that no longer parses is left out); and the ``after`` of the next chunk, None
    when this one holds the newest."""
    page = find_logs(connection, replace(wanted, status="failed"), limit, after=after)
    events = []
    for log in reversed(page.logs):
        try:
            events.append(parse_event(log.payload.encode()))
        except EnvelopeError:
            continue
    return events, page.logs[0].id if page.newer is not None else None


@dataclass
class ReplayReport:
    """How the failed deliveries of a filter ended when run again (``charged``, ``duplicate``,
    ``unbillable`` …), and whether newer ones were left for another run (``limit`` reached)."""

    outcomes: Counter[str] = field(default_factory=Counter)
    credits: int = 0  # what they charged
    more: bool = False

    @property
    def replayed(self) -> int:
        return sum(self.outcomes.values())


CHUNK = 500


def replay_failed(
    engine: Engine | Connection,
    wanted: LogFilter,
    now: datetime,
    *,
    limit: int = 5000,
) -> ReplayReport:
    """Run the failed deliveries ``wanted`` selects through billing again, oldest first, ``CHUNK`` per
    transaction (so a long replay never holds the writers up for long), at most ``limit`` in all."""
    report = ReplayReport()
    after: int | None = 0
    while after is not None and report.replayed < limit:
        size = min(CHUNK, limit - report.replayed)

        def chunk(connection: Connection, after: int = after, size: int = size) -> tuple[list[str], int, int | None]:
            events, following = failed_chunk(connection, wanted, size, after)
            outcomes = record_deliveries(connection, events, now) if events else []
            return [o.status.value for o in outcomes], charged_credits(events, outcomes), following

        statuses, credits, after = run_transaction(engine, chunk)
        report.outcomes.update(statuses)
        report.credits += credits
    report.more = after is not None
    return report
