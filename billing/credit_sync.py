"""The credit API's rules: check a signed sync request, apply it once, answer balances and records.

A sync changes the balance of the user with that ``telegram_id`` through ``ledger.apply_credit``, so it
lands in the same ledger as usage. The reference is ``sync:<source>:<external_reference>`` — a repeat is
a duplicate and changes nothing — or, without an external reference, the request's token itself, so a
replayed token is refused by the same unique constraint. A deduction never overdraws.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy import Connection

from creditrelay.billing.ledger import CreditChange, CreditStatus, apply_credit
from creditrelay.billing.rows import lock_balances
from creditrelay.schema.credit_sync import SyncBody
from creditrelay.schema.errors import CreditRelayError, Unauthorized
from creditrelay.schema.tables import credit_transactions, users

MAX_RECORDS = 100


class SyncRefused(Unauthorized):
    """The request is not authentic (key, source, time or token); nothing was looked up or changed."""


class SyncUnavailable(CreditRelayError):
    """The client has no secret and no ``CREDIT_SYNC_SECRET`` is configured."""

    status_code = 503


class SyncStatus(StrEnum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    REPLAYED = "replayed"
    CONFLICT = "conflict"
    INSUFFICIENT = "insufficient"
    OUT_OF_RANGE = "out_of_range"
    UNKNOWN_USER = "unknown_user"


@dataclass(frozen=True)
class SyncOutcome:
    status: SyncStatus
    telegram_id: int
    balance: int | None = None
    change: int = 0

    @property
    def duplicate(self) -> bool:
        return self.status is SyncStatus.DUPLICATE


@dataclass(frozen=True, slots=True)
class Balance:
    telegram_id: int
    credits: int
    nickname: str | None


@dataclass(frozen=True, slots=True)
class Record:
    """One balance change as the credit API lists it (a usage's reason is its model)."""

    id: int
    change: int
    reason: str | None
    balance: int
    source: str | None
    type: str
    created_at: datetime


def _user_id(connection: Connection, telegram_id: int) -> int | None:
    query = sa.select(users.c.id).where(users.c.telegramId == telegram_id)
    value = connection.execute(query).scalar_one_or_none()
    return None if value is None else int(value)


def apply_sync(connection: Connection, body: SyncBody, now: datetime) -> SyncOutcome:
    """Apply one verified sync, once."""
    user_id = _user_id(connection, body.telegram_id)
    if user_id is None:
        return SyncOutcome(SyncStatus.UNKNOWN_USER, body.telegram_id)
    if body.external_reference is not None:
        reference = f"sync:{body.source}:{body.external_reference}"
    else:
        reference = f"sync-token:{body.token.lower()}"
    change = CreditChange(user_id, body.amount, reference, "sync", reason=body.reason or None, source=body.source)
    outcome = apply_credit(connection, change, now)
    if outcome.status is CreditStatus.APPLIED:
        return SyncOutcome(SyncStatus.APPLIED, body.telegram_id, outcome.balance, outcome.change)
    if outcome.status is CreditStatus.INSUFFICIENT:
        return SyncOutcome(SyncStatus.INSUFFICIENT, body.telegram_id, outcome.balance)
    if outcome.status is CreditStatus.CONFLICT:
        return SyncOutcome(SyncStatus.CONFLICT, body.telegram_id, outcome.balance)
    if outcome.status is CreditStatus.OUT_OF_RANGE:
        return SyncOutcome(SyncStatus.OUT_OF_RANGE, body.telegram_id, outcome.balance)
    repeated = SyncStatus.DUPLICATE if body.external_reference is not None else SyncStatus.REPLAYED
    return SyncOutcome(repeated, body.telegram_id, outcome.balance)


def apply_syncs(connection: Connection, bodies: Sequence[SyncBody], now: datetime) -> list[SyncOutcome]:
    """Apply verified syncs in order, all in the caller's one transaction: either every outcome here is
    committed or none is. The users are locked first, in id order (the order every transaction takes)."""
    lock_balances(connection, [u for u in (_user_id(connection, b.telegram_id) for b in bodies) if u is not None])
    return [apply_sync(connection, body, now) for body in bodies]


def balance_of(connection: Connection, telegram_id: int) -> Balance | None:
    row = connection.execute(
        sa.select(users.c.balance, users.c.name).where(users.c.telegramId == telegram_id)
    ).one_or_none()
    if row is None:
        return None
    return Balance(telegram_id, row.balance, row.name)


def records_of(connection: Connection, telegram_id: int, limit: int) -> list[Record] | None:
    """The user's balance changes, newest first (usage included: its reason is the model)."""
    user_id = _user_id(connection, telegram_id)
    if user_id is None:
        return None
    rows = connection.execute(
        sa.select(credit_transactions)
        .where(credit_transactions.c.userId == user_id)
        .order_by(credit_transactions.c.id.desc())
        .limit(min(max(limit, 1), MAX_RECORDS))
    )
    return [Record(r.id, r.amount, r.reason, r.balance, r.source, r.type, r.createdAt) for r in rows]
