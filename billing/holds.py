"""Credit holds: credits set aside before a request (docs/grants-and-holds.md).

A hold moves no balance. While ``open`` and not past its ``expiresAt`` it lowers what the member has
*available* — ``balance - Σ open holds - SUSPEND_AT_BALANCE`` — so a gateway that asks for a hold before
serving never lets a member spend what they do not have. It ends once, one way:

- ``settled`` by the usage that carries it (``data.holdId``, or the hold's ``requestId``; a gateway hold
  only), in the usage's own transaction and only when the usage is newly charged, at the usage's actual
  cost (``settle``);
- ``captured`` by a credit API client: up to the held amount, once, the rest released (``capture``);
- ``voided`` by the gateway or the client, or ``expired`` once past ``expiresAt`` (the expiry pass).

Placing a hold locks the member's row (``FOR UPDATE``, as every balance change does) and sums their open
holds under that lock, so concurrent holds grant exactly what fits. The same ``(source, requestId)`` again
is the same hold (a unique key), never a second. ``users.openHolds`` counts a user's open holds, read with
the lock a charge takes anyway: a usage of a user without one looks for none.
"""

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from creditrelay.billing.grants import close_due, live_grants
from creditrelay.billing.ledger import CreditChange, apply_credit
from creditrelay.billing.rows import lock_accounts
from creditrelay.schema.errors import Conflict, InvalidInput, NotFound
from creditrelay.schema.holds import DEFAULT_TTL_SECONDS, MAX_TTL_SECONDS
from creditrelay.schema.money import MAX_AMOUNT
from creditrelay.schema.statements import savepoint
from creditrelay.schema.tables import credit_holds, users

OPEN, SETTLED, CAPTURED, VOIDED, EXPIRED = "open", "settled", "captured", "voided", "expired"
GATEWAY = "gateway"
DEFAULT_TTL, MAX_TTL = DEFAULT_TTL_SECONDS, MAX_TTL_SECONDS


class HoldError(InvalidInput):
    """A hold cannot be placed or ended as asked; the message says why."""


class UnknownHold(NotFound):
    """No hold has that id (for this caller)."""


class HoldConflict(Conflict):
    """The request id names another member's hold, or the hold has ended otherwise."""


@dataclass(frozen=True, slots=True)
class Hold:
    id: int
    user_id: int
    remote_key_id: str | None
    source: str
    request_id: str | None
    amount: int
    settled: int | None
    state: str
    expires_at: datetime
    created_at: datetime
    closed_at: datetime | None

    @classmethod
    def of(cls, row: Any) -> "Hold":
        return cls(
            row.id, row.userId, row.remoteKeyId, row.source, row.requestId, row.amount, row.settled, row.state,
            row.expiresAt, row.createdAt, row.closedAt,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class HoldOutcome:
    """A hold asked for: placed (or the same request's hold again), or refused; ``available`` after it."""

    allowed: bool
    available: int
    hold: Hold | None = None


@dataclass(frozen=True, slots=True)
class HoldRequest:
    user_id: int
    amount: int
    source: str
    ttl_seconds: int = DEFAULT_TTL
    request_id: str | None = None
    remote_key_id: str | None = None

    def check(self) -> None:
        if not 0 < self.amount <= MAX_AMOUNT:
            raise HoldError(f"amount: a positive integer up to {MAX_AMOUNT}")
        if not 0 < self.ttl_seconds <= MAX_TTL:
            raise HoldError(f"ttlSeconds: 1 to {MAX_TTL}")
        if self.request_id is not None and not 0 < len(self.request_id) <= 128:
            raise HoldError("requestId: 1 to 128 characters")


def held(connection: Connection, user_ids: Collection[int], now: datetime) -> dict[int, int]:
    """Each user's open holds not past their expiry, summed (a range of ``(userId, state, expiresAt)``)."""
    query = (
        sa.select(credit_holds.c.userId, sa.func.sum(credit_holds.c.amount))
        .where(
            credit_holds.c.userId.in_(sorted(user_ids)),
            credit_holds.c.state == OPEN,
            credit_holds.c.expiresAt > now,
        )
        .group_by(credit_holds.c.userId)
    )
    found = {user_id: 0 for user_id in user_ids}
    found.update({int(user_id): int(total) for user_id, total in connection.execute(query)})
    return found


def due_grants(connection: Connection, user_id: int, now: datetime) -> int:
    """What the user's live grants past their expiry still hold (ended at the next lock): not available."""
    return sum(g.remaining for g in live_grants(connection, [user_id])[user_id] if g.expires_at and g.expires_at <= now)


def place_hold(connection: Connection, request: HoldRequest, suspend_at: int, now: datetime) -> HoldOutcome:
    """Hold ``amount`` for the user if their available credits cover it; the same request id again is
    the same hold. Locks the user's row first."""
    request.check()
    locked = lock_accounts(connection, [request.user_id]).get(request.user_id)
    if locked is None:
        raise UnknownHold(f"no user {request.user_id}")
    balance, live = locked
    if live:
        balance = close_due(connection, {request.user_id: balance}, now)[request.user_id]
    available = balance - held(connection, [request.user_id], now)[request.user_id] - suspend_at
    if request.request_id is not None:
        earlier = _by_request(connection, request.source, request.request_id)
        if earlier is not None:
            return _again(earlier, request, available, now)
    if request.amount > available:
        return HoldOutcome(False, available)
    row = {
        "userId": request.user_id, "remoteKeyId": request.remote_key_id, "source": request.source,
        "requestId": request.request_id, "amount": request.amount, "state": OPEN,
        "expiresAt": now + timedelta(seconds=request.ttl_seconds), "createdAt": now,
    }  # fmt: skip
    try:
        with savepoint(connection, "place_hold"):
            created = connection.execute(credit_holds.insert().values(**row)).inserted_primary_key
    except IntegrityError:  # the same (source, requestId) for another member, committed meanwhile
        earlier = _by_request(connection, request.source, str(request.request_id))
        if earlier is None:
            raise
        return _again(earlier, request, available, now)
    assert created is not None
    _count_open(connection, {request.user_id: 1})
    hold = _hold(connection, int(created[0]))
    return HoldOutcome(True, available - request.amount, hold)


def _again(earlier: Hold, request: HoldRequest, available: int, now: datetime) -> HoldOutcome:
    """The earlier hold of the same request id, while it still holds; one that ended (settled, voided,
    captured, expired) sets nothing aside any more, so answering it as allowed would serve on credits
    nobody holds: a conflict naming its state."""
    if earlier.user_id != request.user_id:
        raise HoldConflict(f"requestId {request.request_id} names another member's hold")
    if earlier.state != OPEN or earlier.expires_at <= now:
        state = earlier.state if earlier.state != OPEN else EXPIRED
        raise HoldConflict(f"requestId {request.request_id} names hold {earlier.id}, which is {state}: use a new one")
    return HoldOutcome(True, available, earlier)


def _by_request(connection: Connection, source: str, request_id: str) -> Hold | None:
    row = connection.execute(
        sa.select(credit_holds).where(credit_holds.c.source == source, credit_holds.c.requestId == request_id)
    ).one_or_none()
    return None if row is None else Hold.of(row)


def _hold(connection: Connection, hold_id: int) -> Hold:
    return Hold.of(connection.execute(sa.select(credit_holds).where(credit_holds.c.id == hold_id)).one())


def find_hold(connection: Connection, hold_id: int, source: str) -> Hold:
    row = connection.execute(
        sa.select(credit_holds).where(credit_holds.c.id == hold_id, credit_holds.c.source == source)
    ).one_or_none()
    if row is None:
        raise UnknownHold(f"no hold {hold_id}")
    return Hold.of(row)


def end_hold(
    connection: Connection,
    hold_id: int,
    source: str,
    state: str,
    now: datetime,
    charged: int | None = None,
    by: str | None = None,
) -> Hold:
    """End an open hold of ``source`` as ``state`` (under its user's lock); a hold that ended before is
    answered as it is."""
    hold = find_hold(connection, hold_id, source)
    lock_accounts(connection, [hold.user_id])
    ended = connection.execute(
        credit_holds.update()
        .where(credit_holds.c.id == hold_id, credit_holds.c.state == OPEN)
        .values(state=state, settled=charged, settledBy=by, closedAt=now)
    ).rowcount
    if ended:
        _count_open(connection, {hold.user_id: -1})
    return _hold(connection, hold_id)


def settle(
    connection: Connection, charged: Sequence[tuple[int, int | None, str | None, int, str]], now: datetime
) -> None:
    """Settle the holds of usages just charged (under their users' locks): each ``(user, holdId,
    requestId, cost, reference)`` closes that user's open gateway hold by id, else the gateway hold of its
    request id, at the usage's cost. A credit-API hold is its client's to capture or void: a usage naming
    one settles nothing."""
    ended: dict[int, int] = {}
    for user_id, hold_id, request_id, cost, reference in charged:
        named = credit_holds.c.id == hold_id if hold_id is not None else credit_holds.c.requestId == request_id
        where = sa.and_(credit_holds.c.source == GATEWAY, named)
        closed = connection.execute(
            credit_holds.update()
            .where(where, credit_holds.c.userId == user_id, credit_holds.c.state == OPEN)
            .values(state=SETTLED, settled=cost, settledBy=reference, closedAt=now)
        ).rowcount
        if closed:
            ended[user_id] = ended.get(user_id, 0) - 1
    _count_open(connection, ended)


def expire_holds(connection: Connection, now: datetime, limit: int = 500) -> int:
    """Close open holds past their expiry (their users locked first, in id order); how many."""
    due = connection.execute(
        sa.select(credit_holds.c.userId)
        .where(credit_holds.c.state == OPEN, credit_holds.c.expiresAt <= now)
        .limit(limit)
    ).scalars()
    user_ids = sorted({int(u) for u in due})
    if not user_ids:
        return 0
    lock_accounts(connection, user_ids)
    rows = connection.execute(
        sa.select(credit_holds.c.id, credit_holds.c.userId).where(
            credit_holds.c.userId.in_(user_ids), credit_holds.c.state == OPEN, credit_holds.c.expiresAt <= now
        )
    ).all()
    if not rows:
        return 0
    connection.execute(
        credit_holds.update()
        .where(credit_holds.c.id.in_([r.id for r in rows]), credit_holds.c.state == OPEN)
        .values(state=EXPIRED, closedAt=now)
    )
    ended: dict[int, int] = {}
    for row in rows:
        ended[row.userId] = ended.get(row.userId, 0) - 1
    _count_open(connection, ended)
    return len(rows)


def capture(connection: Connection, hold_id: int, source: str, amount: int, now: datetime) -> Hold:
    """Charge up to the held amount, once, and release the rest: a ``capture`` transaction (the credits
    were held for it, so it may take a balance that usage took down meanwhile below zero). A hold
    captured before is answered as it is; one that ended otherwise is a conflict."""
    hold = find_hold(connection, hold_id, source)
    if amount > hold.amount:
        raise HoldError(f"amount: at most the {hold.amount} credits held")
    lock_accounts(connection, [hold.user_id])
    hold = _hold(connection, hold_id)
    if hold.state == CAPTURED:
        return hold
    if hold.state != OPEN:
        raise HoldConflict(f"hold {hold_id} is {hold.state}: nothing to capture")
    if hold.expires_at <= now:  # no longer counted as held: others may have spent its credits
        raise HoldConflict(f"hold {hold_id} is {EXPIRED}: nothing to capture")
    reference = f"hold:{hold_id}:capture"
    if amount:
        change = CreditChange(hold.user_id, -amount, reference, "capture", source=source, allow_overdraft=True)
        apply_credit(connection, change, now)
    return end_hold(connection, hold_id, source, CAPTURED, now, amount, reference if amount else None)


def open_holds(connection: Connection, user_id: int, now: datetime) -> list[Hold]:
    """The user's open holds not past their expiry, oldest first."""
    query = (
        sa.select(credit_holds)
        .where(credit_holds.c.userId == user_id, credit_holds.c.state == OPEN, credit_holds.c.expiresAt > now)
        .order_by(credit_holds.c.id)
    )
    return [Hold.of(row) for row in connection.execute(query)]


def _count_open(connection: Connection, changes: Mapping[int, int]) -> None:
    for user_id, change in sorted(changes.items()):
        if change:
            connection.execute(users.update().where(users.c.id == user_id).values(openHolds=users.c.openHolds + change))
