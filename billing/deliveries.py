"""Webhook deliveries: record each event id once in ``webhook_logs`` and charge the usage it carries.

Constraints decide every fate; one algorithm does it on every database (``_record``):

1. ``_known``: one read (a ``UNION ALL``) finds the batch's key owners, the log rows already stored, and
   which of its usages without a request id paired before. A batch of duplicates writes nothing.
2. The new events' log rows are inserted already with their final status — known before billing:
   ``ignored`` without usage, ``failed`` for an unknown key, else ``processed`` (whether the usage is
   charged now or was before) — skipping ids that exist. The rows written are this delivery's
   (``schema.inserts``); the others, committed or being inserted by another delivery since the read, are
   read back (an insert that meets another's uncommitted row waits for it, and READ COMMITTED reads then
   see its commit, with its final status).
3. ``_judge``: an event whose row existed is a duplicate when its body is the same (a ``failed`` one is
   billed again: its key may have been linked since), a conflict when it is not.
4. ``usage.charge`` charges the usages of the events to bill; money is guarded one level down, by the
   usage's own unique key.
5. ``_finish``: the rows whose status changed (a ``failed`` one now charged; a new one whose charge the
   ledger refused) get it.

The log rows are locked before the users, as everywhere, and outside the users' lock window. Reads are
never ``FOR UPDATE``: an insert already holds a shared lock on a duplicate row, and 40 racing deliveries
upgrading it to exclusive deadlock each other.

Where a database only counts what an insert wrote (MySQL), ``deliver`` first runs the batch with
optimistic inserts, which save two round trips; when one writes fewer rows than it was given — another
delivery got in first — the batch answers ``RACED``, its transaction is rolled back, and it runs again
with exact ones.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection, Engine

from creditrelay.billing import autolink
from creditrelay.billing.batch import RACED, Batch, Raced
from creditrelay.billing.rules import rules_of
from creditrelay.billing.usage import Usage, UsageOutcome, UsageStatus, charge
from creditrelay.schema.database import utc
from creditrelay.schema.inserts import insert_new
from creditrelay.schema.money import MAX_BALANCE
from creditrelay.schema.statements import execute_many, fetch_in, fetch_in_each
from creditrelay.schema.tables import api_keys, usage_matches, webhook_logs
from creditrelay.schema.transactions import run_transaction
from creditrelay.schema.wire import Event


class LogStatus(StrEnum):
    """A delivery's row in ``webhook_logs``."""

    RECEIVED = "received"  # written by a version of creditrelay that claimed rows before billing
    PROCESSED = "processed"
    FAILED = "failed"
    IGNORED = "ignored"


class DeliveryStatus(StrEnum):
    CHARGED = "charged"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"
    UNBILLABLE = "unbillable"
    IGNORED = "ignored"


@dataclass(slots=True)
class DeliveryOutcome:  # a value, slotted rather than frozen for speed (see usage.Usage)
    event_id: str
    status: DeliveryStatus
    error: str | None = None
    user_id: int | None = None
    balance: int | None = None


@dataclass(slots=True)
class _Stored:
    """A delivery's row as it was found."""

    payload_hash: str
    status: LogStatus


def deliver(target: Engine | Connection, events: Sequence[Event], now: datetime) -> list[DeliveryOutcome]:
    """Record and bill a batch in its own transaction (committed when this returns): optimistically first,
    and exactly when the first try raced (see the module)."""
    first = run_transaction(target, lambda c: _in_order(c, events, now, exact=False), keep=_not_raced)
    if not isinstance(first, Raced):
        return first
    return run_transaction(target, lambda c: record_deliveries(c, events, now))


def _not_raced(result: object) -> bool:
    return not isinstance(result, Raced)


def record_deliveries(connection: Connection, events: Sequence[Event], now: datetime) -> list[DeliveryOutcome]:
    """Record and bill a batch of delivered events inside the caller's transaction; one outcome per event,
    in order."""
    outcomes = _in_order(connection, events, now, exact=True)
    assert not isinstance(outcomes, Raced)  # an exact batch always knows what it wrote
    return outcomes


def _in_order(
    connection: Connection, events: Sequence[Event], now: datetime, *, exact: bool
) -> list[DeliveryOutcome] | Raced:
    """Each event id once, in id order (the order its row is locked in); then every event its outcome — an
    id given twice in the batch is the first one's, never charged twice."""
    first: dict[str, int] = {}
    for index, event in enumerate(events):
        first.setdefault(event.event_id, index)
    unique = sorted((events[i] for i in first.values()), key=lambda e: e.event_id)
    verdicts = _record(connection, unique, Batch(now, rules_of(connection), exact))
    if isinstance(verdicts, Raced):
        return RACED
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


def _record(connection: Connection, events: Sequence[Event], batch: Batch) -> dict[str, DeliveryOutcome] | Raced:
    """The steps of the module's docstring, for events of distinct ids."""
    stored, owners, batch.paired = _known(connection, events)
    said = ((str(e.usage.remoteKeyId), _gateway_user(e.usage.userId)) for e in events if e.usage is not None)
    batch.automatic = autolink.candidates(connection, autolink.unowned(said, owners), batch.rules)
    batch.owners = {**owners, **batch.automatic} if batch.automatic else owners
    fresh = [e for e in events if e.event_id not in stored]
    expected = {e.event_id: _expected(e, batch.owners) for e in fresh}
    rows = [_log_row(e, batch.now, expected[e.event_id]) for e in fresh]
    written = insert_new(connection, webhook_logs, rows, "eventId", exact=batch.exact)
    if written is None:
        return RACED
    stored |= _read(connection, [e.event_id for e in fresh if e.event_id not in written])
    earlier = [e for e in events if e.event_id not in written]
    verdicts, to_bill = _judge(connection, earlier, stored)
    new = [e for e in fresh if e.event_id in written]
    for event in new:
        known = expected[event.event_id]
        if known is None:
            to_bill.append(event)
        else:
            verdicts[event.event_id] = known
    billed = _bill(connection, to_bill, batch)
    if isinstance(billed, Raced):
        return RACED
    verdicts |= billed
    retried = [verdicts[e.event_id] for e in earlier if stored[e.event_id].status in _OPEN]
    refused = [  # written as processed, then refused by the ledger (a balance out of range)
        verdicts[e.event_id]
        for e in new
        if expected[e.event_id] is None and verdicts[e.event_id].status is DeliveryStatus.UNBILLABLE
    ]
    _finish(connection, retried + refused, batch.now)
    return verdicts


_OPEN = (LogStatus.RECEIVED, LogStatus.FAILED)  # stored rows whose event is billed (again)


def _known(connection: Connection, events: Sequence[Event]) -> tuple[dict[str, _Stored], dict[str, int], set[str]]:
    """In one statement (a ``UNION ALL``): the batch's stored log rows (as ``_read``), the owners of its
    gateway keys (as ``rows.key_owners``), and which of its usages without a request id have paired with a
    polled usage before (``matching.paired_keys``: a redelivery after its log row was cleaned up)."""
    keys = sorted({str(e.usage.remoteKeyId) for e in events if e.usage is not None})
    unkeyed = sorted(e.usage_key for e in events if e.usage is not None and e.usage.requestId is None)
    if not keys:
        return _read(connection, [e.event_id for e in events]), {}, set()

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
    stored = {name: _Stored(digest, LogStatus(status)) for kind, name, _, digest, status in rows if kind == "l"}
    owners = {name: int(owner) for kind, name, owner, _, _ in rows if kind == "k"}
    return stored, owners, {name for kind, name, _, _, _ in rows if kind == "p"}


def _read(connection: Connection, event_ids: Sequence[str]) -> dict[str, _Stored]:
    """The stored rows of these event ids that exist."""
    rows = fetch_in(
        connection,
        "read_logs",
        lambda ids: sa.select(webhook_logs.c.eventId, webhook_logs.c.payloadHash, webhook_logs.c.status).where(
            webhook_logs.c.eventId.in_(ids)
        ),
        list(event_ids),
    )
    return {event_id: _Stored(digest, LogStatus(status)) for event_id, digest, status in rows}


def _expected(event: Event, owners: Mapping[str, int]) -> DeliveryOutcome | None:
    """A new event's outcome when it is known before billing; None for one to bill (its row is written as
    ``processed``: charged now, or charged before under another event id)."""
    if event.usage is None:
        return DeliveryOutcome(event.event_id, DeliveryStatus.IGNORED)
    if str(event.usage.remoteKeyId) not in owners:
        return _unknown_key(event)
    return None


def _log_row(event: Event, now: datetime, outcome: DeliveryOutcome | None) -> dict[str, Any]:
    return {
        "eventId": event.event_id,
        "eventType": event.event_type,
        "payload": event.payload,
        "payloadHash": event.payload_hash,
        "remoteKeyId": None if event.usage is None else str(event.usage.remoteKeyId),
        # the plain text, not the enum: a driver binds an exact str as it is, a subclass through its adapters
        "status": (LogStatus.PROCESSED if outcome is None else _FINAL.get(outcome.status, LogStatus.PROCESSED)).value,
        "errorMsg": None if outcome is None else outcome.error,
        "processedAt": now,
        "createdAt": now,
    }


def _judge(
    connection: Connection, events: Sequence[Event], stored: Mapping[str, _Stored]
) -> tuple[dict[str, DeliveryOutcome], list[Event]]:
    """The outcomes of events whose row existed, and those of them to bill (again)."""
    verdicts: dict[str, DeliveryOutcome] = {}
    to_bill: list[Event] = []
    same = _same_events(connection, [e for e in events if stored[e.event_id].payload_hash != e.payload_hash])
    for event in events:
        row = stored[event.event_id]
        if row.payload_hash != event.payload_hash and event.event_id not in same:
            verdicts[event.event_id] = DeliveryOutcome(
                event.event_id, DeliveryStatus.CONFLICT, "eventId already received with another body"
            )
        elif row.status not in _OPEN:
            verdicts[event.event_id] = DeliveryOutcome(event.event_id, DeliveryStatus.DUPLICATE)
        elif event.usage is None:
            verdicts[event.event_id] = DeliveryOutcome(event.event_id, DeliveryStatus.IGNORED)
        else:
            to_bill.append(event)
    return verdicts, to_bill


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


def _bill(connection: Connection, events: Sequence[Event], batch: Batch) -> dict[str, DeliveryOutcome] | Raced:
    outcomes = charge(connection, [usage_of(e) for e in events], batch)
    if isinstance(outcomes, Raced):
        return RACED
    return {event.event_id: _from_usage(event, outcome) for event, outcome in zip(events, outcomes, strict=True)}


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
        gateway_user_id=_gateway_user(data.userId),
        hold_id=data.holdId,
    )


def _gateway_user(said: int | str | None) -> str | None:
    """A webhook's ``data.userId`` as the gateway user it names (an integer's digits); 0 names nobody."""
    return None if said is None or said == 0 else str(said)


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


def _finish(connection: Connection, outcomes: Sequence[DeliveryOutcome], now: datetime) -> None:
    rows = [
        {"new_status": _FINAL.get(o.status, LogStatus.PROCESSED), "error": o.error, "now": now, "event_id": o.event_id}
        for o in sorted(outcomes, key=lambda o: o.event_id)
    ]
    execute_many(connection, "finish_logs", lambda _: _FINISH, rows)


_FINAL = {DeliveryStatus.UNBILLABLE: LogStatus.FAILED, DeliveryStatus.IGNORED: LogStatus.IGNORED}
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


def charged_credits(events: Sequence[Event], outcomes: Sequence[DeliveryOutcome]) -> int:
    """The credits the events charged (each outcome the one of the event at its place)."""
    charged = DeliveryStatus.CHARGED
    return sum(e.usage.creditCost for e, o in zip(events, outcomes, strict=True) if o.status is charged and e.usage)
