"""Monthly statements (docs/portal.md): for one member, the opening balance, every transaction of the
month (UTC) and the closing balance; for everyone, one row per user with the month's totals.

A month is a range of transaction ids: from the first transaction at or after its first instant to the
first at or after the next month's, found by bisecting the primary key (ids and ``createdAt`` grow
together). So a member's statement and the summary put every transaction in the same month, the months
follow each other with nothing between, and — each row's ``balance`` being the balance after it —
opening + Σ amounts = closing = the ledger's balance at the month's end, always.

Lines are read in keyset chunks along the ``(userId, id)`` index, users a chunk at a time: a month of a
million transactions streams in the memory of one chunk. Nothing here commits.
"""

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime

import sqlalchemy as sa
from sqlalchemy import Connection

from creditrelay.billing.user_queries import first_transaction_since
from creditrelay.schema.errors import InvalidInput
from creditrelay.schema.money import exact_sum, summed
from creditrelay.schema.tables import credit_transactions, usage_records, users

CHUNK = 2000  # transactions read at a time
USERS_CHUNK = 500  # users summed at a time
_MONTH = re.compile(r"([0-9]{4})-(0[1-9]|1[0-2])")


@dataclass(frozen=True, slots=True)
class Month:
    """A calendar month (UTC) and the ids of its transactions: ``low`` <= id < ``high`` (None: no bound)."""

    name: str  # YYYY-MM
    start: datetime
    end: datetime
    low: int | None  # the first transaction at or after start; None: none is (the month holds nothing)
    high: int | None  # the first at or after end; None: none is yet


def parse_month(text: str) -> tuple[datetime, datetime]:
    """``YYYY-MM`` as the month's first instant and the next month's; a 400 naming ``month`` otherwise."""
    found = _MONTH.fullmatch(text.strip())
    if found is None or not 1970 <= int(found[1]) <= 9998:
        raise InvalidInput("month: a month as YYYY-MM, e.g. 2026-11")
    year, month = int(found[1]), int(found[2])
    start = datetime(year, month, 1)
    return start, datetime(year + month // 12, month % 12 + 1, 1)


def month_of(connection: Connection, text: str) -> Month:
    start, end = parse_month(text)
    low = first_transaction_since(connection, None, start)
    high = None if low is None else first_transaction_since(connection, None, end)
    return Month(text.strip(), start, end, low, high)


def _in_month(month: Month) -> list[sa.ColumnElement[bool]]:
    ct = credit_transactions.c
    if month.low is None:
        return [sa.false()]
    return [ct.id >= month.low, *([ct.id < month.high] if month.high is not None else [])]


def balance_before(connection: Connection, user_id: int, before: int | None) -> int:
    """The user's balance after their last transaction with an id under ``before`` (None: their last)."""
    ct = credit_transactions.c
    query = sa.select(ct.balance).where(ct.userId == user_id, *([ct.id < before] if before is not None else []))
    return int(connection.execute(query.order_by(ct.id.desc()).limit(1)).scalar() or 0)


@dataclass(frozen=True, slots=True)
class Line:
    """One transaction on a statement; the model and tokens of a usage."""

    id: int
    time: datetime
    type: str
    amount: int
    balance: int
    reference: str
    reason: str | None
    model: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None


def opening(connection: Connection, user_id: int, month: Month) -> int:
    """The balance when the month began."""
    return balance_before(connection, user_id, month.low)


def lines(connection: Connection, user_id: int, month: Month, chunk: int = CHUNK) -> Iterator[Line]:
    """The user's transactions of ``month`` in order, read ``chunk`` at a time after the last one read."""
    ct, ur = credit_transactions.c, usage_records.c
    after = None
    while True:
        query = (
            sa.select(ct.id, ct.createdAt, ct.type, ct.amount, ct.balance, ct.reference, ct.reason,
                      ur.model, ur.promptTokens, ur.completionTokens, ur.totalTokens)
            .select_from(credit_transactions.outerjoin(usage_records, ur.id == ct.usageRecordId))
            .where(ct.userId == user_id, *_in_month(month), *([ct.id > after] if after is not None else []))
            .order_by(ct.id)
            .limit(chunk)
        )  # fmt: skip
        rows = connection.execute(query).all()
        for row in rows:
            yield Line(*row)
        if len(rows) < chunk:
            return
        after = rows[-1].id


@dataclass(frozen=True, slots=True)
class SummaryRow:
    """A user's month: opening + credits in + usage + corrections = closing (usage and corrections are
    negative or zero; credits in is every positive change that is not a usage)."""

    user_id: int
    email: str
    opening: int
    credits_in: int
    usage: int
    corrections: int
    closing: int


def _openings(connection: Connection, ids: list[int], before: int | None) -> dict[int, int]:
    """Each user's balance after their last transaction with an id under ``before``."""
    ct = credit_transactions.c
    last = (
        sa.select(sa.func.max(ct.id))
        .where(ct.userId.in_(ids), *([ct.id < before] if before is not None else []))
        .group_by(ct.userId)
    )
    return {int(u): int(b) for u, b in connection.execute(sa.select(ct.userId, ct.balance).where(ct.id.in_(last)))}


def summary(connection: Connection, month: Month, chunk: int = USERS_CHUNK) -> Iterator[SummaryRow]:
    """Every user's month, in id order, ``chunk`` users at a time."""
    ct = credit_transactions.c
    kind = sa.case((ct.type == "usage", "usage"), (ct.amount > 0, "in"), else_="correction")
    after = 0
    while True:
        people = connection.execute(
            sa.select(users.c.id, users.c.email).where(users.c.id > after).order_by(users.c.id).limit(chunk)
        ).all()
        if not people:
            return
        ids = [int(p.id) for p in people]
        openings = _openings(connection, ids, month.low)
        totals: dict[tuple[int, str], int] = {}
        if month.low is not None:
            rows = connection.execute(
                sa.select(ct.userId, kind, *exact_sum(ct.amount, connection.dialect.name, "amount"))
                .where(ct.userId.in_(ids), *_in_month(month))
                .group_by(ct.userId, kind)
            )
            totals = {(int(u), str(k)): summed(parts) for u, k, *parts in rows}
        for person in people:
            start = openings.get(person.id, 0)
            got = {k: totals.get((person.id, k), 0) for k in ("in", "usage", "correction")}
            closing = start + sum(got.values())
            yield SummaryRow(person.id, person.email, start, got["in"], got["usage"], got["correction"], closing)
        after = ids[-1]


def months_between(first: str | None, today: date) -> list[str]:
    """``YYYY-MM`` from the month ``first`` to today's, newest first (none without a first)."""
    if first is None:
        return []
    year, month = int(first[:4]), int(first[5:7])
    found = []
    while (year, month) <= (today.year, today.month):
        found.append(f"{year:04d}-{month:02d}")
        year, month = year + month // 12, month % 12 + 1
    return found[::-1]
