"""Telling the gateway to stop (or resume) serving a user: each user's latest intent in
``gateway_states`` (``billing.watch`` writes it with the balance change that crossed the line) is pushed
by an enforcer — one pass of ``creditrelay enforce``, or a loop inside every ``serve``.

Several enforcers share the work safely: a user's intent is claimed with a lease (one ``UPDATE`` that
only one of them can win), pushed, and settled only by the enforcer holding the lease. A newer intent
written meanwhile has a newer version, so it is pushed next, and the last intent wins. A failed push is
retried with backoff (``tenacity``, a few times within the pass; then later passes, further apart);
every call and its answer is recorded in ``gateway_calls``.
"""

import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any, Protocol, cast

import sqlalchemy as sa
import structlog
from sqlalchemy import Connection, Engine
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from creditrelay.billing.watch import SUSPEND
from creditrelay.schema.database import run_transaction, utc
from creditrelay.schema.errors import UpstreamError
from creditrelay.schema.tables import api_keys, gateway_calls, gateway_states, users
from creditrelay.schema.wire import plain_int

log = structlog.get_logger()
TOKENS, USERS, LITELLM = "tokens", "users", "litellm"
MAX_BACKOFF = 3600.0


class GatewayAccess(Protocol):
    """new-api: its tokens by id, its users by id."""

    def set_token_status(self, token_id: int, enabled: bool) -> None: ...

    def set_user_enabled(self, user_id: int, enabled: bool) -> None: ...


class KeyAccess(Protocol):
    """LiteLLM: its virtual keys, by key hash."""

    def set_key_enabled(self, key: str, enabled: bool) -> None: ...


@dataclass(frozen=True)
class EnforceConfig:
    mode: str  # tokens | users (new-api) | litellm
    admin_user_id: int | None = None  # the gateway account creditrelay calls as: never disabled
    lease: float = 30.0  # seconds a claimed intent is this enforcer's
    batch: int = 50
    attempts: int = 3  # tries per call within a pass
    wait: float = 0.2  # first wait between those tries (doubling)


@dataclass
class EnforceReport:
    applied: int = 0
    failed: int = 0
    calls: int = 0
    failed_calls: int = 0
    errors: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "applied": self.applied,
            "failed": self.failed,
            "calls": self.calls,
            "failedCalls": self.failed_calls,
            "errors": self.errors[:20],
        }


@dataclass(frozen=True)
class _Call:
    target: str
    ok: bool
    answer: str


class Enforcer:
    def __init__(
        self,
        engine: Engine,
        gateway: GatewayAccess | KeyAccess,
        config: EnforceConfig,
        *,
        owner: str | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.gateway = gateway
        self.config = config
        self.owner = owner or f"{os.getpid()}:{id(self):x}:{socket.gethostname()}"[:64]  # unique part first
        self.clock = clock  # the time written to the database
        self.monotonic = monotonic  # what a push's deadline is measured on

    def run_once(self) -> EnforceReport:
        """Push every intent due now that no other enforcer holds."""
        report = EnforceReport()
        for user_id in run_transaction(self.engine, self._due, read_only=True):
            claimed = run_transaction(self.engine, partial(self._claim, user_id=user_id))
            if claimed is not None:
                self._push(user_id, *claimed, report)
        return report

    def _now(self) -> datetime:
        return utc(self.clock())

    def _due(self, connection: Connection) -> list[int]:
        now = self._now()
        states = gateway_states.c
        query = (
            sa.select(states.userId)
            .where(states.version > states.applied, states.nextAttemptAt <= now)
            .where(sa.or_(states.leaseUntil.is_(None), states.leaseUntil <= now))
            .order_by(states.nextAttemptAt)
            .limit(self.config.batch)
        )
        return list(connection.scalars(query))

    def _claim(self, connection: Connection, user_id: int) -> tuple[str, int, list[str]] | None:
        """The user's intent, version and targets, if this enforcer won the lease on them."""
        now = self._now()
        states = gateway_states.c
        won = connection.execute(
            gateway_states.update()
            .where(states.userId == user_id, states.version > states.applied, states.nextAttemptAt <= now)
            .where(sa.or_(states.leaseUntil.is_(None), states.leaseUntil <= now))
            .values(leaseOwner=self.owner, leaseUntil=now + timedelta(seconds=self.config.lease))
        ).rowcount
        if won != 1:
            return None
        desired, version = connection.execute(
            sa.select(states.desired, states.version).where(states.userId == user_id)
        ).one()
        return desired, version, self._targets(connection, user_id)

    def _targets(self, connection: Connection, user_id: int) -> list[str]:
        if self.config.mode in (TOKENS, LITELLM):
            keys = connection.scalars(sa.select(api_keys.c.remoteKeyId).where(api_keys.c.userId == user_id))
            return [f"{'token' if self.config.mode == TOKENS else 'key'} {key}" for key in sorted(keys)]
        gateway_user = connection.execute(sa.select(users.c.gatewayUserId).where(users.c.id == user_id)).scalar()
        return [] if gateway_user is None else [f"user {gateway_user}"]

    def _push(self, user_id: int, desired: str, version: int, targets: Sequence[str], report: EnforceReport) -> None:
        """Call the gateway for each target, within half the lease (each call is bounded by the client's
        timeout and ``attempts``): targets left when the time is up fail this pass, and are tried again."""
        enabled = desired != SUSPEND
        if self.config.mode == USERS and not targets:  # parked: pushed once the id is known (watch.learn…)
            run_transaction(self.engine, lambda c: self._settle(c, user_id, desired, version, [], []))
            report.applied += 1
            return
        deadline = self.monotonic() + self.config.lease / 2
        calls: list[_Call] = []
        for target in targets:
            if self.monotonic() > deadline:
                calls.append(_Call(target, False, "not called: this push ran out of its lease's time"))
            else:
                calls.append(self._call(target, enabled))
        failed = [c for c in calls if not c.ok]
        report.calls += len(calls)
        report.failed_calls += len(failed)
        run_transaction(self.engine, lambda c: self._settle(c, user_id, desired, version, calls, failed))
        if failed:
            report.failed += 1
            report.errors.append(f"user {user_id}: {failed[0].target}: {failed[0].answer}")
            log.warning("gateway_push_failed", user_id=user_id, desired=desired, error=failed[0].answer)
        else:
            report.applied += 1
            log.info("gateway_pushed", user_id=user_id, desired=desired, targets=len(calls))

    def _call(self, target: str, enabled: bool) -> _Call:
        kind, _, ident = target.partition(" ")
        change: Callable[[], None]
        if kind == "key":  # LiteLLM: the key (its hash) as it is
            change = partial(cast(KeyAccess, self.gateway).set_key_enabled, ident, enabled)
        else:
            number = plain_int(ident)
            if number is None or number <= 0:
                return _Call(target, False, f"not a gateway {kind} id: {ident[:40]!r}")
            if kind == "user" and number == self.config.admin_user_id and not enabled:
                return _Call(target, False, "refused: that is the account creditrelay calls the gateway as")
            gateway = cast(GatewayAccess, self.gateway)
            change = partial(gateway.set_token_status if kind == "token" else gateway.set_user_enabled, number, enabled)
        retrying = Retrying(
            retry=retry_if_exception_type(UpstreamError),
            stop=stop_after_attempt(self.config.attempts),
            wait=wait_exponential(multiplier=self.config.wait, max=5),
            reraise=True,
        )
        try:
            retrying(change)
        except UpstreamError as error:
            return _Call(target, False, _said(str(error)))
        return _Call(target, True, "ok")

    def _settle(
        self, connection: Connection, user_id: int, desired: str, version: int, calls: list[_Call], failed: list[_Call]
    ) -> None:
        now = self._now()
        if calls:
            rows = [
                {"userId": user_id, "target": c.target, "action": desired, "ok": c.ok, "answer": c.answer, "at": now}
                for c in calls
            ]
            connection.execute(gateway_calls.insert(), rows)
        states = gateway_states.c
        mine = gateway_states.update().where(states.userId == user_id, states.leaseOwner == self.owner)
        if not failed:
            # done: applied, and out of the due index unless a newer intent came meanwhile
            settled = mine.values(
                applied=version,
                attempts=0,
                leaseOwner=None,
                leaseUntil=None,
                lastError=None,
                nextAttemptAt=sa.case((states.version > version, states.nextAttemptAt), else_=None),
            )
        else:
            attempts, current = connection.execute(
                sa.select(states.attempts, states.version).where(states.userId == user_id)
            ).one()
            wait = min(MAX_BACKOFF, 5.0 * 2 ** min(attempts, 20)) if current == version else 0.0
            settled = mine.values(
                attempts=states.attempts + 1 if current == version else 0,
                nextAttemptAt=now + timedelta(seconds=wait),
                leaseOwner=None,
                leaseUntil=None,
                lastError=_said(f"{failed[0].target}: {failed[0].answer}"),
            )
        if connection.execute(settled).rowcount != 1 and calls:
            # the lease ran out while calling: another enforcer may have pushed a newer intent that these
            # late calls just undid, so the current intent is pushed again
            connection.execute(
                gateway_states.update()
                .where(states.userId == user_id)
                .values(version=states.version + 1, nextAttemptAt=now, attempts=0, updatedAt=now)
            )


def _said(text: str) -> str:
    """What a gateway said, as a column keeps it: 255 characters, a NUL written out (PostgreSQL stores none,
    and a gateway's error body may hold one)."""
    return text.replace("\x00", "\\u0000")[:255]
