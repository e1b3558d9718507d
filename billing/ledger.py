"""Moving credits other than usage — a top-up, an opening balance, a correction, a credit-API change —
exactly once per reference, by the database's unique constraint on ``credit_transactions.reference``.

Locks are taken in one order in every transaction — webhook log rows, then user rows (``FOR UPDATE`` in
id order), then new rows — so concurrent transactions do not deadlock each other; the deadlocks a
database reports anyway are retried by ``run_transaction``. Every balance change is a
``credit_transactions`` row carrying the balance after it (usage's too: ``billing.usage``), so a user's
balance is always the sum of their transactions and equals their newest transaction's ``balance``.
"""

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy import Connection

from creditrelay.billing import grants
from creditrelay.billing.rows import lock_accounts, set_balances
from creditrelay.billing.watch import crossed
from creditrelay.schema.errors import NotFound
from creditrelay.schema.inserts import insert_new
from creditrelay.schema.money import in_range
from creditrelay.schema.statements import savepoint
from creditrelay.schema.tables import credit_transactions


class CreditStatus(StrEnum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    INSUFFICIENT = "insufficient"
    CONFLICT = "conflict"
    OUT_OF_RANGE = "out_of_range"  # the change would take the balance past ±MAX_BALANCE: not applied


class UnknownUser(NotFound):
    """No user has that id."""


@dataclass(frozen=True)
class CreditChange:
    """A top-up, an opening balance, a deduction: anything that is not a usage."""

    user_id: int
    amount: int
    reference: str
    type: str
    reason: str | None = None
    source: str | None = None
    allow_overdraft: bool = False
    grant: grants.GrantTerms | None = None  # a top-up's expiry, priority, kind (billing.grants)


@dataclass(frozen=True)
class CreditOutcome:
    status: CreditStatus
    balance: int
    change: int
    transaction_id: int | None = None


def apply_credit(connection: Connection, change: CreditChange, now: datetime) -> CreditOutcome:
    """Apply a non-usage balance change once per reference.

    A repeated reference is a duplicate (or a conflict when it names another user or amount) and changes
    nothing. A deduction that would take the balance below zero is refused unless ``allow_overdraft`` (a
    top-up of an overdrawn balance is not: it may leave it below zero), and any change that would take it
    past ``±MAX_BALANCE`` always. A user's live grants past their expiry end first; a deduction takes
    from the live grants in order, and a top-up with ``grant`` terms opens one (``billing.grants``).
    """
    locked = lock_accounts(connection, [change.user_id]).get(change.user_id)
    if locked is None:
        raise UnknownUser(change.user_id)
    balance, live = locked
    if live:
        balance = grants.close_due(connection, {change.user_id: balance}, now)[change.user_id]
    new_balance = balance + change.amount
    row = {
        "userId": change.user_id,
        "type": change.type,
        "amount": change.amount,
        "balance": new_balance,
        "reference": change.reference,
        "reason": change.reason,
        "source": change.source,
        "createdAt": now,
    }
    with savepoint(connection, "apply_credit") as rollback:
        if not insert_new(connection, credit_transactions, [row], "reference"):
            return _repeated_credit(connection, change, balance)
        if change.amount < 0 and new_balance < 0 and not change.allow_overdraft:  # a deduction, not a top-up
            rollback()
            return CreditOutcome(CreditStatus.INSUFFICIENT, balance, 0)
        if not in_range(new_balance):
            rollback()
            return CreditOutcome(CreditStatus.OUT_OF_RANGE, balance, 0)
    set_balances(connection, {change.user_id: new_balance}, now)
    if change.type != "opening":  # a new user's first balance crosses nothing (create_user says where it starts)
        crossed(connection, {change.user_id: balance}, {change.user_id: new_balance}, now)
    if change.amount < 0 and live:
        grants.consume(connection, {change.user_id: -change.amount}, now)
    elif change.grant is not None and not change.grant.plain:
        grants.open_grant(connection, change.user_id, change.reference, change.amount, new_balance, change.grant, now)
    transaction_id = connection.execute(
        sa.select(credit_transactions.c.id).where(credit_transactions.c.reference == change.reference)
    ).scalar_one()
    return CreditOutcome(CreditStatus.APPLIED, new_balance, change.amount, transaction_id)


def _repeated_credit(connection: Connection, change: CreditChange, balance: int) -> CreditOutcome:
    earlier = connection.execute(
        sa.select(credit_transactions.c.id, credit_transactions.c.userId, credit_transactions.c.amount).where(
            credit_transactions.c.reference == change.reference
        )
    ).one()
    same = earlier.userId == change.user_id and earlier.amount == change.amount
    status = CreditStatus.DUPLICATE if same else CreditStatus.CONFLICT
    return CreditOutcome(status, balance, 0, earlier.id)
