"""The ledger rules: charge usage and move credits, exactly once, by the database's unique constraints.

Batch-first: ``apply_usage`` takes a list of usages and returns one outcome per usage, all in the
caller's transaction (billing never commits). Which usages are new is decided by inserting them with
``ON CONFLICT DO NOTHING`` / ``INSERT IGNORE`` and counting what was written — never by reading first.

Locks are taken in one order in every transaction — webhook log rows (inserted in event id order), then
user rows (``FOR UPDATE`` in id order), then new usage and transaction rows — so concurrent batches do
not deadlock each other; the deadlocks a database reports anyway are retried by ``run_transaction``.
Every balance change is a ``credit_transactions`` row carrying the balance after it, so a user's
balance is always the sum of their transactions and equals their newest transaction's ``balance``.
"""

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection

from creditrelay.billing import matching
from creditrelay.billing.matching import DEFAULT_TOLERANCE
from creditrelay.billing.rows import insert_new, insert_new_ids, key_owners, lock_balances, lock_users, set_balances
from creditrelay.billing.watch import crossed, learn_gateway_users
from creditrelay.schema.errors import NotFound
from creditrelay.schema.money import MAX_BALANCE, in_range
from creditrelay.schema.statements import execute_many, insert_all, savepoint
from creditrelay.schema.tables import credit_transactions, usage_matches, usage_records


class UsageStatus(StrEnum):
    CHARGED = "charged"
    DUPLICATE = "duplicate"
    MATCHED = "matched"  # the same usage, charged when it came by the other path (billing.matching)
    UNKNOWN_KEY = "unknown_key"
    OUT_OF_RANGE = "out_of_range"  # the charge would take the balance below -MAX_BALANCE: not charged


class CreditStatus(StrEnum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    INSUFFICIENT = "insufficient"
    CONFLICT = "conflict"
    OUT_OF_RANGE = "out_of_range"  # the change would take the balance past ±MAX_BALANCE: not applied


class UnknownUser(NotFound):
    """No user has that id."""


# The per-event records of the hot path are plain slotted dataclasses, not frozen ones (a frozen one sets
# every field through object.__setattr__, several times the cost to build). Treat them as values.
@dataclass(slots=True)
class Usage:
    """One usage at the gateway, as billing needs it, whichever way it arrived."""

    usage_key: str
    remote_key_id: str
    model: str
    credit_cost: int
    used_at: datetime
    source: str
    event_id: str | None = None
    request_id: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    gateway_user_id: int | None = None  # the user's id at the gateway, when the gateway says it


@dataclass(slots=True)
class UsageOutcome:
    status: UsageStatus
    user_id: int | None = None
    balance: int | None = None  # after this charge; set when charged

    @property
    def overdrawn(self) -> bool:
        """Usage already happened at the gateway, so a charge may leave the balance below zero."""
        return self.balance is not None and self.balance < 0


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


@dataclass(frozen=True)
class CreditOutcome:
    status: CreditStatus
    balance: int
    change: int
    transaction_id: int | None = None


def _usage_row(usage: Usage, user_id: int, now: datetime) -> dict[str, Any]:
    return {
        "usageKey": usage.usage_key,
        "userId": user_id,
        "remoteKeyId": usage.remote_key_id,
        "eventId": usage.event_id,
        "requestId": usage.request_id,
        "model": usage.model,
        "promptTokens": usage.prompt_tokens,
        "completionTokens": usage.completion_tokens,
        "totalTokens": usage.total_tokens,
        "creditCost": usage.credit_cost,
        "source": usage.source,
        "usedAt": usage.used_at,
        "createdAt": now,
    }


def apply_usage(
    connection: Connection,
    usages: Sequence[Usage],
    now: datetime,
    *,
    strict: bool = False,
    owners: Mapping[str, int] | None = None,
    paired: set[str] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> list[UsageOutcome]:
    """Charge each usage once: one outcome per usage, in order, inside the caller's transaction.

    A webhook usage without a request id and a usage read from the gateway's log are the same usage when
    they pair (``billing.matching``): the second to arrive is a duplicate of the first, whichever path it
    came by. ``strict``: raise ``Shortfall`` instead of sorting out usages charged before (the caller
    retries the batch on its slower path). ``owners``: the caller's ``key_owners`` of these usages, read in
    this transaction; ``paired``: which webhook usage keys have paired before, when the caller read that
    (see ``matching.settle``); ``tolerance``: seconds a pair's times may differ. A charge that would take
    a balance below ``-MAX_BALANCE`` is not made (``OUT_OF_RANGE``) and leaves no row behind; the usage
    can be charged later, once the balance allows it.
    """
    if owners is None:
        owners = key_owners(connection, (u.remote_key_id for u in usages))
    candidates: dict[str, int] = {}  # usage key -> index of its first billable usage in this batch
    for index, usage in enumerate(usages):
        if usage.remote_key_id in owners:
            candidates.setdefault(usage.usage_key, index)
    locked = lock_users(connection, {owners[usages[i].remote_key_id] for i in candidates.values()})
    balances = {user_id: balance for user_id, (balance, _) in locked.items()}
    arrivals = {  # the usages that may be the same as one of the other path's (a cheap test per usage)
        key: _arrival(usages[index], owners[usages[index].remote_key_id])
        for key, index in candidates.items()
        if usages[index].request_id is None or usages[index].source == matching.POLL
    }
    settled = _settle(connection, arrivals, locked, paired, tolerance, now)
    matched = settled.matched
    settled_keys = settled.known | matched
    new_rows = [
        _usage_row(usages[index], owners[usages[index].remote_key_id], now)
        for key, index in sorted(candidates.items())
        if not settled_keys or key not in settled_keys
    ]
    record_ids = insert_new_ids(connection, usage_records, new_rows, "usageKey", strict=strict)

    outcomes: list[UsageOutcome] = []
    transactions: list[dict[str, Any]] = []
    changed: dict[int, int] = {}
    refused: list[str] = []
    opened: list[matching.Arrival] = []
    for index, usage in enumerate(usages):
        user_id = owners.get(usage.remote_key_id)
        if user_id is None:
            outcomes.append(UsageOutcome(UsageStatus.UNKNOWN_KEY))
            continue
        if matched and candidates[usage.usage_key] == index and usage.usage_key in matched:
            outcomes.append(UsageOutcome(UsageStatus.MATCHED, user_id))
            continue
        if candidates[usage.usage_key] != index or usage.usage_key not in record_ids:
            outcomes.append(UsageOutcome(UsageStatus.DUPLICATE, user_id))
            continue
        if balances[user_id] - usage.credit_cost < -MAX_BALANCE:  # a cost is never negative: only the floor
            refused.append(usage.usage_key)
            outcomes.append(UsageOutcome(UsageStatus.OUT_OF_RANGE, user_id, balances[user_id]))
            continue
        balances[user_id] -= usage.credit_cost
        changed[user_id] = balances[user_id]
        transactions.append(
            {
                "userId": user_id,
                "type": "usage",
                "amount": -usage.credit_cost,
                "balance": balances[user_id],
                "reference": f"usage:{usage.usage_key}",
                "usageRecordId": record_ids[usage.usage_key],
                "reason": usage.model,
                "source": usage.source,
                "createdAt": now,
            }
        )
        if arrivals and usage.usage_key in arrivals:
            opened.append(arrivals[usage.usage_key])
        outcomes.append(UsageOutcome(UsageStatus.CHARGED, user_id, balances[user_id]))
    if refused:  # written a moment ago by this transaction, so nobody else has seen them
        connection.execute(usage_records.delete().where(usage_records.c.usageKey.in_(refused)))
    execute_many(connection, "usage_transactions", lambda _: credit_transactions.insert(), transactions)
    set_balances(connection, changed, now)
    if changed:
        crossed(connection, {u: locked[u][0] for u in changed}, changed, now)
        learn_gateway_users(connection, usages, owners, now)
    if opened or settled.polls_taken:
        _open(connection, opened, record_ids, settled)
    return outcomes


def _settle(
    connection: Connection,
    arrivals: Mapping[str, matching.Arrival],
    locked: Mapping[int, tuple[int, int]],
    paired: set[str] | None,
    tolerance: float,
    now: datetime,
) -> matching.Settled:
    """``matching.settle`` for the arrivals that may pair: a webhook usage without a request id, any usage
    read from the gateway's log (none, on the webhook hot path with request ids)."""
    if not arrivals:
        return matching.Settled(set(), set(), Counter())
    return matching.settle(
        connection,
        [a for a in arrivals.values() if a.source == matching.WEBHOOK],
        [a for a in arrivals.values() if a.source == matching.POLL],
        {user_id: waiting for user_id, (_, waiting) in locked.items()},
        paired,
        tolerance,
        now,
    )


def _arrival(usage: Usage, user_id: int) -> matching.Arrival:
    match_key = matching.fingerprint(usage.remote_key_id, usage.model, usage.prompt_tokens, usage.completion_tokens)
    source = matching.POLL if usage.source == matching.POLL else matching.WEBHOOK
    return matching.Arrival(
        usage.usage_key, user_id, usage.remote_key_id, source, match_key, usage.used_at, usage.credit_cost
    )


def _open(
    connection: Connection,
    opened: Sequence[matching.Arrival],
    record_ids: Mapping[str, int],
    settled: matching.Settled,
) -> None:
    """Open the charged matchable usages for their other half, and count the open polled usages of each
    user and key: one more for each polled usage opened, one fewer for each a webhook took (the key's
    user now: it carries its share along when it moves)."""
    insert_all(connection, usage_matches, matching.open_rows(opened, record_ids))
    waiting = Counter((a.user_id, a.remote_key_id) for a in opened if a.source == matching.POLL)
    waiting.subtract(settled.polls_taken)
    matching.count_open_polls(connection, waiting)


def apply_credit(connection: Connection, change: CreditChange, now: datetime) -> CreditOutcome:
    """Apply a non-usage balance change once per reference.

    A repeated reference is a duplicate (or a conflict when it names another user or amount) and changes
    nothing. A deduction that would take the balance below zero is refused unless ``allow_overdraft`` (a
    top-up of an overdrawn balance is not: it may leave it below zero), and any change that would take it
    past ``±MAX_BALANCE`` always.
    """
    balance = lock_balances(connection, [change.user_id]).get(change.user_id)
    if balance is None:
        raise UnknownUser(change.user_id)
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
