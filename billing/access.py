"""What the pages, the allowance endpoint and the metrics read of enforcement: a user's gateway state and
calls, whether a key may be served now, and the counts of suspensions, pending intents and alerts; and the
operator's "suspend now" / "resume now". Nothing here calls the gateway (``billing.enforcement`` does)."""

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection

from creditrelay.billing.holds import due_grants, held
from creditrelay.billing.ledger import UnknownUser
from creditrelay.billing.rows import lock_balances
from creditrelay.billing.watch import RESUME, SUSPEND, queue_intents
from creditrelay.schema.outbox import DEAD, PENDING
from creditrelay.schema.tables import api_keys, gateway_calls, gateway_states, outbox_events, users


@dataclass(frozen=True)
class Standing:
    """A user's latest word to the gateway: the intent, whether the gateway has not confirmed it yet, and
    what it last refused."""

    desired: str  # suspend | resume
    pending: bool
    last_error: str | None


@dataclass(frozen=True)
class UserAccess:
    """What the admin pages show of a user's enforcement."""

    suspended: bool
    pending: bool
    last_error: str | None
    calls: list[dict[str, Any]]
    standing: Standing | None = None  # None: the gateway was never told anything about the user


def standings(connection: Connection, user_ids: Collection[int]) -> dict[int, Standing]:
    """The standing of each of these users the gateway was ever told about (the users list's page)."""
    if not user_ids:
        return {}
    states = gateway_states.c
    query = sa.select(states.userId, states.desired, states.version, states.applied, states.lastError).where(
        states.userId.in_(sorted(user_ids))
    )
    return {
        int(row.userId): Standing(row.desired, row.version > row.applied, row.lastError)
        for row in connection.execute(query)
    }


def access_of(connection: Connection, user_id: int, limit: int = 20) -> UserAccess:
    state = connection.execute(sa.select(gateway_states).where(gateway_states.c.userId == user_id)).one_or_none()
    calls = connection.execute(
        sa.select(gateway_calls)
        .where(gateway_calls.c.userId == user_id)
        .order_by(gateway_calls.c.id.desc())
        .limit(limit)
    )
    return UserAccess(
        suspended=state is not None and state.desired == SUSPEND,
        pending=state is not None and state.version > state.applied,
        last_error=None if state is None else state.lastError,
        calls=[{"target": c.target, "action": c.action, "ok": c.ok, "answer": c.answer, "at": c.at} for c in calls],
        standing=None if state is None else Standing(state.desired, state.version > state.applied, state.lastError),
    )


def operator_access(connection: Connection, user_id: int, desired: str, now: datetime, who: str = "admin") -> None:
    """An operator's "suspend now" or "resume now": the user's latest intent, whatever the balance says
    (the next change that crosses the line decides again), recorded beside the gateway's calls."""
    if desired not in (SUSPEND, RESUME):
        raise ValueError(desired)
    if lock_balances(connection, [user_id]).get(user_id) is None:
        raise UnknownUser(user_id)
    queue_intents(connection, [user_id], desired, now)
    row = {"userId": user_id, "target": "operator", "action": desired, "ok": True, "answer": f"{desired} now by {who}"}
    connection.execute(gateway_calls.insert().values(**row, at=now))


@dataclass(frozen=True)
class Allowance:
    """May the gateway serve a key now: its user's balance against the line, and creditrelay's latest word
    to the gateway about them."""

    allowed: bool
    balance: int
    suspended: bool
    available: int  # balance - open holds - SUSPEND_AT_BALANCE (billing.holds)


def allowance_of(connection: Connection, remote_key_id: str, suspend_at: int, now: datetime) -> Allowance | None:
    """One indexed read (the key, its user, their state); None for a key nobody has. A user with open
    holds or live grants costs a read of those too (what is held; a grant past expiry not yet ended)."""
    query = (
        sa.select(users.c.id, users.c.balance, users.c.liveGrants, users.c.openHolds, gateway_states.c.desired)
        .select_from(api_keys.join(users, users.c.id == api_keys.c.userId))
        .outerjoin(gateway_states, gateway_states.c.userId == users.c.id)
        .where(api_keys.c.remoteKeyId == remote_key_id)
    )
    row = connection.execute(query).one_or_none()
    if row is None:
        return None
    available = int(row.balance) - suspend_at
    if row.openHolds:
        available -= held(connection, [row.id], now)[row.id]
    if row.liveGrants:
        available -= due_grants(connection, row.id, now)
    return Allowance(row.balance > suspend_at, int(row.balance), row.desired == SUSPEND, available)


def counts(connection: Connection) -> dict[str, int]:
    """Users whose latest intent is a suspension, intents not yet confirmed by the gateway, and alerts
    waiting or given up on — each a range of an index (``desired``; ``nextAttemptAt``, set only while
    pending; the outbox's ``(status, nextAttemptAt)``), however many there ever were."""
    states, alerts = gateway_states.c, outbox_events.c
    row = connection.execute(
        sa.select(
            sa.select(sa.func.count()).where(states.desired == SUSPEND).scalar_subquery(),
            sa.select(sa.func.count()).where(states.nextAttemptAt.is_not(None)).scalar_subquery(),
            sa.select(sa.func.count()).where(alerts.status == PENDING).scalar_subquery(),
            sa.select(sa.func.count()).where(alerts.status == DEAD).scalar_subquery(),
        )
    ).one()
    names = ("suspended", "pending", "alerts_pending", "alerts_dead")
    return {name: int(value or 0) for name, value in zip(names, row, strict=True)}
