"""Reconciliation: does the ledger add up, does it match new-api, and is anything stuck as failed?

1. The ledger: every usage record has exactly one usage transaction and vice versa; each user's balance
   equals the sum of their transactions and their newest transaction's ``balance``.
2. Upstream against local, over a window: every new-api consume log must be a usage record with the
   same usage key (missing), and every local usage with a request id must be upstream (extra); a
   per-token table compares counts and credits.
3. Webhook deliveries left ``failed``.

``--fix`` charges the missing upstream usage and re-runs the failed deliveries through billing (both
idempotent); it never touches a balance that does not add up — that calls for a person.
"""

import json
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection, Engine

from creditrelay.billing.comparison import Finding, TokenSummary, compare_upstream
from creditrelay.billing.deliveries import record_deliveries
from creditrelay.billing.drift import Drift, requeue_drift
from creditrelay.billing.gateways.newapi import ConsumeLog
from creditrelay.billing.polling import PollConfig, Poller, bill_logs
from creditrelay.schema.database import utc
from creditrelay.schema.money import exact_sum, summed
from creditrelay.schema.shapes import to_json
from creditrelay.schema.tables import (
    credit_grants,
    credit_holds,
    credit_transactions,
    reconcile_runs,
    usage_records,
    users,
    webhook_logs,
)
from creditrelay.schema.transactions import run_transaction
from creditrelay.schema.wire import EnvelopeError, parse_event

CHUNK = 500
LISTED = 1000  # failed deliveries a report names one by one


@dataclass
class ReconcileReport:
    window_start: int
    window_end: int
    upstream_checked: bool  # the gateway's usage log compared with the ledger
    findings: list[Finding] = field(default_factory=list)
    tokens: list[TokenSummary] = field(default_factory=list)
    fixed: dict[str, int] = field(default_factory=dict)  # what --fix did, counted
    unlisted: dict[str, int] = field(default_factory=dict)  # findings of a kind past the first ``LISTED``
    access_checked: bool = False  # the gateway's blocks read back against the balances (enforcement on)
    json_properties = ("ok", "discrepancies")

    def add(self, findings: Iterable[Finding]) -> None:
        """Keep the first ``LISTED`` findings of each kind by name, and count the rest (a report stays small
        enough to store and read, however large the backlog)."""
        listed: dict[str, int] = {}
        for finding in self.findings:
            listed[finding.kind] = listed.get(finding.kind, 0) + 1
        for finding in findings:
            if listed.get(finding.kind, 0) < LISTED:
                listed[finding.kind] = listed.get(finding.kind, 0) + 1
                self.findings.append(finding)
            else:
                self.unlisted[finding.kind] = self.unlisted.get(finding.kind, 0) + 1

    @property
    def discrepancies(self) -> int:
        return len(self.findings) + sum(self.unlisted.values())

    @property
    def ok(self) -> bool:
        return self.discrepancies == 0


def ledger_findings(connection: Connection) -> list[Finding]:
    """Balances that do not add up, and usage records or usage transactions without their pair."""
    newest = (
        sa.select(credit_transactions.c.balance)
        .where(credit_transactions.c.userId == users.c.id)
        .order_by(credit_transactions.c.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    total = [
        sa.select(part).where(credit_transactions.c.userId == users.c.id).scalar_subquery()
        for part in exact_sum(credit_transactions.c.amount, connection.dialect.name, "total")
    ]
    findings = []
    for email, balance, newest_balance, *parts in connection.execute(
        sa.select(users.c.email, users.c.balance, newest, *total)
    ):
        if balance != summed(parts) or balance != (newest_balance or 0):
            detail = (
                f"balance {balance}, sum of transactions {summed(parts)}, newest transaction's balance {newest_balance}"
            )
            findings.append(Finding("balance", email, email, detail))
    unpaired = (
        sa.select(usage_records.c.usageKey, usage_records.c.eventId, users.c.email)
        .join(users, users.c.id == usage_records.c.userId)
        .outerjoin(credit_transactions, credit_transactions.c.usageRecordId == usage_records.c.id)
        .where(credit_transactions.c.id.is_(None))
    )
    for record in connection.execute(unpaired):
        findings.append(Finding("usage_without_transaction", record.usageKey, record.email, f"event {record.eventId}"))
    orphan = (
        sa.select(credit_transactions.c.reference, users.c.email)
        .join(users, users.c.id == credit_transactions.c.userId)
        .outerjoin(usage_records, usage_records.c.id == credit_transactions.c.usageRecordId)
        .where(credit_transactions.c.type == "usage", usage_records.c.id.is_(None))
    )
    for entry in connection.execute(orphan):
        findings.append(Finding("transaction_without_usage", entry.reference, entry.email, "usage without its record"))
    return findings + share_findings(connection)


def share_findings(connection: Connection) -> list[Finding]:
    """Grants and holds that do not add up: live grants holding more than a positive balance, and the
    users' counts of live grants and open holds (what a charge reads to skip them) against the rows."""
    live = dict.fromkeys(
        connection.execute(sa.select(users.c.id).where((users.c.liveGrants != 0) | (users.c.openHolds != 0))).scalars()
    )
    grants = sa.select(credit_grants.c.userId, sa.func.count(), sa.func.sum(credit_grants.c.remaining))
    counted = {row[0]: (int(row[1]), int(row[2])) for row in connection.execute(
        grants.where(credit_grants.c.state == "live").group_by(credit_grants.c.userId))}  # fmt: skip
    holds = sa.select(credit_holds.c.userId, sa.func.count()).where(credit_holds.c.state == "open")
    held = {row[0]: int(row[1]) for row in connection.execute(holds.group_by(credit_holds.c.userId))}
    findings = []
    for user_id in sorted(set(live) | set(counted) | set(held)):
        row = connection.execute(
            sa.select(users.c.email, users.c.balance, users.c.liveGrants, users.c.openHolds).where(
                users.c.id == user_id
            )
        ).one()
        grant_count, remaining = counted.get(user_id, (0, 0))
        if remaining > max(row.balance, 0):
            detail = f"live grants hold {remaining} credits, the balance is {row.balance}"
            findings.append(Finding("grants_past_balance", row.email, row.email, detail))
        if (row.liveGrants, row.openHolds) != (grant_count, held.get(user_id, 0)):
            detail = (
                f"counted {row.liveGrants} live grants and {row.openHolds} open holds; "
                f"there are {grant_count} and {held.get(user_id, 0)}"
            )
            findings.append(Finding("grant_hold_counts", row.email, row.email, detail))
    return findings


def failed_deliveries(
    connection: Connection, after: tuple[datetime, int] | None = None, limit: int | None = None
) -> list[Any]:
    """Up to ``limit`` (``CHUNK``) failed deliveries past ``after`` (the last one's ``createdAt, id``), in the
    order of the ``(status, createdAt)`` index: ``id, createdAt, eventId, errorMsg, payload``."""
    logs = webhook_logs.c
    query = (
        sa.select(logs.id, logs.createdAt, logs.eventId, logs.errorMsg, logs.payload)
        .where(logs.status == "failed")
        .order_by(logs.createdAt, logs.id)
        .limit(limit or CHUNK)
    )
    if after is not None:  # the plain bound lets MySQL start its index range there
        query = query.where(logs.createdAt >= after[0], sa.tuple_(logs.createdAt, logs.id) > sa.tuple_(*after))
    return list(connection.execute(query))


def failed_findings(connection: Connection) -> tuple[list[Finding], int]:
    """A finding for each of the first ``LISTED`` failed deliveries, and how many more there are."""
    failed = webhook_logs.c.status == "failed"
    total = int(connection.execute(sa.select(sa.func.count()).where(failed)).scalar_one())
    rows = connection.execute(
        sa.select(webhook_logs.c.eventId, webhook_logs.c.errorMsg)
        .where(failed)
        .order_by(webhook_logs.c.id)
        .limit(LISTED)
    )
    findings = [Finding("failed_webhook", row.eventId, None, row.errorMsg or "failed") for row in rows]
    return findings, total - len(findings)


def _redeliver(connection: Connection, rows: Sequence[Any], now: datetime) -> Counter[str]:
    """Run stored failed deliveries through billing again; how many ended how."""
    events = []
    for row in rows:
        try:
            events.append(parse_event(row.payload.encode()))
        except EnvelopeError:
            continue
    outcomes = record_deliveries(connection, events, now)
    return Counter(f"failed webhooks now {o.status.value}" for o in outcomes)


class Reconciler:
    def __init__(
        self,
        engine: Engine,
        poller: Poller | None,
        config: PollConfig,
        progress: Callable[[str, int], None] | None = None,
        access: "Callable[[], list[Drift]] | None" = None,
        suspend_at: int = 0,
    ) -> None:
        self.engine = engine
        self.poller = poller
        self.config = config
        self.progress = progress  # told (what, how many) after each chunk --fix commits
        self.access = access  # reads the gateway's access back (GATEWAY_ENFORCEMENT on): its drift
        self.suspend_at = suspend_at

    def run(self, since: int, until: int, *, fix: bool, now: datetime) -> ReconcileReport:
        logs = self.poller.fetch(since, until) if self.poller is not None else []
        window = (utc(since), utc(until))
        report = ReconcileReport(
            since, until, upstream_checked=self.poller is not None, access_checked=self.access is not None
        )
        if fix:
            report.fixed = self._repair(logs, window, now)
        drift = self.access() if self.access is not None else []
        if fix and (requeued := requeue_drift(self.engine, drift, self.suspend_at, now)):
            report.fixed["users whose gateway access was queued again"] = requeued
            drift = [d for d in drift if d.finding.kind != "gateway_drift"]  # the enforcer's to push now

        def check(connection: Connection) -> None:
            report.findings, report.unlisted = [], {}
            report.add(ledger_findings(connection))
            report.add(d.finding for d in drift)
            if self.poller is not None:
                upstream, report.tokens, _ = compare_upstream(connection, logs, window, self.config)
                report.add(upstream)
            listed, more = failed_findings(connection)
            report.add(listed)
            if more:
                report.unlisted["failed_webhook"] = report.unlisted.get("failed_webhook", 0) + more
            connection.execute(
                reconcile_runs.insert().values(
                    startedAt=now,
                    windowStart=window[0],
                    windowEnd=window[1],
                    fixed=fix,
                    discrepancies=report.discrepancies,
                    report=json.dumps(to_json(report)),
                )
            )

        run_transaction(self.engine, check)
        return report

    def _repair(self, logs: Sequence[ConsumeLog], window: tuple[datetime, datetime], now: datetime) -> dict[str, int]:
        """Charge the missing upstream usage and re-run the failed deliveries, ``CHUNK`` at a time, each
        chunk its own transaction (idempotent, so a run cut short is simply run again)."""
        _, _, missing = run_transaction(
            self.engine, partial(compare_upstream, logs=logs, window=window, config=self.config)
        )
        charged = 0
        for start in range(0, len(missing), CHUNK):
            chunk = missing[start : start + CHUNK]
            charged += run_transaction(self.engine, partial(bill_logs, rows=chunk, config=self.config, now=now)).charged
            self._told("missing usage", len(chunk))
        fixed: Counter[str] = Counter({"missing upstream usages charged": charged} if missing else {})
        after = None
        while rows := run_transaction(self.engine, partial(failed_deliveries, after=after), read_only=True):
            fixed += run_transaction(self.engine, partial(_redeliver, rows=rows, now=now))
            after = (rows[-1].createdAt, rows[-1].id)
            self._told("failed deliveries", len(rows))
        return dict(sorted(fixed.items()))

    def _told(self, what: str, count: int) -> None:
        if self.progress is not None:
            self.progress(what, count)
