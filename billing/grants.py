"""Credit grants: credits a top-up gave with an expiry, a priority or as a promotion (docs/grants-and-holds.md).

A grant is a share of its user's balance, not a balance of its own: ``balance = Σ credit_transactions``
always, and the credits no live grant holds (the *pool*: ``balance - Σ remaining``) are the purchased
credits without expiry. A change that takes credits (usage, a deduction, a correction) takes them from the
live grants first, in the order of ``spending_order`` — priority (a lower number first; none after all that
have one), then the soonest expiry (none last), then the oldest — and from the pool last. A grant given
while the balance is below zero pays the debt first: only what is left above zero becomes its
``remaining``, so ``Σ remaining ≤ max(balance, 0)`` holds at every commit.

A grant past its ``expiresAt`` is spent no more: whatever locks its user (a charge, a hold, the expiry
pass) closes it first (``close_due``), its remainder leaving as a transaction of type ``expiry``
referenced ``grant:<id>:end`` — unique, so a grant ends once however many instances try. Voiding ends one
early the same way. Every function here runs under the user's row lock (``billing.rows``), which is what
serialises the grant rows of a user; the caller owns the transaction.
"""

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection

from creditrelay.billing.rows import lock_accounts, set_balances
from creditrelay.billing.watch import crossed
from creditrelay.schema.errors import InvalidInput, NotFound
from creditrelay.schema.inserts import insert_new
from creditrelay.schema.tables import credit_grants, credit_transactions, users

KINDS = ("paid", "promo")
LIVE, SPENT, EXPIRED, VOIDED = "live", "spent", "expired", "voided"
MAX_PRIORITY = 1_000_000
EXPIRY = "expiry"


class GrantError(InvalidInput):
    """A grant cannot be made or ended as asked; the message says why."""


class UnknownGrant(NotFound):
    """No grant has that id."""


@dataclass(frozen=True, slots=True)
class GrantTerms:
    """What a top-up may say about its credits; the default is plain purchased credits (no grant)."""

    kind: str = "paid"
    priority: int | None = None
    expires_at: datetime | None = None

    @property
    def plain(self) -> bool:
        return self.kind == "paid" and self.priority is None and self.expires_at is None

    def check(self, now: datetime) -> None:
        if self.kind not in KINDS:
            raise GrantError(f"kind must be one of {', '.join(KINDS)}, not {self.kind[:20]!r}")
        if self.priority is not None and not 0 <= self.priority <= MAX_PRIORITY:
            raise GrantError(f"priority must be 0 to {MAX_PRIORITY} (lower is spent first)")
        if self.expires_at is not None and self.expires_at <= now:
            raise GrantError("expires-at must be in the future")


@dataclass(frozen=True, slots=True)
class Grant:
    id: int
    kind: str
    priority: int | None
    expires_at: datetime | None
    amount: int
    remaining: int
    used: int
    state: str
    reference: str
    created_at: datetime
    closed_at: datetime | None = None
    reason: str | None = None

    @classmethod
    def of(cls, row: Any) -> "Grant":
        return cls(
            row.id, row.kind, row.priority, row.expiresAt, row.amount, row.remaining, row.used, row.state,
            row.reference, row.createdAt, row.closedAt, row.reason,
        )  # fmt: skip


def spending_order(grant: Grant) -> tuple[bool, int, bool, datetime, int]:
    """Priority (none last), then the soonest expiry (none last), then the oldest."""
    return (
        grant.priority is None,
        grant.priority or 0,
        grant.expires_at is None,
        grant.expires_at or datetime.max,
        grant.id,
    )


def open_grant(
    connection: Connection, user_id: int, reference: str, amount: int, balance: int, terms: GrantTerms, now: datetime
) -> None:
    """The grant of a top-up just applied (``balance`` after it), under the user's lock: debt first."""
    remaining = max(0, min(amount, balance))
    state = LIVE if remaining else SPENT
    row = {
        "userId": user_id, "reference": reference, "kind": terms.kind, "priority": terms.priority,
        "expiresAt": terms.expires_at, "amount": amount, "remaining": remaining, "used": 0, "state": state,
        "createdAt": now, "closedAt": None if remaining else now,
    }  # fmt: skip
    if insert_new(connection, credit_grants, [row], "reference") and remaining:
        _count_live(connection, {user_id: 1})


def live_grants(connection: Connection, user_ids: Collection[int]) -> dict[int, list[Grant]]:
    """The users' live grants, each user's in spending order."""
    query = sa.select(credit_grants).where(credit_grants.c.userId.in_(sorted(user_ids)), credit_grants.c.state == LIVE)
    found: dict[int, list[Grant]] = {user_id: [] for user_id in user_ids}
    for row in connection.execute(query):
        found[row.userId].append(Grant.of(row))
    for grants in found.values():
        grants.sort(key=spending_order)
    return found


def consume(connection: Connection, spent: Mapping[int, int], now: datetime) -> None:
    """Take what each user spent from their live grants, in order, down to zero each; the rest came
    from the pool (or overdrew it). Only for users with live grants (``users.liveGrants``)."""
    ended: dict[int, int] = {}
    for user_id, grants in live_grants(connection, [u for u, amount in spent.items() if amount > 0]).items():
        left = spent[user_id]
        for grant in grants:
            if left <= 0:
                break
            take = min(left, grant.remaining)
            left -= take
            done = take == grant.remaining
            values: dict[str, Any] = {"remaining": grant.remaining - take, "used": grant.used + take}
            if done:
                values |= {"state": SPENT, "closedAt": now}
                ended[user_id] = ended.get(user_id, 0) - 1
            connection.execute(credit_grants.update().where(credit_grants.c.id == grant.id).values(**values))
    _count_live(connection, ended)


def close_due(connection: Connection, balances: Mapping[int, int], now: datetime) -> dict[int, int]:
    """End the users' live grants past their expiry (the users locked, ``balances`` their balances);
    their new balances."""
    due = {
        user_id: [g for g in grants if g.expires_at is not None and g.expires_at <= now]
        for user_id, grants in live_grants(connection, balances).items()
    }
    after = dict(balances)
    for user_id, grants in due.items():
        for grant in grants:
            after[user_id] = _end(connection, user_id, grant, after[user_id], EXPIRED, None, now)
    return after


def void_grant(connection: Connection, grant_id: int, reason: str, now: datetime) -> Grant:
    """End a live grant now, its remainder leaving as an ``expiry`` transaction; a grant already ended
    is answered as it is."""
    if not reason.strip() or len(reason) > 200:
        raise GrantError("reason: say why the grant ends (at most 200 characters)")
    user_id = connection.execute(
        sa.select(credit_grants.c.userId).where(credit_grants.c.id == grant_id)
    ).scalar_one_or_none()
    if user_id is None:
        raise UnknownGrant(f"no grant {grant_id}")
    balance, _ = lock_accounts(connection, [user_id])[user_id]
    grant = _grant(connection, grant_id)
    if grant.state == LIVE:
        _end(connection, user_id, grant, balance, VOIDED, reason, now)
    return _grant(connection, grant_id)


def _grant(connection: Connection, grant_id: int) -> Grant:
    return Grant.of(connection.execute(sa.select(credit_grants).where(credit_grants.c.id == grant_id)).one())


def _end(
    connection: Connection, user_id: int, grant: Grant, balance: int, state: str, reason: str | None, now: datetime
) -> int:
    """Close ``grant`` as ``state`` and take its remainder out of the balance (never below zero, which
    ``Σ remaining ≤ balance`` keeps from happening anyway); the balance after."""
    amount = min(grant.remaining, max(balance, 0))
    new_balance = balance - amount
    ended = connection.execute(
        credit_grants.update()
        .where(credit_grants.c.id == grant.id, credit_grants.c.state == LIVE)
        .values(state=state, remaining=0, reason=reason, closedAt=now)
    ).rowcount
    if not ended:  # ended meanwhile: cannot happen under the user's lock, but never twice
        return balance
    _count_live(connection, {user_id: -1})
    if not amount:
        return balance
    row = {
        "userId": user_id,
        "type": EXPIRY,
        "amount": -amount,
        "balance": new_balance,
        "reference": f"grant:{grant.id}:end",
        "reason": f"{state}: {reason}"[:255] if reason else f"{state} ({grant.kind} grant {grant.id})",
        "source": None,
        "createdAt": now,
    }
    if not insert_new(connection, credit_transactions, [row], "reference"):
        return balance
    set_balances(connection, {user_id: new_balance}, now)
    crossed(connection, {user_id: balance}, {user_id: new_balance}, now)
    return new_balance


def _count_live(connection: Connection, changes: Mapping[int, int]) -> None:
    for user_id, change in sorted(changes.items()):
        if change:
            connection.execute(
                users.update().where(users.c.id == user_id).values(liveGrants=users.c.liveGrants + change)
            )


@dataclass(frozen=True, slots=True)
class ExpiryReport:
    grants: int
    holds: int


def due_users(connection: Connection, now: datetime, limit: int) -> list[int]:
    """Users with a live grant past its expiry (a range of the ``(state, expiresAt)`` index)."""
    query = (
        sa.select(credit_grants.c.userId)
        .where(credit_grants.c.state == LIVE, credit_grants.c.expiresAt <= now)
        .order_by(credit_grants.c.expiresAt)
        .limit(limit)
    )
    return sorted({int(user_id) for user_id in connection.execute(query).scalars()})


def expire_users(connection: Connection, user_ids: Sequence[int], now: datetime) -> int:
    """Lock the users (id order) and end their grants past expiry; how many ended here (a second
    instance doing the same at once finds them ended, under the same locks)."""
    locked = lock_accounts(connection, user_ids)
    before = connection.execute(
        sa.select(sa.func.count()).where(
            credit_grants.c.userId.in_(sorted(locked)), credit_grants.c.state == LIVE, credit_grants.c.expiresAt <= now
        )
    ).scalar_one()
    close_due(connection, {u: balance for u, (balance, grants) in locked.items() if grants}, now)
    return int(before)


@dataclass(frozen=True, slots=True)
class UserGrants:
    """What ``user show`` and the pages show of a user's grants: the live ones in spending order, and
    what was spent from grants and from the purchased credits without expiry (or owed), and what expired."""

    live: list[Grant]
    granted_used: int
    purchased_used: int
    expired: int


def grants_of(connection: Connection, user_id: int) -> UserGrants:
    live = live_grants(connection, [user_id])[user_id]
    granted = connection.execute(
        sa.select(sa.func.coalesce(sa.func.sum(credit_grants.c.used), 0)).where(credit_grants.c.userId == user_id)
    ).scalar_one()
    amount, kind = credit_transactions.c.amount, credit_transactions.c.type
    spent, expired = connection.execute(
        sa.select(
            sa.func.coalesce(sa.func.sum(sa.case((sa.and_(amount < 0, kind != EXPIRY), -amount), else_=0)), 0),
            sa.func.coalesce(sa.func.sum(sa.case((kind == EXPIRY, -amount), else_=0)), 0),
        ).where(credit_transactions.c.userId == user_id)
    ).one()
    return UserGrants(live, int(granted), int(spent) - int(granted), int(expired))
