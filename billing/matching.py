"""One usage, two paths, no shared id: pair a webhook usage that carries no request id with the gateway's log
row of the same usage.

Seed 004's webhook carries no request id, and the polling fallback reads the same usage from new-api's log
under ``req:<request_id>`` (or ``req:newapi-log-<id>``): the usage keys never meet. So the usages that can
meet only this way are *open* for matching — a charged webhook usage without a request id, and a usage
charged from a log row — each with a row in ``usage_matches``: its fingerprint (the gateway key, the model,
the prompt and completion token counts) and its time. A usage arriving by the other path with the same
fingerprint, within ``tolerance`` seconds, pairs with the nearest open one instead of being charged again.

Pairing is one-to-one and nearest-first: each open usage pairs with at most one arrival and each arrival
with at most one open usage, the smallest time difference first, so two identical usages that came both
ways are charged twice, and three log rows with one webhook three times. It is race-free by
construction: it runs after the user's row lock the ledger takes (every transaction charging that user's
usage waits for it), and the claim itself is guarded by unique constraints — ``usage_matches.pairedKey``
(an arrival's key pairs once) and the conditional update of an open row (an open usage pairs once).

The cost falls only where it must: a webhook usage with a request id never looks (its key decides); one
without looks only while its user has an open polled usage (``users.openPollUsages``, read with the row
lock the ledger takes anyway) — in a set-up without polling, never.
"""

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection

from creditrelay.schema.statements import execute_many, fetch_in, fetch_in_each
from creditrelay.schema.tables import usage_matches, usage_records, users

WEBHOOK, POLL = "webhook", "poll"
DEFAULT_TOLERANCE = 10  # seconds between a log row's created_at and its webhook's timestamp


class ClaimLost(Exception):
    """An open usage was paired by another transaction between our read and our claim (cannot happen under
    the user's row lock; the transaction is rolled back and retried)."""


@dataclass(slots=True)  # a value; slotted, not frozen: built per usage on the writer (see ledger.Usage)
class Arrival:
    """A usage arriving by one path that may be the same usage as an open one of the other path."""

    usage_key: str
    user_id: int
    source: str
    match_key: str
    used_at: datetime
    credit_cost: int


@dataclass(slots=True)  # a value; slotted, not frozen: built per usage on the writer (see ledger.Usage)
class OpenUsage:
    """A charged usage still waiting for its other half."""

    id: int
    user_id: int
    match_key: str
    used_at: datetime
    credit_cost: int


@dataclass(slots=True)  # a value; slotted, not frozen: built per usage on the writer (see ledger.Usage)
class Pairing:
    arrival: Arrival
    open: OpenUsage


def fingerprint(remote_key_id: str, model: str, prompt_tokens: int, completion_tokens: int) -> str:
    """What both paths know of a usage, as 32 hex digits (128 bits of SHA-256)."""
    text = "\x1f".join((remote_key_id, model, str(prompt_tokens), str(completion_tokens)))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def other(source: str) -> str:
    return POLL if source == WEBHOOK else WEBHOOK


def nearest_first(arrivals: Sequence[Arrival], candidates: Sequence[OpenUsage], tolerance: float) -> list[Pairing]:
    """One-to-one pairs of arrivals and open usages with the same fingerprint and user, at most ``tolerance``
    seconds apart, the nearest first (ties: earlier arrival, then older open usage)."""
    by_key: dict[tuple[str, int], list[OpenUsage]] = {}
    for candidate in candidates:
        by_key.setdefault((candidate.match_key, candidate.user_id), []).append(candidate)
    options = []
    for order, arrival in enumerate(arrivals):
        for candidate in by_key.get((arrival.match_key, arrival.user_id), []):
            gap = abs((arrival.used_at - candidate.used_at).total_seconds())
            if gap <= tolerance:
                options.append((gap, order, candidate.id, arrival, candidate))
    options.sort(key=lambda option: option[:3])
    taken_arrivals: set[int] = set()
    taken_open: set[int] = set()
    pairings = []
    for _, order, candidate_id, arrival, candidate in options:
        if order in taken_arrivals or candidate_id in taken_open:
            continue
        taken_arrivals.add(order)
        taken_open.add(candidate_id)
        pairings.append(Pairing(arrival, candidate))
    return pairings


def open_usages(connection: Connection, source: str, arrivals: Sequence[Arrival], tolerance: float) -> list[OpenUsage]:
    """The open usages of ``source`` that ``arrivals`` could pair with (same fingerprint, near in time)."""
    if not arrivals:
        return []
    slack = timedelta(seconds=tolerance)
    bounds = {
        "source": source,
        "low": min(a.used_at for a in arrivals) - slack,
        "high": max(a.used_at for a in arrivals) + slack,
    }
    matches = usage_matches.c

    def build(lists: Sequence[Sequence[sa.BindParameter[Any]]]) -> sa.Select[Any]:
        moment = matches.usedAt.type
        return (
            sa.select(matches.id, matches.userId, matches.matchKey, matches.usedAt, matches.creditCost)
            .where(
                matches.matchKey.in_(lists[0]),
                matches.source == sa.bindparam("source", type_=matches.source.type),
                matches.pairedKey.is_(None),
                matches.usedAt.between(sa.bindparam("low", type_=moment), sa.bindparam("high", type_=moment)),
            )
            .order_by(matches.id)
        )

    keys = sorted({a.match_key for a in arrivals})
    rows = fetch_in_each(connection, "open_usages", build, [keys], bounds)
    return [OpenUsage(int(r[0]), int(r[1]), r[2], _moment(r[3]), int(r[4])) for r in rows]


def _moment(value: Any) -> datetime:
    """A timestamp read by a driver-level statement: a datetime on MySQL, its stored text on SQLite."""
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def paired_keys(connection: Connection, keys: Iterable[str]) -> set[str]:
    """Which of ``keys`` have already paired with a usage of the other path."""
    return _present(connection, "paired_keys", usage_matches.c.pairedKey, keys)


def recorded_keys(connection: Connection, keys: Iterable[str]) -> set[str]:
    """Which of ``keys`` are usage records already (charged before)."""
    return _present(connection, "recorded_keys", usage_records.c.usageKey, keys)


def _present(connection: Connection, name: str, column: "sa.Column[Any]", keys: Iterable[str]) -> set[str]:
    wanted = sorted(set(keys))
    if not wanted:
        return set()
    rows = fetch_in(connection, name, lambda ids: sa.select(column).where(column.in_(ids)), wanted)
    return {key for (key,) in rows}


def claim(connection: Connection, pairings: Sequence[Pairing], now: datetime) -> None:
    """Record each pairing on its open usage; ``ClaimLost`` if one was no longer open."""
    rows = [
        {"open_id": p.open.id, "key": p.arrival.usage_key, "cost": p.arrival.credit_cost, "now": now}
        for p in sorted(pairings, key=lambda p: p.open.id)
    ]
    if rows and execute_many(connection, "claim_open_usage", lambda _: _CLAIM, rows) != len(rows):
        raise ClaimLost("an open usage was paired by another transaction")


_CLAIM = (
    usage_matches.update()
    .where(usage_matches.c.id == sa.bindparam("open_id"), usage_matches.c.pairedKey.is_(None))
    .values(
        pairedKey=sa.bindparam("key"),
        pairedCost=sa.bindparam("cost"),
        pairedAt=sa.bindparam("now", type_=usage_matches.c.pairedAt.type),
    )
)


@dataclass(slots=True)
class Settled:
    """What matching decided for a batch's arrivals, before anything is charged."""

    known: set[str]  # usage keys that are a usage charged before: paired earlier, or recorded (polled)
    pairings: list[Pairing]  # claimed now: charged by the other path already, not to be charged again


def settle(
    connection: Connection,
    webhook: Sequence[Arrival],
    poll: Sequence[Arrival],
    open_poll: Mapping[int, int],
    paired: set[str] | None,
    tolerance: float,
    now: datetime,
) -> Settled:
    """Pair a batch's arrivals with the open usages of the other path, under the users' row locks.

    ``webhook``: webhook usages without a request id; ``poll``: usages read from the gateway's log.
    ``open_poll``: each locked user's count of open polled usages; ``paired``: which webhook keys paired
    before, when the caller already read it (else it is read here).
    """
    known: set[str] = set()
    pairings: list[Pairing] = []
    if webhook:
        keys = [a.usage_key for a in webhook]
        known |= (paired_keys(connection, keys) if paired is None else paired) & set(keys)
        looking = [a for a in webhook if a.usage_key not in known and open_poll.get(a.user_id, 0) > 0]
        if looking:  # a usage recorded already is a redelivery, never the other half of a polled one
            recorded = recorded_keys(connection, [a.usage_key for a in looking])
            looking = [a for a in looking if a.usage_key not in recorded]
            pairings += nearest_first(looking, open_usages(connection, POLL, looking, tolerance), tolerance)
    if poll:
        keys = [a.usage_key for a in poll]
        known |= paired_keys(connection, keys) | recorded_keys(connection, keys)
        looking = [a for a in poll if a.usage_key not in known]
        pairings += nearest_first(looking, open_usages(connection, WEBHOOK, looking, tolerance), tolerance)
    claim(connection, pairings, now)
    return Settled(known, pairings)


def open_rows(arrivals: Sequence[Arrival], record_ids: Mapping[str, int]) -> list[dict[str, Any]]:
    """``usage_matches`` rows opening the charged ``arrivals`` (their usage records ``record_ids``)."""
    return [
        {
            "usageRecordId": record_ids[a.usage_key],
            "userId": a.user_id,
            "source": a.source,
            "matchKey": a.match_key,
            "usedAt": a.used_at,
            "creditCost": a.credit_cost,
        }
        for a in arrivals
    ]


def count_open_poll(connection: Connection, deltas: Mapping[int, int]) -> None:
    """Move each user's count of open polled usages by its delta (users already locked by the caller)."""
    rows = [{"user_id": user_id, "delta": delta} for user_id, delta in sorted(deltas.items()) if delta]
    execute_many(connection, "count_open_poll", lambda _: _COUNT, rows)


_COUNT = (
    users.update()
    .where(users.c.id == sa.bindparam("user_id"))
    .values(openPollUsages=users.c.openPollUsages + sa.bindparam("delta", type_=sa.BigInteger))
)
