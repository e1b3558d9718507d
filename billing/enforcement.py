"""Telling the gateway to stop (or resume) serving a user: each user's latest intent in
``gateway_states`` (``billing.watch`` writes it with the balance change that crossed the line) is pushed
by an enforcer — one pass of ``creditrelay enforce``, or a loop inside every ``serve``.

Several enforcers share the work safely: a user's intent is claimed with a lease (one ``UPDATE`` that
only one of them can win), pushed, and settled only by the enforcer holding the lease. A newer intent
written meanwhile has a newer version, so it is pushed next, and the last intent wins.

A push makes progress however slow the gateway: it calls a bounded number of targets (a user's keys) at
once, starts none after half its lease, and the targets the gateway confirmed are kept with the intent
(``progress``, for its ``progressVersion``), so the next pass — due at once — calls only the others. A
newer intent starts over. A failed call is retried with backoff (``tenacity``, a few times within the
pass); a push that confirmed nothing is retried in later passes, further apart. Every call and its answer
is recorded in ``gateway_calls``.
"""

import json
import os
import socket
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Protocol, cast

import sqlalchemy as sa
import structlog
from sqlalchemy import Connection, Engine
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from creditrelay.billing.polling import passing
from creditrelay.billing.watch import SUSPEND
from creditrelay.schema.database import utc
from creditrelay.schema.errors import UpstreamError
from creditrelay.schema.tables import api_keys, gateway_calls, gateway_states, users
from creditrelay.schema.transactions import run_transaction
from creditrelay.schema.wire import plain_int

log = structlog.get_logger()
TOKENS, USERS, LITELLM = "tokens", "users", "litellm"
MAX_BACKOFF = 3600.0
REPORTED_ERRORS = 20  # a pass's report names its first failures, not all of them


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
    concurrency: int = 8  # calls of one push in flight at once


@dataclass
class EnforceReport:
    applied: int = 0  # intents the gateway now carries out, every target confirmed
    failed: int = 0  # pushes with a failed call
    calls: int = 0
    failed_calls: int = 0
    pending: int = 0  # targets left uncalled when a push's time was up: due again at once
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Claim:
    desired: str
    version: int
    targets: list[str]
    confirmed: frozenset[str]  # the targets the gateway already confirmed for this version


@dataclass(frozen=True)
class _Call:
    target: str
    ok: bool
    answer: str


@dataclass(frozen=True)
class _Pushed:
    calls: list[_Call]  # in the targets' order
    uncalled: list[str]  # not started: the push's time was up
    confirmed: frozenset[str]  # for the claimed version, before this push and by it

    @property
    def failed(self) -> list[_Call]:
        return [c for c in self.calls if not c.ok]

    @property
    def done(self) -> bool:
        return not self.failed and not self.uncalled

    @property
    def progressed(self) -> bool:
        return any(c.ok for c in self.calls)


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
            claim = run_transaction(self.engine, partial(self._claim, user_id=user_id))
            if claim is not None:
                self._push(user_id, claim, report)
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

    def _claim(self, connection: Connection, user_id: int) -> _Claim | None:
        """The user's intent, its targets and what of it the gateway confirmed, if this enforcer won the
        lease on them. Progress counts only for the version it was recorded for: a newer intent starts
        over."""
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
        desired, version, progress, progress_version = connection.execute(
            sa.select(states.desired, states.version, states.progress, states.progressVersion).where(
                states.userId == user_id
            )
        ).one()
        confirmed = read_progress(progress) if progress_version == version else frozenset()
        return _Claim(desired, version, self._targets(connection, user_id), confirmed)

    def _targets(self, connection: Connection, user_id: int) -> list[str]:
        if self.config.mode in (TOKENS, LITELLM):
            keys = connection.scalars(sa.select(api_keys.c.remoteKeyId).where(api_keys.c.userId == user_id))
            return [f"{'token' if self.config.mode == TOKENS else 'key'} {key}" for key in sorted(keys)]
        gateway_user = connection.execute(sa.select(users.c.gatewayUserId).where(users.c.id == user_id)).scalar()
        return [] if gateway_user is None else [f"user {gateway_user}"]

    def _push(self, user_id: int, claim: _Claim, report: EnforceReport) -> None:
        """Call the gateway for each target it has not confirmed for this version yet, and settle."""
        if self.config.mode == USERS and not claim.targets:  # parked: pushed once the id is known (watch.learn…)
            pushed = _Pushed([], [], frozenset())
        else:
            waiting = [t for t in claim.targets if t not in claim.confirmed]
            calls, uncalled = self._call_all(waiting, enabled=claim.desired != SUSPEND)
            confirmed = claim.confirmed.union(c.target for c in calls if c.ok).intersection(claim.targets)
            pushed = _Pushed(calls, uncalled, confirmed)
        run_transaction(self.engine, lambda c: self._settle(c, user_id, claim, pushed))
        failed = pushed.failed
        report.calls += len(pushed.calls)
        report.failed_calls += len(failed)
        report.pending += len(pushed.uncalled)
        report.applied += int(pushed.done)
        if failed:
            report.failed += 1
            if len(report.errors) < REPORTED_ERRORS:
                report.errors.append(f"user {user_id}: {failed[0].target}: {failed[0].answer}")
            log.warning("gateway_push_failed", user_id=user_id, desired=claim.desired, error=failed[0].answer)
        if pushed.done:
            log.info("gateway_pushed", user_id=user_id, desired=claim.desired, targets=len(claim.targets))
        elif pushed.uncalled:
            log.info("gateway_push_continues", user_id=user_id, desired=claim.desired, pending=len(pushed.uncalled))

    def _call_all(self, targets: Sequence[str], enabled: bool) -> tuple[list[_Call], list[str]]:
        """Call the targets, ``concurrency`` at a time, starting none once half the lease has passed: the
        calls in flight then finish within the other half (each is bounded by the client's timeout and
        ``attempts``). The calls made, in the targets' order, and the targets not called.

        The gateway clients may be called from several threads at once: each sends through one
        ``httpx.Client``, which is made to be shared between threads, and keeps no other state."""
        if not targets:
            return [], []
        deadline = self.monotonic() + self.config.lease / 2

        def call(target: str) -> _Call | None:
            return None if self.monotonic() > deadline else self._call(target, enabled)

        workers = max(1, min(self.config.concurrency, len(targets)))
        with ThreadPoolExecutor(workers, thread_name_prefix="enforce") as pool:
            results = list(pool.map(call, targets))
        calls = [result for result in results if result is not None]
        return calls, [target for target, result in zip(targets, results, strict=True) if result is None]

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
            retry=retry_if_exception(passing),
            stop=stop_after_attempt(self.config.attempts),
            wait=wait_exponential(multiplier=self.config.wait, max=5),
            reraise=True,
        )
        try:
            retrying(change)
        except UpstreamError as error:
            return _Call(target, False, _said(str(error)))
        return _Call(target, True, "ok")

    def _settle(self, connection: Connection, user_id: int, claim: _Claim, pushed: _Pushed) -> None:
        """Record the calls, and the intent's next state — only while this enforcer holds its lease:
        applied once every target is confirmed; due again at once, with what was confirmed kept, when this
        push confirmed some (progress is not failure); else retried later, further apart each time."""
        now, desired, version = self._now(), claim.desired, claim.version
        if pushed.calls:
            rows = [
                {"userId": user_id, "target": c.target, "action": desired, "ok": c.ok, "answer": c.answer, "at": now}
                for c in pushed.calls
            ]
            connection.execute(gateway_calls.insert(), rows)
        states = gateway_states.c
        mine = gateway_states.update().where(states.userId == user_id, states.leaseOwner == self.owner)
        released = {"leaseOwner": None, "leaseUntil": None}
        failed = pushed.failed
        problem = f"{failed[0].target}: {failed[0].answer}" if failed else "not called: the push ran out of time"
        if pushed.done:
            # applied, and out of the due index unless a newer intent came meanwhile
            settled = mine.values(
                applied=version,
                attempts=0,
                lastError=None,
                progress=None,
                progressVersion=None,
                nextAttemptAt=sa.case((states.version > version, states.nextAttemptAt), else_=None),
                **released,
            )
        elif pushed.progressed:
            settled = mine.values(
                progress=write_progress(pushed.confirmed),
                progressVersion=version,
                nextAttemptAt=now,
                lastError=_said(problem) if failed else None,
                **released,
            )
        else:
            attempts, current = connection.execute(
                sa.select(states.attempts, states.version).where(states.userId == user_id)
            ).one()
            wait = min(MAX_BACKOFF, 5.0 * 2 ** min(attempts, 20)) if current == version else 0.0
            settled = mine.values(
                attempts=states.attempts + 1 if current == version else 0,
                nextAttemptAt=now + timedelta(seconds=wait),
                lastError=_said(problem),
                **released,
            )
        if connection.execute(settled).rowcount != 1 and pushed.calls:
            # the lease ran out while calling: another enforcer may have pushed a newer intent that these
            # late calls just undid, so the current intent is pushed again (a new version: from the start)
            connection.execute(
                gateway_states.update()
                .where(states.userId == user_id)
                .values(version=states.version + 1, nextAttemptAt=now, attempts=0, updatedAt=now)
            )


def read_progress(text: str | None) -> frozenset[str]:
    """The targets a ``progress`` column names: one per line, each a JSON string (a key id may hold any
    character). A line that is not one names nothing: calling a target again is always safe."""
    found = set()
    for line in (text or "").split("\n"):
        try:
            target = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(target, str):
            found.add(target)
    return frozenset(found)


def write_progress(targets: frozenset[str]) -> str:
    return "\n".join(json.dumps(target) for target in sorted(targets))


def _said(text: str) -> str:
    """What a gateway said, as a column keeps it: 255 characters, a NUL written out (PostgreSQL stores none,
    and a gateway's error body may hold one)."""
    return text.replace("\x00", "\\u0000")[:255]
