"""Balances crossing a line: a user is **suspended** while their balance is at or below ``suspend_at``
and **resumed** when it goes above; ``low_at`` (optional) marks a balance getting low.

The ledger calls ``crossed`` with the balances before and after each change, inside the transaction that
makes it, under the users' row locks. A crossing writes, in that same transaction, the gateway intent
(``gateway_states``: the latest intent per user wins) and the operator's alert (``outbox_events``): a
crash after the commit loses neither, and a redelivery, a duplicate or a refused change, which change no
balance, write nothing.

What to watch comes from the settings of the process that opened the database: ``watch_balances`` ties
it to the engine (every entry point opens the ledger with ``open_ledger``); an engine nobody watches
(tests, tools) crosses silently.
"""

import json
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from weakref import WeakKeyDictionary

import sqlalchemy as sa
from sqlalchemy import Connection, Engine

from creditrelay.schema.database import make_engine
from creditrelay.schema.outbox import PENDING
from creditrelay.schema.settings import Settings
from creditrelay.schema.tables import gateway_states, outbox_events, users

if TYPE_CHECKING:
    from creditrelay.billing.ledger import Usage

SUSPEND, RESUME = "suspend", "resume"
ALERT_LOW, ALERT_DEPLETED, ALERT_RESTORED = "balance.low", "balance.depleted", "balance.restored"


@dataclass(frozen=True)
class BalanceWatch:
    enforce: bool = False  # write gateway intents (GATEWAY_ENFORCEMENT is not off)
    alerts: bool = False  # write alerts (ALERT_WEBHOOK_URL is set)
    suspend_at: int = 0
    low_at: int | None = None
    learn_users: bool = False  # keep the gateway's user ids it reports (GATEWAY_ENFORCEMENT=users)

    @classmethod
    def of(cls, settings: Settings) -> "BalanceWatch":
        return cls(
            enforce=settings.gateway_enforcement != "off",
            alerts=settings.alert_webhook_url is not None,
            suspend_at=settings.suspend_at_balance,
            low_at=settings.low_balance_at,
            learn_users=settings.gateway_enforcement == "users",
        )

    def suspended(self, balance: int) -> bool:
        return balance <= self.suspend_at


_WATCHES: "WeakKeyDictionary[Engine, BalanceWatch]" = WeakKeyDictionary()


def watch_balances(engine: Engine, watch: BalanceWatch) -> Engine:
    _WATCHES[engine] = watch
    return engine


def open_ledger(settings: Settings) -> Engine:
    """The ledger's database as every entry point opens it: watched as the settings say."""
    engine = make_engine(settings.database_url, lock_timeout=settings.database_lock_timeout)
    return watch_balances(engine, BalanceWatch.of(settings))


def watch_of(connection: Connection) -> BalanceWatch | None:
    return _WATCHES.get(connection.engine)


def crossed(connection: Connection, before: Mapping[int, int], after: Mapping[int, int], now: datetime) -> None:
    """Write what the users whose balance went from ``before`` to ``after`` crossed (see the module)."""
    watch = watch_of(connection)
    if watch is None or not (watch.enforce or watch.alerts):
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
    connection: Connection, usages: "Sequence[Usage]", owners: Mapping[str, int], now: datetime
) -> None:
    """Keep the gateway's user id of each user that has none yet (an operator's, set with ``key link
    --gateway-user``, is never replaced), as the usages report it; only where the watch asks for it."""
    watch = watch_of(connection)
    if watch is None or not watch.learn_users:
        return
    learned = {
        owners[u.remote_key_id]: u.gateway_user_id for u in usages if u.gateway_user_id and u.remote_key_id in owners
    }
    for user_id, gateway_user_id in sorted(learned.items()):
        found = connection.execute(
            users.update()
            .where(users.c.id == user_id, users.c.gatewayUserId.is_(None))
            .values(gatewayUserId=gateway_user_id)
        ).rowcount
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
    watch = watch_of(connection)
    if watch is None or not watch.enforce:
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
            "timestamp": now.isoformat(timespec="seconds") + "Z",
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
