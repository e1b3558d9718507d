"""One usage, two paths, no shared id: pair a webhook usage that carries no request id with the gateway's log
row of the same usage.

Seed 004's webhook carries no request id, and the polling fallback reads the same usage from new-api's log
under ``req:<request_id>`` (or ``req:newapi-log-<id>``): the usage keys never meet. So the usages that can
meet only this way are *open* for matching — a charged webhook usage without a request id, and a usage
charged from a log row — each with a row in ``usage_matches``: its fingerprint (the gateway key, the model,
the prompt and completion token counts) and its time. A usage arriving by the other path with the same
fingerprint, within ``tolerance`` seconds, pairs with one of them instead of being charged again.

Among identical usages the number charged is the larger of the two paths' counts: pairing is a maximum
one-to-one matching (``billing.pairing``), and an arrival may move an earlier pairing to a twin when that
pairs one more. A usage is one usage whoever owns its key now: the fingerprint names the key, not the user,
and a key linked to another user takes its open polled usages along (``move_open_polls``). It is race-free
by construction: it runs after the row locks of the users the keys belong to, which every transaction
charging those keys takes first, and every claim is a conditional update guarded by the unique
``usage_matches.pairedKey`` (an arrival pairs once) — one that finds a row changed under it rolls the
transaction back to be run again (``ClaimLost``).

The cost falls only where it must: a webhook usage with a request id never looks (its key decides); one
without looks only while its user has an open polled usage (``users.openPollUsages``, read with the row
lock the ledger takes anyway; ``api_keys.openPollUsages`` is each key's share of it) — in a set-up without
polling, never.
"""

import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection

from creditrelay.billing.pairing import Partner, Placement, Slot, place
from creditrelay.schema.errors import TransactionConflict
from creditrelay.schema.statements import execute_many, fetch_in, fetch_in_each
from creditrelay.schema.tables import api_keys, usage_matches, usage_records, users

WEBHOOK, POLL = "webhook", "poll"


class ClaimLost(TransactionConflict):
    """A usage's row was paired or moved by another transaction between our read and our claim: possible
    only for a key moved to another user while its usages were in flight (everything else runs under the
    users' row locks). The transaction is rolled back and run again."""


@dataclass(slots=True)  # a value; slotted, not frozen: built per usage on the writer (see ledger.Usage)
class Arrival:
    """A usage arriving by one path that may be the same usage as an open one of the other path."""

    usage_key: str
    user_id: int
    remote_key_id: str
    source: str
    match_key: str
    used_at: datetime
    credit_cost: int


def fingerprint(remote_key_id: str, model: str, prompt_tokens: int, completion_tokens: int) -> str:
    """What both paths know of a usage, as 32 hex digits (128 bits of SHA-256)."""
    text = "\x1f".join((remote_key_id, model, str(prompt_tokens), str(completion_tokens)))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def other(source: str) -> str:
    return POLL if source == WEBHOOK else WEBHOOK


def load_slots(
    connection: Connection, source: str, match_keys: Sequence[str], window: tuple[datetime, datetime]
) -> list[Slot]:
    """The usages charged by ``source`` with one of ``match_keys``, used within ``window``: free, or with the
    arrival that paired with them."""
    if not match_keys:
        return []
    matches = usage_matches.c

    def build(lists: Sequence[Sequence[sa.BindParameter[Any]]]) -> sa.Select[Any]:
        moment = matches.usedAt.type
        return (
            sa.select(
                matches.id,
                matches.userId,
                matches.matchKey,
                matches.usedAt,
                matches.creditCost,
                matches.pairedKey,
                matches.pairedUsedAt,
                matches.pairedCost,
                matches.pairedAt,
            )
            .where(
                matches.matchKey.in_(lists[0]),
                matches.source == sa.bindparam("source", type_=matches.source.type),
                matches.usedAt.between(sa.bindparam("low", type_=moment), sa.bindparam("high", type_=moment)),
            )
            .order_by(matches.id)
        )

    bounds = {"source": source, "low": window[0], "high": window[1]}
    rows = fetch_in_each(connection, "match_slots", build, [sorted(set(match_keys))], bounds)
    return [
        Slot(
            int(r[0]),
            int(r[1]),
            r[2],
            _moment(r[3]),
            int(r[4]),
            None if r[5] is None else Partner(r[5], _moment_or_none(r[6]), int(r[7] or 0), _moment(r[8])),
        )
        for r in rows
    ]


def _moment(value: Any) -> datetime:
    """A timestamp read by a driver-level statement: a datetime on MySQL and PostgreSQL, its text on SQLite."""
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def _moment_or_none(value: Any) -> datetime | None:
    return None if value is None else _moment(value)


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


def pair(
    connection: Connection, arrivals: Sequence[Arrival], source: str, tolerance: float, now: datetime
) -> Placement:
    """Place ``arrivals`` on the usages ``source`` charged (``pairing.place``) and write what changed. The
    window read first reaches three tolerances around the arrivals (an arrival, the partner it moves, that
    partner's next slot); a search that wanted more reads a wider one."""
    if not arrivals:
        return Placement()
    reach = timedelta(seconds=3 * tolerance)
    low, high = min(a.used_at for a in arrivals), max(a.used_at for a in arrivals)
    keys = [a.match_key for a in arrivals]
    while True:
        window = (low - reach, high + reach)
        placement = place(arrivals, load_slots(connection, source, keys, window), tolerance, window, now)
        if placement.complete or reach >= _MAX_REACH:
            break
        reach *= 4
    _write(connection, placement)
    return placement


_MAX_REACH = timedelta(hours=1)  # past this, a chain of identical usages pairs within what was read


def _write(connection: Connection, placement: Placement) -> None:
    """Move each changed slot's partner: the moved arrivals' keys are cleared first, so the unique
    ``pairedKey`` never sees one key twice; every row must still be as it was read (``ClaimLost``)."""
    moves = sorted(placement.moves, key=lambda move: move[0].id)
    cleared = [{"slot_id": slot.id, "old": before.usage_key} for slot, before in moves if before is not None]
    if cleared and execute_many(connection, "unpair_usage", lambda _: _UNPAIR, cleared) != len(cleared):
        raise ClaimLost("a paired usage was moved by another transaction")
    claims = []
    for slot, _ in moves:
        assert slot.partner is not None  # a placement moves partners on; it never frees a slot
        partner = slot.partner
        claims.append(
            {
                "slot_id": slot.id,
                "key": partner.usage_key,
                "cost": partner.credit_cost,
                "used_at": partner.used_at,
                "at": partner.paired_at,
            }
        )
    if claims and execute_many(connection, "pair_usage", lambda _: _PAIR, claims) != len(claims):
        raise ClaimLost("an open usage was paired by another transaction")


_UNPAIR = (
    usage_matches.update()
    .where(usage_matches.c.id == sa.bindparam("slot_id"), usage_matches.c.pairedKey == sa.bindparam("old"))
    .values(pairedKey=sa.null(), pairedCost=sa.null(), pairedAt=sa.null(), pairedUsedAt=sa.null())
)
_PAIR = (
    usage_matches.update()
    .where(usage_matches.c.id == sa.bindparam("slot_id"), usage_matches.c.pairedKey.is_(None))
    .values(
        pairedKey=sa.bindparam("key"),
        pairedCost=sa.bindparam("cost"),
        pairedUsedAt=sa.bindparam("used_at", type_=usage_matches.c.pairedUsedAt.type),
        pairedAt=sa.bindparam("at", type_=usage_matches.c.pairedAt.type),
    )
)


@dataclass(slots=True)
class Settled:
    """What matching decided for a batch's arrivals, before anything is charged."""

    known: set[str]  # usage keys that are a usage charged before: paired earlier, or recorded (polled)
    matched: set[str]  # paired now: charged by the other path already, not to be charged again
    # open polled usages webhook arrivals took, by (user, gateway key): the key's user now, who holds its share
    polls_taken: Counter[tuple[int, str]]


def settle(
    connection: Connection,
    webhook: Sequence[Arrival],
    poll: Sequence[Arrival],
    open_poll: Mapping[int, int],
    paired: set[str] | None,
    tolerance: float,
    now: datetime,
) -> Settled:
    """Pair a batch's arrivals with the usages of the other path, under the users' row locks.

    ``webhook``: webhook usages without a request id; ``poll``: usages read from the gateway's log.
    ``open_poll``: each locked user's count of open polled usages; ``paired``: which webhook keys paired
    before, when the caller already read it (else it is read here).
    """
    settled = Settled(set(), set(), Counter())
    if webhook:
        keys = [a.usage_key for a in webhook]
        settled.known |= (paired_keys(connection, keys) if paired is None else paired) & set(keys)
        looking = [a for a in webhook if a.usage_key not in settled.known and open_poll.get(a.user_id, 0) > 0]
        if looking:  # a usage recorded already is a redelivery, never the other half of a polled one
            recorded = recorded_keys(connection, [a.usage_key for a in looking])
            looking = [a for a in looking if a.usage_key not in recorded]
            placement = pair(connection, looking, POLL, tolerance, now)
            settled.matched |= placement.placed.keys()
            by_key = {a.usage_key: (a.user_id, a.remote_key_id) for a in looking}
            settled.polls_taken.update(by_key[key] for key in placement.placed)
    if poll:
        keys = [a.usage_key for a in poll]
        settled.known |= paired_keys(connection, keys) | recorded_keys(connection, keys)
        looking = [a for a in poll if a.usage_key not in settled.known]
        settled.matched |= pair(connection, looking, WEBHOOK, tolerance, now).placed.keys()
    return settled


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


def count_open_polls(connection: Connection, deltas: Mapping[tuple[int, str], int]) -> None:
    """Move each (user, gateway key)'s count of open polled usages by its delta: the user's, and the key's
    share of it (the users locked by the caller)."""
    by_user: Counter[int] = Counter()
    by_key: Counter[str] = Counter()
    for (user_id, key), delta in deltas.items():
        by_user[user_id] += delta
        by_key[key] += delta
    user_rows = [{"user_id": user_id, "delta": delta} for user_id, delta in sorted(by_user.items()) if delta]
    key_rows = [{"key": key, "delta": delta} for key, delta in sorted(by_key.items()) if delta]
    execute_many(connection, "count_open_poll", lambda _: _COUNT, user_rows)
    execute_many(connection, "count_key_open_poll", lambda _: _COUNT_KEY, key_rows)


_COUNT = (
    users.update()
    .where(users.c.id == sa.bindparam("user_id"))
    .values(openPollUsages=users.c.openPollUsages + sa.bindparam("delta", type_=sa.BigInteger))
)
_COUNT_KEY = (
    api_keys.update()
    .where(api_keys.c.remoteKeyId == sa.bindparam("key"))
    .values(openPollUsages=api_keys.c.openPollUsages + sa.bindparam("delta", type_=sa.BigInteger))
)


def move_open_polls(connection: Connection, remote_key_id: str, before: int | None, after: int) -> None:
    """A key linked from user ``before`` to ``after`` (both locked by the caller) takes its share of the open
    polled usages along, so a late webhook of that key, now ``after``'s, still looks for them."""
    if before is None or before == after:
        return
    share = connection.execute(
        sa.select(api_keys.c.openPollUsages).where(api_keys.c.remoteKeyId == remote_key_id)
    ).scalar_one_or_none()
    if share:
        rows = [{"user_id": user, "delta": delta} for user, delta in sorted({before: -share, after: share}.items())]
        execute_many(connection, "count_open_poll", lambda _: _COUNT, rows)
