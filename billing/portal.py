"""What a member's portal link opens (docs/portal.md): the link itself (made, checked, revoked), and what
the member sees of their own account — balance and standing, usage by the day it was charged and by
model, transactions. Every read names the one user the link names. Nothing here commits.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection

from creditrelay.billing.accounts import AccountError
from creditrelay.billing.rules import rules_of
from creditrelay.billing.user_queries import day_of, first_transaction_since
from creditrelay.schema.money import exact_sum, summed
from creditrelay.schema.portal_tokens import DEFAULT_DAYS, MAX_DAYS, PortalClaim, read_portal_token, sign_portal_token
from creditrelay.schema.tables import credit_transactions, usage_records, users

MAX_RANGE_DAYS = 366  # the longest usage range one request reads


@dataclass(frozen=True, slots=True)
class PortalLink:
    path: str
    expires_at: datetime
    url: str | None = None


def issue_link(connection: Connection, user_id: int, key: bytes, now: datetime, days: int = DEFAULT_DAYS) -> PortalLink:
    """A link to ``user_id``'s portal for ``days`` days (1 to a year), in their links' current generation."""
    if not 1 <= days <= MAX_DAYS:
        raise AccountError(f"days: 1 to {MAX_DAYS}")
    epoch = connection.execute(sa.select(users.c.portalEpoch).where(users.c.id == user_id)).scalar_one_or_none()
    if epoch is None:
        raise AccountError(f"no user {user_id}")
    expires = now.replace(microsecond=0) + timedelta(days=days)
    unix = int((expires - datetime(1970, 1, 1)).total_seconds())
    token = sign_portal_token(key, PortalClaim(user_id, int(epoch), unix))
    return PortalLink(f"/portal/{token}", expires)


def revoke_links(connection: Connection, user_id: int) -> int:
    """End every link of ``user_id`` made so far (the generation moves on); the new generation."""
    found = connection.execute(
        users.update().where(users.c.id == user_id).values(portalEpoch=users.c.portalEpoch + 1)
    ).rowcount
    if not found:
        raise AccountError(f"no user {user_id}")
    epoch = connection.execute(sa.select(users.c.portalEpoch).where(users.c.id == user_id)).scalar_one()
    return int(epoch)


def member_of(connection: Connection, keys: Sequence[bytes], token: str, now: float) -> int | None:
    """The user a live link names: authentic, unexpired, not revoked; None for anything else."""
    claim = read_portal_token(keys, token, now)
    if claim is None:
        return None
    live = connection.execute(
        sa.select(users.c.id).where(users.c.id == claim.user_id, users.c.portalEpoch == claim.epoch)
    ).scalar_one_or_none()
    return None if live is None else int(live)


@dataclass(frozen=True, slots=True)
class Account:
    """A member's standing: their balance, and whether it is below the line the gateway stops them at,
    or below the low-balance mark."""

    user_id: int
    email: str
    name: str | None
    balance: int
    suspended: bool
    suspend_at: int
    low: bool
    low_at: int | None
    first_month: str | None  # YYYY-MM of the first transaction: statements exist from it on


def account(connection: Connection, user_id: int) -> Account:
    row = connection.execute(sa.select(users).where(users.c.id == user_id)).one()
    rules = rules_of(connection)
    first = connection.execute(
        sa.select(credit_transactions.c.createdAt)
        .where(credit_transactions.c.userId == user_id)
        .order_by(credit_transactions.c.id)
        .limit(1)
    ).scalar()
    low = rules.low_at is not None and row.balance < rules.low_at
    return Account(
        row.id, row.email, row.name, row.balance, rules.suspended(row.balance), rules.suspend_at, low, rules.low_at,
        None if first is None else first.strftime("%Y-%m"),
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Usage:
    """Credits charged (and tokens used) from ``start`` up to ``end`` (days, UTC, both included), by the
    day the usage was charged and by model."""

    start: date
    end: date
    credits: int
    tokens: int
    by_day: list[tuple[date, dict[str, int]]]  # every day of the range: model -> credits
    by_model: list[tuple[str, int, int]]  # model, credits, tokens; largest first


def usage(connection: Connection, user_id: int, start: date, end: date) -> Usage:
    """The member's usage charged on the days ``start`` to ``end``: the transactions of that range, found
    along the ``(userId, id)`` index by bisection, with the usage record behind each."""
    if end < start or (end - start).days >= MAX_RANGE_DAYS:
        raise AccountError(f"from and to: a range of 1 to {MAX_RANGE_DAYS} days, from first")
    low = first_transaction_since(connection, user_id, datetime.combine(start, datetime.min.time()))
    days = [start + timedelta(days=i) for i in range((end - start).days + 1)]
    by_day: dict[date, dict[str, int]] = {day: {} for day in days}
    models: dict[str, list[int]] = {}
    if low is not None:
        high = first_transaction_since(
            connection, user_id, datetime.combine(end + timedelta(days=1), datetime.min.time())
        )
        ct, ur = credit_transactions.c, usage_records.c
        charged = sa.func.date(ct.createdAt)
        rows = connection.execute(
            sa.select(charged, ur.model, *exact_sum(ur.creditCost, connection.dialect.name, "credits"),
                      *exact_sum(ur.totalTokens, connection.dialect.name, "tokens"))
            .select_from(credit_transactions.join(usage_records, ur.id == ct.usageRecordId))
            .where(ct.userId == user_id, ct.id >= low, *([ct.id < high] if high is not None else []))
            .group_by(charged, ur.model)
        ).all()  # fmt: skip
        width = 1 if connection.dialect.name != "sqlite" else 2
        for day, model, *parts in rows:
            credits, tokens = summed(parts[:width]), summed(parts[width:])
            if (slot := by_day.get(day_of(day))) is not None:
                slot[str(model)] = slot.get(str(model), 0) + credits
                totals = models.setdefault(str(model), [0, 0])
                totals[0] += credits
                totals[1] += tokens
    ordered = sorted(((m, c, t) for m, (c, t) in models.items()), key=lambda item: (-item[1], item[0]))
    return Usage(
        start, end, sum(c for _, c, _ in ordered), sum(t for _, _, t in ordered),
        [(day, by_day[day]) for day in days], ordered,
    )  # fmt: skip


def json_usage(found: Usage, group_by: str) -> dict[str, Any]:
    """The portal API's answer: totals, and the rows of ``group_by`` (day or model)."""
    if group_by == "day":
        rows: list[dict[str, Any]] = [
            {"day": day.isoformat(), "credits": sum(models.values()), "byModel": models} for day, models in found.by_day
        ]
    else:
        rows = [{"model": model, "credits": credits, "tokens": tokens} for model, credits, tokens in found.by_model]
    return {
        "from": found.start.isoformat(),
        "to": found.end.isoformat(),
        "groupBy": group_by,
        "credits": found.credits,
        "tokens": found.tokens,
        "rows": rows,
    }
