"""Charging usage: a batch of usages in, one outcome per usage out, inside the caller's transaction.

A usage is charged once: which usages are new is decided by inserting their ``usage_records`` with ``ON
CONFLICT DO NOTHING`` / ``INSERT IGNORE`` (``schema.inserts``) and acting on what was written, never by
reading first. The steps, each a function below:

1. ``_candidates``: the first billable occurrence of each usage key, and which usages may be the same
   usage as one the other path charged (``billing.matching``: a webhook without a request id, a polled
   log row).
2. Lock the users' rows in id order (the order every transaction takes), reading their balances.
3. ``_settle``: pair what can pair with a usage the other path charged (those are not charged again).
4. ``_insert_records``: insert the others' records; the ones written are charged.
5. ``_plan``: each usage's outcome, its transaction and its user's new balance (pure: no statement).
6. ``_write``: the transactions, the balances, what crossing a line queues (``billing.watch``), the
   gateway user ids learnt, and the usages opened for their other half.
7. Only for users with live grants or open holds (``users.liveGrants``, ``users.openHolds``, read with
   the lock): their expired grants end before the plan, what they spent is taken from their grants in
   order (``billing.grants``), and the usages charged settle their holds (``billing.holds``).

Every balance change is a ``credit_transactions`` row carrying the balance after it, so a user's balance
is always the sum of their transactions and equals their newest transaction's ``balance``. Usage already
happened at the gateway, so a charge may take a balance below zero — but never past ``-MAX_BALANCE``: such
a charge is not made (``OUT_OF_RANGE``) and leaves no row behind.
"""

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection

from creditrelay.billing import autolink, grants, holds, matching
from creditrelay.billing.batch import RACED, Batch, Raced
from creditrelay.billing.rows import key_owners, lock_users, set_balances
from creditrelay.billing.rules import rules_of
from creditrelay.billing.watch import crossed, learn_gateway_users
from creditrelay.schema.inserts import insert_new_ids
from creditrelay.schema.money import MAX_BALANCE
from creditrelay.schema.statements import execute_many, insert_all
from creditrelay.schema.tables import credit_transactions, usage_matches, usage_records


class UsageStatus(StrEnum):
    CHARGED = "charged"
    DUPLICATE = "duplicate"
    MATCHED = "matched"  # the same usage, charged when it came by the other path (billing.matching)
    UNKNOWN_KEY = "unknown_key"
    OUT_OF_RANGE = "out_of_range"  # the charge would take the balance below -MAX_BALANCE: not charged


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
    gateway_user_id: str | None = None  # the user's id at the gateway, when the gateway says it
    hold_id: int | None = None  # the credit hold this usage settles (billing.holds)


@dataclass(slots=True)
class UsageOutcome:
    status: UsageStatus
    user_id: int | None = None
    balance: int | None = None  # after this charge; set when charged

    @property
    def overdrawn(self) -> bool:
        """Usage already happened at the gateway, so a charge may leave the balance below zero."""
        return self.balance is not None and self.balance < 0


def apply_usage(
    connection: Connection, usages: Sequence[Usage], now: datetime, linked: set[str] | None = None
) -> list[UsageOutcome]:
    """Charge each usage once, inside the caller's transaction, by the rules of the connection's ledger;
    the keys linked automatically on the way are added to ``linked``."""
    batch = Batch(now, rules_of(connection))
    outcomes = charge(connection, usages, batch)
    if linked is not None:
        linked |= batch.linked
    assert not isinstance(outcomes, Raced)  # an exact batch always knows what it wrote
    return outcomes


def charge(connection: Connection, usages: Sequence[Usage], batch: Batch) -> list[UsageOutcome] | Raced:
    """One outcome per usage, in order (the steps of the module's docstring). ``RACED`` only from a batch
    whose inserts are optimistic, when a usage key was charged meanwhile."""
    owners, automatic = _owners(connection, usages, batch)
    charging = _candidates(usages, owners)
    locked = lock_users(connection, charging.users)
    if automatic:
        batch.linked |= autolink.link(connection, automatic, batch.now, batch.rules)
    balances = {user: balance for user, (balance, _, _) in locked.items()}
    granted = [user for user, (_, _, extra) in locked.items() if extra]  # live grants or open holds
    if granted:  # their expired grants end first (billing.grants)
        balances |= grants.close_due(connection, {user: balances[user] for user in granted}, batch.now)
    settled = _settle(connection, charging, locked, batch)
    records = _insert_records(connection, usages, charging, settled, batch)
    if records is None:
        return RACED
    plan = _plan(usages, charging, settled, records, balances)
    _write(connection, usages, charging, settled, plan, records, batch)
    if granted:
        spent = {user: plan.before[user] - plan.balances[user] for user in granted if user in plan.balances}
        grants.consume(connection, spent, batch.now)
        _settle_holds(connection, plan, set(granted), batch)
    return plan.outcomes


def _owners(
    connection: Connection, usages: Sequence[Usage], batch: Batch
) -> tuple[Mapping[str, int], Mapping[str, int]]:
    """The user each usage's key bills, and of those the keys to link automatically (``billing.autolink``),
    as the batch read them or read now."""
    if batch.owners is not None:
        automatic = batch.automatic or {}
        if automatic:
            keys = {u.remote_key_id for u in usages}
            automatic = {key: user for key, user in automatic.items() if key in keys}
        return batch.owners, automatic
    owners = key_owners(connection, (u.remote_key_id for u in usages))
    wanted = autolink.unowned(((u.remote_key_id, u.gateway_user_id) for u in usages), owners)
    automatic = autolink.candidates(connection, wanted, batch.rules)
    return ({**owners, **automatic} if automatic else owners), automatic


def _settle_holds(connection: Connection, plan: "_Plan", users: set[int], batch: Batch) -> None:
    """The holds of the usages charged here (newly: a redelivery is never charged, so never settles)."""
    charged = [
        (user_id, usage.hold_id, usage.request_id, usage.credit_cost, f"usage:{usage.usage_key}")
        for usage, user_id, _ in plan.transactions
        if user_id in users and (usage.hold_id is not None or usage.request_id is not None)
    ]
    if charged:
        holds.settle(connection, charged, batch.now)


@dataclass(slots=True)
class _Charging:
    """The batch's billable usages: the first of each usage key, by its index in the batch."""

    owners: Mapping[str, int]
    first: dict[str, int]  # usage key -> index of its first billable usage
    users: set[int]  # their users
    arrivals: dict[str, matching.Arrival]  # of those, the ones that may be a usage the other path charged


def _candidates(usages: Sequence[Usage], owners: Mapping[str, int]) -> _Charging:
    first: dict[str, int] = {}
    for index, usage in enumerate(usages):
        if usage.remote_key_id in owners:
            first.setdefault(usage.usage_key, index)
    arrivals = {  # a cheap test per usage: a webhook without a request id, or a polled row
        key: _arrival(usages[index], owners[usages[index].remote_key_id])
        for key, index in first.items()
        if usages[index].request_id is None or usages[index].source == matching.POLL
    }
    return _Charging(owners, first, {owners[usages[i].remote_key_id] for i in first.values()}, arrivals)


def _arrival(usage: Usage, user_id: int) -> matching.Arrival:
    match_key = matching.fingerprint(usage.remote_key_id, usage.model, usage.prompt_tokens, usage.completion_tokens)
    source = matching.POLL if usage.source == matching.POLL else matching.WEBHOOK
    return matching.Arrival(
        usage.usage_key, user_id, usage.remote_key_id, source, match_key, usage.used_at, usage.credit_cost
    )


def _settle(
    connection: Connection, charging: _Charging, locked: Mapping[int, tuple[int, int, int]], batch: Batch
) -> matching.Settled:
    """``matching.settle`` for the arrivals that may pair (none, on the webhook hot path with request ids)."""
    if not charging.arrivals:
        return matching.Settled(set(), set(), Counter())
    arrivals = charging.arrivals.values()
    return matching.settle(
        connection,
        [a for a in arrivals if a.source == matching.WEBHOOK],
        [a for a in arrivals if a.source == matching.POLL],
        {user_id: waiting for user_id, (_, waiting, _) in locked.items()},
        batch.paired,
        batch.rules.match_seconds,
        batch.now,
    )


def _insert_records(
    connection: Connection, usages: Sequence[Usage], charging: _Charging, settled: matching.Settled, batch: Batch
) -> dict[str, int] | None:
    """Insert the records of the usages not settled by matching; the ids of those written (the new ones)."""
    skip = settled.known | settled.matched
    rows = [
        _usage_row(usages[index], charging.owners[usages[index].remote_key_id], batch.now)
        for key, index in sorted(charging.first.items())
        if not skip or key not in skip
    ]
    return insert_new_ids(connection, usage_records, rows, "usageKey", exact=batch.exact)


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


@dataclass(slots=True)
class _Plan:
    """What charging the batch comes to, before it is written."""

    outcomes: list[UsageOutcome] = field(default_factory=list)
    transactions: list[tuple[Usage, int, int]] = field(default_factory=list)  # (usage, user, balance after)
    balances: dict[int, int] = field(default_factory=dict)  # the users whose balance changed: their new one
    before: dict[int, int] = field(default_factory=dict)  # and their balance before the batch
    refused: list[str] = field(default_factory=list)  # usage keys written but not charged (out of range)
    opened: list[matching.Arrival] = field(default_factory=list)  # charged, open for their other half


def _plan(
    usages: Sequence[Usage],
    charging: _Charging,
    settled: matching.Settled,
    records: Mapping[str, int],
    balances: Mapping[int, int],
) -> _Plan:
    """Each usage's outcome, in order: charged when its record was written here (the first of its key),
    matched when it paired, a duplicate otherwise; the balances it moves."""
    plan = _Plan()
    running = dict(balances)
    for index, usage in enumerate(usages):
        user_id = charging.owners.get(usage.remote_key_id)
        if user_id is None:
            plan.outcomes.append(UsageOutcome(UsageStatus.UNKNOWN_KEY))
        elif charging.first[usage.usage_key] != index:
            plan.outcomes.append(UsageOutcome(UsageStatus.DUPLICATE, user_id))
        elif usage.usage_key in settled.matched:
            plan.outcomes.append(UsageOutcome(UsageStatus.MATCHED, user_id))
        elif usage.usage_key not in records:
            plan.outcomes.append(UsageOutcome(UsageStatus.DUPLICATE, user_id))
        elif running[user_id] - usage.credit_cost < -MAX_BALANCE:  # a cost is never negative: only the floor
            plan.refused.append(usage.usage_key)
            plan.outcomes.append(UsageOutcome(UsageStatus.OUT_OF_RANGE, user_id, running[user_id]))
        else:
            plan.before.setdefault(user_id, running[user_id])
            running[user_id] -= usage.credit_cost
            plan.balances[user_id] = running[user_id]
            plan.transactions.append((usage, user_id, running[user_id]))
            if usage.usage_key in charging.arrivals:
                plan.opened.append(charging.arrivals[usage.usage_key])
            plan.outcomes.append(UsageOutcome(UsageStatus.CHARGED, user_id, running[user_id]))
    return plan


def _write(
    connection: Connection,
    usages: Sequence[Usage],
    charging: _Charging,
    settled: matching.Settled,
    plan: _Plan,
    records: Mapping[str, int],
    batch: Batch,
) -> None:
    if plan.refused:  # written a moment ago by this transaction, so nobody else has seen them
        connection.execute(usage_records.delete().where(usage_records.c.usageKey.in_(plan.refused)))
    rows = [
        {
            "userId": user_id,
            "type": "usage",
            "amount": -usage.credit_cost,
            "balance": balance,
            "reference": f"usage:{usage.usage_key}",
            "usageRecordId": records[usage.usage_key],
            "reason": usage.model,
            "source": usage.source,
            "createdAt": batch.now,
        }
        for usage, user_id, balance in plan.transactions
    ]
    execute_many(connection, "usage_transactions", lambda _: credit_transactions.insert(), rows)
    set_balances(connection, plan.balances, batch.now)
    if plan.balances:
        crossed(connection, plan.before, plan.balances, batch.now, batch.rules)
        learn_gateway_users(connection, usages, charging.owners, batch.now, batch.rules)
    if plan.opened or settled.polls_taken:
        insert_all(connection, usage_matches, matching.open_rows(plan.opened, records))
        waiting = Counter((a.user_id, a.remote_key_id) for a in plan.opened if a.source == matching.POLL)
        waiting.subtract(settled.polls_taken)
        matching.count_open_polls(connection, waiting)
