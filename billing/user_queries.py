"""What the operator's users list and user page read: users sorted, filtered and searched, a page at a
time; a user's keys and transactions back to the first; and their last weeks — the balance at each day's
end and the credits charged by day and model.

Every list is a keyset page: a cursor names the last row shown (its sort value and id), so the next page
starts where that one ended. A user's transactions are a range of the ``(userId, id)`` index. The users
table is read whole for a page sorted by balance (it holds one row per user, and an index by balance
would cost every charge: docs/decisions/0023). Nothing here commits.
"""

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection

from creditrelay.billing.accounts import KeyLink, User, list_keys
from creditrelay.schema.errors import InvalidInput
from creditrelay.schema.money import exact_sum, summed
from creditrelay.schema.tables import api_keys, credit_transactions, usage_records, users
from creditrelay.schema.wire import plain_int

# sort name -> (column, descending); the id breaks ties in the same direction
SORTS: dict[str, tuple[sa.Column[Any], bool]] = {
    "balance": (users.c.balance, False),  # lowest first: who needs a look
    "-balance": (users.c.balance, True),
    "email": (users.c.email, False),
    "newest": (users.c.id, True),
    "oldest": (users.c.id, False),
}


@dataclass(frozen=True, slots=True)
class UserQuery:
    sort: str = "balance"
    text: str = ""  # email or name containing it, or the Telegram id or gateway key it is
    below: int | None = None  # only balances under this


@dataclass(frozen=True, slots=True)
class UserPage:
    users: list[User]
    total: int  # users matching the query, on every page
    next: str | None  # the cursor of the next page, None on the last


def _cursor(user: User, sort: str) -> str:
    value = {"balance": user.balance, "-balance": user.balance, "email": user.email}.get(sort, user.id)
    return f"{user.id}:{value}"


def _after(cursor: str, sort: str) -> tuple[int, Any]:
    """The id and sort value a cursor names; a cursor that is not one is a 400 naming it."""
    head, _, value = cursor.partition(":")
    user_id = plain_int(head)
    number = plain_int(value.removeprefix("-"))
    if sort == "email" and user_id is not None and value:
        return user_id, value
    if user_id is not None and number is not None:
        return user_id, -number if value.startswith("-") else number
    raise InvalidInput("after: the cursor of a page of this list (follow the list's own links)")


def _matching(query: UserQuery) -> list[sa.ColumnElement[bool]]:
    conditions: list[sa.ColumnElement[bool]] = []
    if query.below is not None:
        conditions.append(users.c.balance < query.below)
    text = query.text.strip()
    if text:
        found = [
            users.c.email.contains(text.lower(), autoescape=True),
            sa.func.lower(users.c.name).contains(text.lower(), autoescape=True),
            users.c.id.in_(sa.select(api_keys.c.userId).where(api_keys.c.remoteKeyId == text)),
        ]
        if (telegram_id := plain_int(text)) is not None:
            found.append(users.c.telegramId == telegram_id)
        conditions.append(sa.or_(*found))
    return conditions


def users_page(connection: Connection, query: UserQuery, limit: int = 50, after: str | None = None) -> UserPage:
    """One page of the users ``query`` asks for, in its order, after the row ``after`` names."""
    if query.sort not in SORTS:
        raise InvalidInput(f"sort: one of {', '.join(SORTS)}")
    column, descending = SORTS[query.sort]
    conditions = _matching(query)
    total = int(connection.execute(sa.select(sa.func.count()).select_from(users).where(*conditions)).scalar() or 0)
    order = [column.desc(), users.c.id.desc()] if descending else [column.asc(), users.c.id.asc()]
    select = sa.select(users).where(*conditions).order_by(*order).limit(limit + 1)
    if after is not None:
        user_id, value = _after(after, query.sort)
        if column is users.c.id:
            select = select.where(users.c.id < user_id if descending else users.c.id > user_id)
        elif descending:  # the plain bound lets the database start its index range there
            select = select.where(column <= value, sa.tuple_(column, users.c.id) < sa.tuple_(value, user_id))
        else:
            select = select.where(column >= value, sa.tuple_(column, users.c.id) > sa.tuple_(value, user_id))
    rows = [User.of(row) for row in connection.execute(select)]
    more = len(rows) > limit
    shown = rows[:limit]
    return UserPage(shown, total, _cursor(shown[-1], query.sort) if more else None)


def count_below(connection: Connection, below: int) -> int:
    """Users whose balance is under ``below`` (a read of the users table)."""
    return int(connection.execute(sa.select(sa.func.count()).where(users.c.balance < below)).scalar() or 0)


@dataclass(frozen=True, slots=True)
class UserDetail(User):
    keys: list[KeyLink]


def user_detail(connection: Connection, user_id: int) -> UserDetail | None:
    """A user and the gateway keys that bill them."""
    row = connection.execute(sa.select(users).where(users.c.id == user_id)).one_or_none()
    if row is None:
        return None
    user = User.of(row)
    keys = list_keys(connection, user_id=user_id)
    return UserDetail(
        user.id, user.email, user.name, user.telegram_id, user.balance, user.created_at, user.gateway_user_id, keys
    )


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
class TransactionPage:
    transactions: list[Transaction]
    older: int | None  # ``before`` for the next (older) page, None on the page holding the first


def transactions(connection: Connection, user_id: int, limit: int = 50, before: int | None = None) -> TransactionPage:
    """A user's transactions newest first, with the usage behind each, older than the id ``before``."""
    ct = credit_transactions.c
    query = (
        sa.select(credit_transactions, usage_records.c.eventId, usage_records.c.requestId, usage_records.c.model)
        .outerjoin(usage_records, usage_records.c.id == ct.usageRecordId)
        .where(ct.userId == user_id)
        .order_by(ct.id.desc())
        .limit(limit + 1)
    )
    if before is not None:
        query = query.where(ct.id < before)
    found = [
        Transaction(
            t.id, t.type, t.amount, t.balance, t.reference, t.reason, t.source, t.createdAt,
            None if t.usageRecordId is None else UsageRef(t.eventId, t.requestId, t.model),
        )
        for t in connection.execute(query)
    ]  # fmt: skip
    more = len(found) > limit
    return TransactionPage(found[:limit], found[limit - 1].id if more else None)


def first_transaction_since(connection: Connection, user_id: int | None, since: datetime) -> int | None:
    """The id of the user's first transaction at or after ``since`` (None if none is), by bisecting the ids
    along the ``(userId, id)`` index: a few dozen index lookups however long the user's history. With no
    user, the first of anyone's, along the primary key.

    Ids and ``createdAt`` grow together (each is the inserting transaction's), so once one transaction
    is at or after ``since`` every later one is too.
    """
    ct = credit_transactions.c
    whose = [] if user_id is None else [ct.userId == user_id]

    def first_from(low: int) -> Any:
        query = sa.select(ct.id, ct.createdAt).where(*whose, ct.id >= low)
        if user_id is None:
            return connection.execute(query.order_by(ct.id).limit(1)).one_or_none()
        # MariaDB would read the user's entries from their first (a "ref" on userId, the id checked on each)
        query = query.order_by(ct.userId, ct.id)
        query = query.with_hint(credit_transactions, "FORCE INDEX (ix_credit_transactions_userId_id)", "mysql")
        return connection.execute(query.limit(1)).one_or_none()

    newest = connection.execute(
        sa.select(ct.id, ct.createdAt).where(*whose).order_by(ct.id.desc()).limit(1)
    ).one_or_none()
    if newest is None or newest.createdAt < since:
        return None
    # every transaction with id <= low is before since; the first with id >= high is at or after it
    low, high = 0, int(newest.id)
    while high - low > 1:
        middle = (low + high) // 2
        row = first_from(middle)  # exists: the one at ``high`` qualifies
        if row.createdAt >= since:
            high = middle
        else:
            low = int(row.id)
    return int(first_from(high).id)


@dataclass(frozen=True, slots=True)
class Activity:
    """A user's days from ``days[0]`` to today (UTC): the balance at each day's end, and the credits of
    the usages charged on each day, by model (models by their total, largest first)."""

    days: list[date]
    balances: list[int]
    by_model: dict[str, list[int]]


def activity(connection: Connection, user_id: int, now: datetime, days: int = 30) -> Activity:
    """The user's last ``days`` days, read from their own transactions since then (found by bisection)."""
    first_day = (now - timedelta(days=days - 1)).date()
    since = datetime.combine(first_day, datetime.min.time())
    span = [first_day + timedelta(days=i) for i in range(days)]
    ct, ur = credit_transactions.c, usage_records.c
    floor = first_transaction_since(connection, user_id, since)
    before = connection.execute(
        sa.select(ct.balance)
        .where(ct.userId == user_id, *([ct.id < floor] if floor is not None else []))
        .order_by(ct.id.desc())
        .limit(1)
    ).scalar()
    opening = int(before or 0)
    if floor is None:
        return Activity(span, [opening] * days, {})
    # one pass over the window's transactions: the last of each day (for its balance), and the usage
    # behind them by the day it was charged (the balance moved that day, whatever the event's own
    # timestamp said) and model
    day = sa.func.date(ct.createdAt)
    rows = connection.execute(
        sa.select(day, sa.func.max(ct.id), ur.model, *exact_sum(ur.creditCost, connection.dialect.name, "credits"))
        .select_from(credit_transactions.outerjoin(usage_records, ur.id == ct.usageRecordId))
        .where(ct.userId == user_id, ct.id >= floor)
        .group_by(day, ur.model)
    ).all()
    last_of_day: dict[date, int] = {}
    index = {moment: i for i, moment in enumerate(span)}
    by_model: dict[str, list[int]] = {}
    for charged, last, model, *parts in rows:
        last_of_day[day_of(charged)] = max(int(last), last_of_day.get(day_of(charged), 0))
        if model is not None and (position := index.get(day_of(charged))) is not None:
            by_model.setdefault(str(model), [0] * days)[position] += summed(parts)
    balance_at = {
        day_of(created): int(balance)
        for created, balance in connection.execute(
            sa.select(ct.createdAt, ct.balance).where(ct.id.in_(list(last_of_day.values())))
        )
    }
    balances, running = [], opening
    for moment in span:
        running = balance_at.get(moment, running)
        balances.append(running)
    ordered = sorted(by_model.items(), key=lambda item: (-sum(item[1]), item[0]))
    return Activity(span, balances, dict(ordered))


def day_of(value: Any) -> date:
    """A day as each database returns it (a date, a datetime, or ISO text)."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])
