"""Webhook deliveries: record each event id once in ``webhook_logs`` and bill the usage it carries.

Constraints decide every fate. Where inserts return what they wrote (SQLite, MariaDB) a batch goes
final-first. One read (a ``UNION ALL``) finds the batch's key owners and the log rows already stored;
events whose rows exist are judged from them, so a batch of duplicates writes nothing. For the others
the status each new log row ends with is known before billing (``ignored`` without usage, ``failed``
for an unknown key, else ``processed``, whether the usage is charged or was charged before), so their
log rows are inserted first, with it, ``ON CONFLICT DO NOTHING`` / ``INSERT IGNORE … RETURNING``; the
rows returned are this delivery's, the others (committed or being inserted by another delivery since the
read) are read back (an insert that meets another's uncommitted row waits for it, and READ COMMITTED
reads then see its commit, always with a final status).

Where inserts only count rows (MySQL) the usual path reads the batch's log rows, bills the new (and
previously failed) events, and inserts each new log row once with its final status. When that count is
short, a concurrent delivery of one of these event ids got in first: the work is redone claim-first —
log rows inserted as ``received`` before billing, so a row still ``received`` is this transaction's own.

Either way, a stored row with the same body is a duplicate (or, when ``failed``, retried: a key may have
been linked since), with another body a conflict. Money is guarded one level down: ``ledger.apply_usage``
charges a usage key only in the transaction whose insert wrote it.

Reads are never ``FOR UPDATE``: an insert already holds a shared lock on a duplicate row, and 40 racing
deliveries upgrading it to exclusive deadlock each other.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection, Engine

from creditrelay.billing.ledger import Usage, UsageOutcome, UsageStatus, apply_usage
from creditrelay.billing.matching import DEFAULT_TOLERANCE
from creditrelay.billing.rows import Shortfall, insert_new
from creditrelay.schema.database import utc
from creditrelay.schema.money import MAX_BALANCE
from creditrelay.schema.statements import execute_many, fetch_in, fetch_in_each, returns_inserted, savepoint
from creditrelay.schema.tables import api_keys, usage_matches, webhook_logs
from creditrelay.schema.transactions import run_transaction
from creditrelay.schema.wire import Event

RECEIVED, PROCESSED, FAILED, IGNORED = "received", "processed", "failed", "ignored"


class DeliveryStatus(StrEnum):
    CHARGED = "charged"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"
    UNBILLABLE = "unbillable"
    IGNORED = "ignored"


@dataclass(slots=True)
class DeliveryOutcome:  # a value, slotted rather than frozen for speed (see ledger.Usage)
    event_id: str
    status: DeliveryStatus
    error: str | None = None
    user_id: int | None = None
    balance: int | None = None


def usage_of(event: Event) -> Usage:
    assert event.usage is not None
    data = event.usage
    return Usage(
        usage_key=event.usage_key,
        remote_key_id=str(data.remoteKeyId),
        model=data.model,
        credit_cost=data.creditCost,
        used_at=utc(event.timestamp),
        source="webhook",
        event_id=event.event_id,
        request_id=data.requestId,
        prompt_tokens=data.promptTokens,
        completion_tokens=data.completionTokens,
        total_tokens=data.totalTokens,
        gateway_user_id=data.userId if isinstance(data.userId, int) and data.userId > 0 else None,
    )


def _log_row(event: Event, now: datetime, outcome: DeliveryOutcome | None = None) -> dict[str, Any]:
    return {
        "eventId": event.event_id,
        "eventType": event.event_type,
        "payload": event.payload,
        "payloadHash": event.payload_hash,
        "remoteKeyId": None if event.usage is None else str(event.usage.remoteKeyId),
        "status": RECEIVED if outcome is None else _FINAL.get(outcome.status, PROCESSED),
        "errorMsg": None if outcome is None else outcome.error,
        "processedAt": None if outcome is None else now,
        "createdAt": now,
    }


def _read(connection: Connection, event_ids: Sequence[str]) -> dict[str, tuple[str, str]]:
    """eventId -> (payloadHash, status) of the batch's rows that exist."""
    rows = fetch_in(
        connection,
        "read_logs",
        lambda ids: sa.select(webhook_logs.c.eventId, webhook_logs.c.payloadHash, webhook_logs.c.status).where(
            webhook_logs.c.eventId.in_(ids)
        ),
        list(event_ids),
    )
    return {event_id: (digest, status) for event_id, digest, status in rows}


def _unknown_key(event: Event) -> DeliveryOutcome:
    assert event.usage is not None
    key = event.usage.remoteKeyId
    error = f"unknown remoteKeyId {key}: no user has this gateway key (creditrelay key link {key} --user …)"
    return DeliveryOutcome(event.event_id, DeliveryStatus.UNBILLABLE, error)


def _from_usage(event: Event, outcome: UsageOutcome) -> DeliveryOutcome:
    if outcome.status is UsageStatus.UNKNOWN_KEY:
        return _unknown_key(event)
    if outcome.status is UsageStatus.OUT_OF_RANGE:
        assert event.usage is not None
        error = (
            f"creditCost {event.usage.creditCost} would take user {outcome.user_id}'s balance of {outcome.balance}"
            f" below -{MAX_BALANCE}: not charged"
        )
        return DeliveryOutcome(event.event_id, DeliveryStatus.UNBILLABLE, error, outcome.user_id, outcome.balance)
    status = DeliveryStatus.CHARGED if outcome.status is UsageStatus.CHARGED else DeliveryStatus.DUPLICATE  # or MATCHED
    return DeliveryOutcome(event.event_id, status, None, outcome.user_id, outcome.balance)


def _judge(
    connection: Connection, events: Sequence[Event], stored: dict[str, tuple[str, str]]
) -> tuple[dict[str, DeliveryOutcome], list[Event]]:
    """Outcomes of the events that need no billing given their stored log rows (absent: new), and the
    events to bill."""
    verdicts: dict[str, DeliveryOutcome] = {}
    to_bill: list[Event] = []
    differing = [e for e in events if stored.get(e.event_id, (e.payload_hash, ""))[0] != e.payload_hash]
    same = _same_events(connection, differing)
    for event in events:
        digest, status = stored.get(event.event_id, (event.payload_hash, RECEIVED))
        if digest != event.payload_hash and event.event_id not in same:
            verdicts[event.event_id] = DeliveryOutcome(
                event.event_id, DeliveryStatus.CONFLICT, "eventId already received with another body"
            )
        elif status not in (RECEIVED, FAILED):
            verdicts[event.event_id] = DeliveryOutcome(event.event_id, DeliveryStatus.DUPLICATE)
        elif event.usage is None:
            verdicts[event.event_id] = DeliveryOutcome(event.event_id, DeliveryStatus.IGNORED)
        else:
            to_bill.append(event)
    return verdicts, to_bill


def _bill(
    connection: Connection,
    events: Sequence[Event],
    now: datetime,
    *,
    strict: bool = False,
    owners: Mapping[str, int] | None = None,
    paired: set[str] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> dict[str, DeliveryOutcome]:
    usages = [usage_of(e) for e in events]
    outcomes = apply_usage(connection, usages, now, strict=strict, owners=owners, paired=paired, tolerance=tolerance)
    return {event.event_id: _from_usage(event, outcome) for event, outcome in zip(events, outcomes, strict=True)}


def _decide(
    connection: Connection,
    events: Sequence[Event],
    stored: dict[str, tuple[str, str]],
    now: datetime,
    *,
    strict: bool = False,
    tolerance: float = DEFAULT_TOLERANCE,
) -> dict[str, DeliveryOutcome]:
    """Each event's outcome given its stored log row (absent: new); bills what is to be billed."""
    verdicts, to_bill = _judge(connection, events, stored)
    return verdicts | _bill(connection, to_bill, now, strict=strict, tolerance=tolerance)


def _same_events(connection: Connection, events: Sequence[Event]) -> set[str]:
    """Of events whose bytes differ from the stored delivery, those that are the same JSON document."""
    if not events:
        return set()
    rows = fetch_in(
        connection,
        "stored_payloads",
        lambda ids: sa.select(webhook_logs.c.eventId, webhook_logs.c.payload).where(webhook_logs.c.eventId.in_(ids)),
        [e.event_id for e in events],
    )
    stored = dict(rows)
    return {e.event_id for e in events if e.event_id in stored and e.same_as(stored[e.event_id])}


def _optimistic(
    connection: Connection, events: Sequence[Event], now: datetime, tolerance: float
) -> dict[str, DeliveryOutcome]:
    """Read the batch's log rows, bill, then write each new log row once, with its final status.

    The inserts decide: if the log insert writes fewer rows than were new when read (another delivery of
    one of these events got in between), or the usage insert finds a usage charged before (a gateway
    re-sending under a new event id), ``Shortfall`` sends the caller back to its savepoint and the
    claim-first path, which sorts out every row.
    """
    stored = _read(connection, [e.event_id for e in events])
    verdicts = _decide(connection, events, stored, now, strict=True, tolerance=tolerance)
    new = [_log_row(e, now, verdicts[e.event_id]) for e in events if e.event_id not in stored]
    insert_new(connection, webhook_logs, new, "eventId", strict=True)
    _finish(connection, [verdicts[e.event_id] for e in events if stored.get(e.event_id, ("", ""))[1] == FAILED], now)
    return verdicts


def _final_first(
    connection: Connection, events: Sequence[Event], now: datetime, tolerance: float
) -> dict[str, DeliveryOutcome]:
    """Where inserts return what they wrote: the batch's key owners and stored log rows are read in one
    round trip; each new log row is written already with its final status (known before billing:
    ``ignored`` without usage, ``failed`` for an unknown key, else ``processed``), and the ``RETURNING``
    says which rows are this delivery's. A row that appeared between the read and the insert (another
    delivery's, committed meanwhile) is read back. A batch of duplicates writes nothing. The log rows are
    locked before the users, as everywhere, and outside the users' lock window."""
    owners, stored, paired = _known(connection, events)
    new = [e for e in events if e.event_id not in stored]
    expected = {e.event_id: _expected(e, owners) for e in new}
    written = insert_new(connection, webhook_logs, [_log_row(e, now, expected[e.event_id]) for e in new], "eventId")
    stored |= _read(connection, [e.event_id for e in new if e.event_id not in written])
    earlier = [e for e in events if e.event_id not in written]
    verdicts, to_bill = _judge(connection, earlier, stored)
    fresh = [e for e in new if e.event_id in written]
    verdicts |= {e.event_id: expected[e.event_id] for e in fresh if expected[e.event_id] is not _BILLABLE}
    to_bill += [e for e in fresh if expected[e.event_id] is _BILLABLE]
    verdicts |= _bill(connection, to_bill, now, owners=owners, paired=paired, tolerance=tolerance)
    finished = [verdicts[e.event_id] for e in earlier if stored[e.event_id][1] in (RECEIVED, FAILED)]
    unforeseen = [  # written as processed, then refused by the ledger (a balance out of range)
        verdicts[e.event_id]
        for e in fresh
        if expected[e.event_id] is _BILLABLE and verdicts[e.event_id].status is DeliveryStatus.UNBILLABLE
    ]
    _finish(connection, finished + unforeseen, now)
    return verdicts


def _known(
    connection: Connection, events: Sequence[Event]
) -> tuple[dict[str, int], dict[str, tuple[str, str]], set[str]]:
    """In one statement (a ``UNION ALL``): the owners of the batch's gateway keys (as ``ledger.key_owners``),
    its stored log rows (as ``_read``), and which of its usages without a request id have paired with a
    polled usage before (``matching.paired_keys``: a redelivery after its log row was cleaned up)."""
    keys = sorted({str(e.usage.remoteKeyId) for e in events if e.usage is not None})
    unkeyed = sorted(e.usage_key for e in events if e.usage is not None and e.usage.requestId is None)
    if not keys:
        return {}, _read(connection, [e.event_id for e in events]), set()

    def build(lists: Sequence[Sequence[sa.BindParameter[Any]]]) -> sa.CompoundSelect[Any]:
        owners = sa.select(
            sa.literal_column("'k'").label("kind"),
            api_keys.c.remoteKeyId.label("name"),
            api_keys.c.userId.label("owner"),
            sa.null().label("digest"),
            sa.null().label("status"),
        ).where(api_keys.c.remoteKeyId.in_(lists[0]))
        logs = sa.select(
            sa.literal_column("'l'"),
            webhook_logs.c.eventId,
            sa.null(),
            webhook_logs.c.payloadHash,
            webhook_logs.c.status,
        ).where(webhook_logs.c.eventId.in_(lists[1]))
        if len(lists) == 2:
            return sa.union_all(owners, logs)
        paired = sa.select(sa.literal_column("'p'"), usage_matches.c.pairedKey, sa.null(), sa.null(), sa.null()).where(
            usage_matches.c.pairedKey.in_(lists[2])
        )
        return sa.union_all(owners, logs, paired)

    lists = [keys, [e.event_id for e in events], *([unkeyed] if unkeyed else [])]
    rows = fetch_in_each(connection, "owners_logs_paired" if unkeyed else "owners_and_logs", build, lists)
    owners = {name: int(owner) for kind, name, owner, _, _ in rows if kind == "k"}
    stored = {name: (digest, status) for kind, name, _, digest, status in rows if kind == "l"}
    return owners, stored, {name for kind, name, _, _, _ in rows if kind == "p"}


_BILLABLE = DeliveryOutcome("", DeliveryStatus.CHARGED)  # logged as processed whether charged or a duplicate


def _expected(event: Event, owners: Mapping[str, int]) -> DeliveryOutcome:
    if event.usage is None:
        return DeliveryOutcome(event.event_id, DeliveryStatus.IGNORED)
    if str(event.usage.remoteKeyId) not in owners:
        return _unknown_key(event)
    return _BILLABLE


def _claim_first(
    connection: Connection, events: Sequence[Event], now: datetime, tolerance: float
) -> dict[str, DeliveryOutcome]:
    """Insert the new log rows as ``received`` first, then decide and bill, then write the final states."""
    insert_new(connection, webhook_logs, [_log_row(e, now) for e in events], "eventId")
    stored = _read(connection, [e.event_id for e in events])
    verdicts = _decide(connection, events, stored, now, tolerance=tolerance)
    _finish(connection, [verdicts[e.event_id] for e in events if stored[e.event_id][1] in (RECEIVED, FAILED)], now)
    return verdicts


def _finish(connection: Connection, outcomes: Sequence[DeliveryOutcome], now: datetime) -> None:
    rows = [
        {"new_status": _FINAL.get(o.status, PROCESSED), "error": o.error, "now": now, "event_id": o.event_id}
        for o in sorted(outcomes, key=lambda o: o.event_id)
    ]
    execute_many(connection, "finish_logs", lambda _: _FINISH, rows)


_FINAL = {DeliveryStatus.UNBILLABLE: FAILED, DeliveryStatus.IGNORED: IGNORED}
_FINISH = (
    webhook_logs.update()
    .where(webhook_logs.c.eventId == sa.bindparam("event_id"))
    .values(
        status=sa.bindparam("new_status"),
        errorMsg=sa.bindparam("error"),
        processedAt=sa.bindparam("now", type_=webhook_logs.c.processedAt.type),
    )
)


def _repeat(first: DeliveryOutcome, same_body: bool) -> DeliveryOutcome:
    """The outcome of an event id given twice in one batch: the first one's, never charged twice."""
    if not same_body:
        return DeliveryOutcome(first.event_id, DeliveryStatus.CONFLICT, "eventId repeated with another body")
    if first.status is DeliveryStatus.CHARGED:
        return DeliveryOutcome(first.event_id, DeliveryStatus.DUPLICATE, None, first.user_id)
    return first


def record_deliveries(
    connection: Connection,
    events: Sequence[Event],
    now: datetime,
    *,
    fallback: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
) -> list[DeliveryOutcome]:
    """Record and bill a batch of delivered events; one outcome per event, in order.

    Without ``fallback`` a race with another delivery raises ``Shortfall`` instead of going back to a
    savepoint: the caller rolls its whole transaction back and calls again with it (two round trips fewer
    per batch on MySQL when nothing races, which is nearly always).
    """
    first: dict[str, int] = {}
    for index, event in enumerate(events):
        first.setdefault(event.event_id, index)
    unique = sorted((events[i] for i in first.values()), key=lambda e: e.event_id)
    if returns_inserted(connection.dialect):
        verdicts = _final_first(connection, unique, now, tolerance)
    elif not fallback:
        verdicts = _optimistic(connection, unique, now, tolerance)
    else:
        with savepoint(connection, "deliveries") as rollback:
            try:
                verdicts = _optimistic(connection, unique, now, tolerance)
            except Shortfall:
                rollback()
                verdicts = _claim_first(connection, unique, now, tolerance)

    results = []
    for index, event in enumerate(events):
        verdict = verdicts[event.event_id]
        if first[event.event_id] == index:
            results.append(verdict)
        else:
            earlier = events[first[event.event_id]]
            same = event.payload_hash == earlier.payload_hash or event.same_as(earlier.payload)
            results.append(_repeat(verdict, same))
    return results


def charged_credits(events: Sequence[Event], outcomes: Sequence[DeliveryOutcome]) -> int:
    """The credits the events charged (each outcome the one of the event at its place)."""
    charged = DeliveryStatus.CHARGED
    return sum(e.usage.creditCost for e, o in zip(events, outcomes, strict=True) if o.status is charged and e.usage)


def deliver(
    target: Engine | Connection, events: Sequence[Event], now: datetime, *, tolerance: float = DEFAULT_TOLERANCE
) -> list[DeliveryOutcome]:
    """Record and bill a batch in its own transaction (committed when this returns), the fast way first:
    when another delivery of one of these events got in between, the transaction is rolled back and the
    batch run again claim-first (``record_deliveries``' two paths; on MySQL the fast one saves two round
    trips, nearly always)."""
    try:
        return run_transaction(target, lambda c: record_deliveries(c, events, now, fallback=False, tolerance=tolerance))
    except Shortfall:
        return run_transaction(target, lambda c: record_deliveries(c, events, now, tolerance=tolerance))
