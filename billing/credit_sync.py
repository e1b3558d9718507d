"""The credit API's rules: check a signed sync request, apply it once, answer balances and records.

A sync changes the balance of the member it names (by ``telegram_id``, ``user_id`` or ``email``) through
``ledger.apply_credit``, so it lands in the same ledger as usage. The reference is
``sync:<source>:<external_reference>`` — a repeat is a duplicate and changes nothing — or, without an
external reference, ``sync-token:<token>``. A deduction never overdraws.

Each request's token is used once (``billing.credit_tokens``), in the same transaction as the change and
before it: a token seen before is a replay, refused whatever reference it names, unless it is the very
request again (the same reference, already applied: a client's retry), which is a duplicate.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy import Connection

from creditrelay.billing.credit_tokens import TokenUse, use_tokens
from creditrelay.billing.grants import GrantError, GrantTerms
from creditrelay.billing.ledger import CreditChange, CreditStatus, apply_credit
from creditrelay.billing.rows import lock_balances
from creditrelay.schema.credit_sync import TOKEN_WINDOW_SECONDS, Member, SyncBody
from creditrelay.schema.database import utc
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
    BAD_TERMS = "bad_terms"  # the grant terms cannot be (an expiry already past)
    OUT_OF_RANGE = "out_of_range"
    UNKNOWN_USER = "unknown_user"


@dataclass(frozen=True)
class SyncOutcome:
    status: SyncStatus
    member: Member  # as the request named them
    balance: int | None = None
    change: int = 0

    @property
    def duplicate(self) -> bool:
        return self.status is SyncStatus.DUPLICATE


@dataclass(frozen=True, slots=True)
class Balance:
    member: Member
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


def _named(member: Member) -> sa.ColumnElement[bool]:
    """The condition on ``users`` that picks the member a request names (an email compared as stored:
    lower case)."""
    if member.field == "telegram_id":
        return users.c.telegramId == member.value
    if member.field == "user_id":
        return users.c.id == member.value
    return users.c.email == str(member.value).strip().lower()


def user_of(connection: Connection, member: Member) -> int | None:
    value = connection.execute(sa.select(users.c.id).where(_named(member))).scalar_one_or_none()
    return None if value is None else int(value)


def _reference(body: SyncBody) -> str:
    if body.external_reference is not None:
        return f"sync:{body.source}:{body.external_reference}"
    return f"sync-token:{body.token.lower()}"


def apply_sync(connection: Connection, body: SyncBody, now: datetime) -> SyncOutcome:
    """Apply one verified sync whose token this transaction has just used for the first time."""
    user_id = user_of(connection, body.member)
    if user_id is None:
        return SyncOutcome(SyncStatus.UNKNOWN_USER, body.member)
    reference = _reference(body)
    terms = None
    if body.grant != (None, None, None):
        expires = None if body.expires_at is None else utc(body.expires_at)
        terms = GrantTerms(body.kind or "paid", body.priority, expires)
        try:
            terms.check(now)
        except GrantError:
            return SyncOutcome(SyncStatus.BAD_TERMS, body.member)
    change = CreditChange(
        user_id, body.amount, reference, "sync", reason=body.reason or None, source=body.source, grant=terms
    )
    outcome = apply_credit(connection, change, now)
    if outcome.status is CreditStatus.APPLIED:
        return SyncOutcome(SyncStatus.APPLIED, body.member, outcome.balance, outcome.change)
    if outcome.status is CreditStatus.INSUFFICIENT:
        return SyncOutcome(SyncStatus.INSUFFICIENT, body.member, outcome.balance)
    if outcome.status is CreditStatus.CONFLICT:
        return SyncOutcome(SyncStatus.CONFLICT, body.member, outcome.balance)
    if outcome.status is CreditStatus.OUT_OF_RANGE:
        return SyncOutcome(SyncStatus.OUT_OF_RANGE, body.member, outcome.balance)
    repeated = SyncStatus.DUPLICATE if body.external_reference is not None else SyncStatus.REPLAYED
    return SyncOutcome(repeated, body.member, outcome.balance)


def _used_before(connection: Connection, body: SyncBody, recorded: str) -> SyncOutcome:
    """A sync whose token was used before, with ``recorded`` as its reference. Only the same request again —
    the same external reference, applied to this member and amount — is a duplicate (a client retrying
    after a timeout); anything else is a replay, refused without looking the member up. Without an external
    reference a repeat is a replay too: it cannot be told from a second, equal request."""
    if body.external_reference is None or recorded != _reference(body):
        return SyncOutcome(SyncStatus.REPLAYED, body.member)
    applied = connection.execute(
        sa.select(credit_transactions.c.amount, users.c.balance)
        .select_from(credit_transactions.join(users, users.c.id == credit_transactions.c.userId))
        .where(credit_transactions.c.reference == recorded, _named(body.member))
    ).one_or_none()
    if applied is None or applied.amount != body.amount:
        return SyncOutcome(SyncStatus.REPLAYED, body.member)
    return SyncOutcome(SyncStatus.DUPLICATE, body.member, applied.balance)


def apply_syncs(connection: Connection, bodies: Sequence[SyncBody], now: datetime) -> list[SyncOutcome]:
    """Apply verified syncs in order, all in the caller's one transaction: either every outcome here is
    committed or none is. A single sync is a batch of one.

    The tokens are used first (in token order), then the users of the new ones are locked in id order
    (the order every transaction takes), then each sync is applied. A token is used whatever becomes of its
    sync: a refused change rolls back only to ``apply_credit``'s savepoint, after the token's insert."""
    earlier = use_tokens(
        connection,
        [TokenUse(b.token.lower(), _reference(b), utc(b.timestamp + TOKEN_WINDOW_SECONDS)) for b in bodies],
    )
    fresh = [body for body, recorded in zip(bodies, earlier, strict=True) if recorded is None]
    lock_balances(connection, [u for u in (user_of(connection, b.member) for b in fresh) if u is not None])
    return [
        apply_sync(connection, body, now) if recorded is None else _used_before(connection, body, recorded)
        for body, recorded in zip(bodies, earlier, strict=True)
    ]


def balance_of(connection: Connection, member: Member) -> Balance | None:
    row = connection.execute(sa.select(users.c.balance, users.c.name).where(_named(member))).one_or_none()
    if row is None:
        return None
    return Balance(member, row.balance, row.name)


def records_of(connection: Connection, member: Member, limit: int, source: str | None = None) -> list[Record] | None:
    """The user's balance changes, newest first: every one (usage included: its reason is the model), or
    only the credit API syncs of ``source``."""
    user_id = user_of(connection, member)
    if user_id is None:
        return None
    query = sa.select(credit_transactions).where(credit_transactions.c.userId == user_id)
    if source is not None:
        query = query.where(credit_transactions.c.type == "sync", credit_transactions.c.source == source)
    rows = connection.execute(query.order_by(credit_transactions.c.id.desc()).limit(min(max(limit, 1), MAX_RECORDS)))
    return [Record(r.id, r.amount, r.reason, r.balance, r.source, r.type, r.createdAt) for r in rows]
