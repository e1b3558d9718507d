"""What the operator's Usage page reads for a range of days (UTC): credits charged by the day they were
charged and by model, the totals, the top spenders, and credits sold against credits used per day.

The range is a range of transaction ids, found by bisecting the primary key (ids and ``createdAt`` grow
together, ``user_queries.first_transaction_since``): a usage counts on the day its transaction was
written, which is the day the balance moved, whatever the event's own timestamp said. Nothing here
commits."""

from dataclasses import dataclass
from datetime import date, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy import Connection

from creditrelay.billing.user_queries import day_of, first_transaction_since
from creditrelay.schema.money import exact_sum, summed
from creditrelay.schema.tables import credit_transactions, usage_records, users

TOP_SPENDERS = 10
MAX_RANGE_DAYS = 366  # the longest range one page reads


@dataclass(frozen=True, slots=True)
class Spender:
    user_id: int
    email: str
    credits: int


@dataclass(frozen=True, slots=True)
class UsageReport:
    days: list[date]
    by_model: list[tuple[str, int]]  # credits charged, largest first
    by_day_and_model: dict[str, list[int]]  # model (largest first) -> credits on each day
    credits: int  # charged in the range
    tokens: int
    usages: int
    sold: list[int]  # per day: credits added (top-ups, syncs, opening balances: every positive change but usage)
    used: list[int]  # per day: credits charged for usage
    top_spenders: list[Spender]


def _bounds(connection: Connection, start: date, end: date) -> list[sa.ColumnElement[bool]]:
    """The ids of the transactions written from ``start`` to ``end`` (days, both included)."""
    low = first_transaction_since(connection, None, datetime.combine(start, datetime.min.time()))
    if low is None:
        return [sa.false()]
    high = first_transaction_since(connection, None, datetime.combine(end + timedelta(days=1), datetime.min.time()))
    ct = credit_transactions.c
    return [ct.id >= low, *([ct.id < high] if high is not None else [])]


def usage_report(connection: Connection, start: date, end: date) -> UsageReport:
    ct, ur = credit_transactions.c, usage_records.c
    dialect = connection.dialect.name
    days = [start + timedelta(days=i) for i in range((end - start).days + 1)]
    where = _bounds(connection, start, end)
    index = {day: i for i, day in enumerate(days)}
    charged = sa.func.date(ct.createdAt)
    width = 1 if dialect != "sqlite" else 2
    per_model: dict[str, list[int]] = {}
    tokens = usages = 0
    rows = connection.execute(
        sa.select(charged, ur.model, sa.func.count(), *exact_sum(ur.creditCost, dialect, "credits"),
                  *exact_sum(ur.totalTokens, dialect, "tokens"))
        .select_from(credit_transactions.join(usage_records, ur.id == ct.usageRecordId))
        .where(*where)
        .group_by(charged, ur.model)
    ).all()  # fmt: skip
    for day, model, count, *parts in rows:
        if (position := index.get(day_of(day))) is None:
            continue
        per_model.setdefault(str(model), [0] * len(days))[position] += summed(parts[:width])
        tokens += summed(parts[width:])
        usages += int(count)
    sold, used = [0] * len(days), [0] * len(days)
    kind = sa.case((ct.type == "usage", "used"), (ct.amount > 0, "sold"), else_="other")
    for day, what, *parts in connection.execute(
        sa.select(charged, kind, *exact_sum(ct.amount, dialect, "amount")).where(*where).group_by(charged, kind)
    ):
        if (position := index.get(day_of(day))) is not None and what != "other":
            (sold if what == "sold" else used)[position] += abs(summed(parts))
    spent = exact_sum(ur.creditCost, dialect, "spent")  # SQLite's in two halves: ordered by the high one first
    top = connection.execute(
        sa.select(ct.userId, users.c.email, *spent)
        .select_from(
            credit_transactions.join(usage_records, ur.id == ct.usageRecordId).join(users, users.c.id == ct.userId)
        )
        .where(*where)
        .group_by(ct.userId, users.c.email)
        .order_by(*(part.desc() for part in spent), ct.userId)
        .limit(TOP_SPENDERS)
    ).all()
    ordered = sorted(per_model.items(), key=lambda item: (-sum(item[1]), item[0]))
    return UsageReport(
        days,
        [(model, sum(values)) for model, values in ordered],
        dict(ordered),
        sum(used),
        tokens,
        usages,
        sold,
        used,
        [Spender(int(u), str(e), summed(parts)) for u, e, *parts in top],
    )
