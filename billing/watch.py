"""Balances crossing a line: a user is **suspended** while their balance is at or below ``suspend_at``
and **resumed** when it goes above; ``low_at`` (optional) marks a balance getting low.

The ledger calls ``crossed`` with the balances before and after each change, inside the transaction that
makes it, under the users' row locks. A crossing writes, in that same transaction, the gateway intent
(``gateway_states``: the latest intent per user wins) and the operator's alert (``outbox_events``): a
crash after the commit loses neither, and a redelivery, a duplicate or a refused change, which change no
balance, write nothing.

What to watch is the ledger's rules (``billing.rules``), set where its engine was opened; an engine
opened without rules (tests, tools) crosses silently.
"""

import json
import uuid
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from creditrelay.billing.rules import LedgerRules, rules_of
from creditrelay.schema.outbox import PENDING
from creditrelay.schema.shapes import iso
from creditrelay.schema.statements import savepoint
from creditrelay.schema.tables import gateway_states, outbox_events, users

if TYPE_CHECKING:
    from creditrelay.billing.usage import Usage

SUSPEND, RESUME = "suspend", "resume"
ALERT_LOW, ALERT_DEPLETED, ALERT_RESTORED = "balance.low", "balance.depleted", "balance.restored"


def crossed(
    connection: Connection,
    before: Mapping[int, int],
    after: Mapping[int, int],
    now: datetime,
    rules: LedgerRules | None = None,
) -> None:
    """Write what the users whose balance went from ``before`` to ``after`` crossed (see the module), by
    ``rules`` (the connection's, unless the caller read them already)."""
    watch = rules_of(connection) if rules is None else rules
    if not (watch.enforce or watch.alerts):
        return
    suspends = [u for u, balance in after.items() if watch.suspended(balance) and not watch.suspended(before[u])]
    resumes = [u for u, balance in after.items() if watch.suspended(before[u]) and not watch.suspended(balance)]
    if watch.enforce:
        queue_intents(connection, suspends, SUSPEND, now)
        queue_intents(connection, resumes, RESUME, now)
    if watch.alerts:
        lows = []
        if watch.low_at is not None:
            lows = [u for u, balance in after.items() if balance < watch.low_at <= before[u]]
        alerts = [(u, ALERT_LOW, watch.low_at) for u in lows]
        alerts += [(u, ALERT_DEPLETED, watch.suspend_at) for u in suspends]
        alerts += [(u, ALERT_RESTORED, watch.suspend_at) for u in resumes]
        write_alerts(connection, alerts, after, now)


def learn_gateway_users(
    connection: Connection,
    usages: "Sequence[Usage]",
    owners: Mapping[str, int],
    now: datetime,
    rules: LedgerRules | None = None,
) -> None:
    """Keep the gateway's user id of each user that has none yet (an operator's, set with ``user
    set-gateway-user``, is never replaced), as the usages report it; only where the rules ask for it. The
    gateway account creditrelay calls as is nobody's, and a gateway user another user has is left to them
    (one gateway user bills one user: the column is unique)."""
    watch = rules_of(connection) if rules is None else rules
    if not watch.learn_users:
        return
    learned = {
        owners[u.remote_key_id]: u.gateway_user_id
        for u in usages
        if u.gateway_user_id and u.gateway_user_id != watch.admin_gateway_user and u.remote_key_id in owners
    }
    for user_id, gateway_user_id in sorted(learned.items()):
        try:
            with savepoint(connection, "learn_gateway_user"):
                found = connection.execute(
                    users.update()
                    .where(users.c.id == user_id, users.c.gatewayUserId.is_(None))
                    .values(gatewayUserId=gateway_user_id)
                ).rowcount
        except IntegrityError:  # another user has that gateway user
            continue
        if found:  # an intent parked for want of the id goes out now
            requeue(connection, user_id, now)


def queue_intents(connection: Connection, user_ids: Collection[int], desired: str, now: datetime) -> None:
    """Make ``desired`` each user's latest intent (a newer version; the enforcer applies the latest). The
    caller holds the users' row locks, so no other transaction writes these rows meanwhile."""
    for user_id in sorted(user_ids):
        changed = connection.execute(
            gateway_states.update()
            .where(gateway_states.c.userId == user_id)
            .values(
                desired=desired,
                version=gateway_states.c.version + 1,
                attempts=0,
                nextAttemptAt=now,
                lastError=None,
                updatedAt=now,
            )
        ).rowcount
        if not changed:
            connection.execute(
                gateway_states.insert().values(
                    userId=user_id, desired=desired, version=1, applied=0, attempts=0, nextAttemptAt=now, updatedAt=now
                )
            )


def requeue(connection: Connection, user_id: int, now: datetime) -> None:
    """Apply the user's current state at the gateway again (a key was linked, an operator asked)."""
    watch = rules_of(connection)
    if not watch.enforce:
        return
    balance = connection.execute(sa.select(users.c.balance).where(users.c.id == user_id)).scalar_one()
    queue_intents(connection, [user_id], SUSPEND if watch.suspended(balance) else RESUME, now)


def write_alerts(
    connection: Connection, alerts: list[tuple[int, str, int | None]], balances: Mapping[int, int], now: datetime
) -> None:
    """One outbox event per alert; its event id is the ``webhook-id`` the receiver sees on every retry."""
    if not alerts:
        return
    query = sa.select(users.c.id, users.c.email).where(users.c.id.in_({u for u, _, _ in alerts}))
    emails = {int(user_id): str(email) for user_id, email in connection.execute(query)}
    rows: list[dict[str, Any]] = []
    for user_id, kind, threshold in alerts:
        body = {
            "type": kind,
            "timestamp": iso(now, "seconds"),
            "data": {"userId": user_id, "email": emails[user_id], "balance": balances[user_id], "threshold": threshold},
        }
        rows.append(
            {
                "eventId": f"alert_{uuid.uuid4().hex}",
                "body": json.dumps(body, separators=(",", ":")),
                "status": PENDING,
                "attempts": 0,
                "nextAttemptAt": now,
                "createdAt": now,
            }
        )
    connection.execute(outbox_events.insert(), rows)
