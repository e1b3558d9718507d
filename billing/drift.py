"""Reading the gateway's access back (``creditrelay reconcile``): each linked key's (or gateway user's)
state against what its user's balance says, and, with ``--fix``, the intent the balance says queued
again for the enforcer (``billing.enforcement``) to push.

A requeued intent is a new version, so its push starts over: the gateway changed under us, and what it
confirmed before no longer says what it does now.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, cast

import sqlalchemy as sa
from sqlalchemy import Connection, Engine

from creditrelay.billing.comparison import Finding
from creditrelay.billing.enforcement import LITELLM, TOKENS
from creditrelay.billing.rows import lock_balances
from creditrelay.billing.watch import RESUME, SUSPEND, queue_intents
from creditrelay.schema.errors import UpstreamError
from creditrelay.schema.tables import api_keys, users
from creditrelay.schema.transactions import run_transaction
from creditrelay.schema.wire import plain_int


class GatewayReader(Protocol):
    def token_enabled(self, token_id: int) -> bool: ...

    def user_enabled(self, user_id: int) -> bool: ...


class KeyReader(Protocol):
    def key_enabled(self, key: str) -> bool: ...


@dataclass(frozen=True)
class Drift:
    """What the gateway says of a user's key (or gateway user) against what the balance says."""

    user_id: int
    desired: str  # what the balance says: suspend or resume
    finding: Finding


def gateway_drift(engine: Engine, reader: GatewayReader | KeyReader, mode: str, suspend_at: int) -> list[Drift]:
    """Read back every linked token (``tokens``), key (``litellm``) or gateway user (``users``) and compare
    it with what each user's balance says; a target the gateway will not describe is a finding too."""
    if mode in (TOKENS, LITELLM):
        query = sa.select(users.c.id, users.c.email, users.c.balance, api_keys.c.remoteKeyId.label("target")).join(
            api_keys, api_keys.c.userId == users.c.id
        )
    else:
        query = sa.select(users.c.id, users.c.email, users.c.balance, users.c.gatewayUserId.label("target")).where(
            users.c.gatewayUserId.is_not(None)
        )
    rows = run_transaction(engine, lambda c: list(c.execute(query.order_by(users.c.id))), read_only=True)
    found = []
    kind = {TOKENS: "token", LITELLM: "key"}.get(mode, "user")
    for row in rows:
        serve = row.balance > suspend_at
        desired = RESUME if serve else SUSPEND
        subject = f"{kind} {row.target}"
        try:
            enabled = _read_back(reader, kind, str(row.target))
        except UpstreamError as error:
            found.append(Drift(row.id, desired, Finding("gateway_unreadable", subject, row.email, str(error))))
            continue
        if enabled != serve:
            state = "enabled" if enabled else "disabled"
            detail = f"{state} at the gateway; balance {row.balance} says {'serve' if serve else 'suspend'}"
            found.append(Drift(row.id, desired, Finding("gateway_drift", subject, row.email, detail)))
    return found


def _read_back(reader: GatewayReader | KeyReader, kind: str, target: str) -> bool:
    """Whether the gateway serves a target now: a LiteLLM key by its hash, a new-api token or user by id."""
    if kind == "key":
        return cast(KeyReader, reader).key_enabled(target)
    number = plain_int(target)
    if number is None or number <= 0:
        raise UpstreamError(f"not a gateway {kind} id")
    gateway = cast(GatewayReader, reader)
    return (gateway.token_enabled if kind == "token" else gateway.user_enabled)(number)


def requeue_drift(engine: Engine, drift: Sequence[Drift], suspend_at: int, now: datetime) -> int:
    """Queue, for each drifted user, the intent their balance says now — read under the row lock, not the
    balance the drift was found with (``reconcile --fix``); how many users."""
    drifted = sorted({d.user_id for d in drift if d.finding.kind == "gateway_drift"})

    def work(connection: Connection) -> None:
        balances = lock_balances(connection, drifted)
        for desired in (SUSPEND, RESUME):
            chosen = [u for u, b in balances.items() if (b <= suspend_at) == (desired == SUSPEND)]
            queue_intents(connection, chosen, desired, now)

    if drifted:
        run_transaction(engine, work)
    return len(drifted)
