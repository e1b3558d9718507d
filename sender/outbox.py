"""The durable outbox: an event is accepted only once it is committed here, and leaves only when delivered.

Any SQLAlchemy URL works; the default is a SQLite file under ``./data/`` (WAL, ``synchronous=FULL``, so
``enqueue`` returning means the event survives ``kill -9`` and power loss). The two tables are the
outbox's own and are created on open (an outbox made by an earlier version gains the columns it lacks).
Relays may share an outbox (one per host, on a shared MySQL or PostgreSQL): each claims events under its
name, with a lease, and a relay starting under a name frees only the claims its killed predecessor of that
name left behind; the claims of a relay that is gone for good come back when their lease runs out.

Delivered events are purged a bounded chunk at a time (``sender.purge``), by the relay on its schedule or
by ``creditrelay outbox purge``; a SQLite outbox then gives the freed pages back (``sender.sqlite_space``).
"""

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Engine

from creditrelay.schema.database import (
    Timestamp,
    add_missing_columns,
    convert_to_exact_collation,
    insert_ignoring_duplicates,
    make_engine,
    register_exact_collation,
    utc,
)
from creditrelay.schema.outbox import DEAD as DEAD
from creditrelay.schema.outbox import DELIVERED as DELIVERED
from creditrelay.schema.outbox import EVENT_ID_MAX, outbox_tables
from creditrelay.schema.outbox import PENDING as PENDING
from creditrelay.schema.shapes import iso
from creditrelay.schema.statements import execute_many
from creditrelay.schema.transactions import run_transaction
from creditrelay.sender import sqlite_space
from creditrelay.sender.delivery import Attempt
from creditrelay.sender.purge import purge_chunk

DEFAULT_OUTBOX_URL = "sqlite:///data/outbox.db"
PURGE_CHUNK = 1000  # events read per purge transaction: far below any database's limit on parameters
RECLAIM_PAGES = 256  # SQLite pages given back per transaction (1 MiB of the default 4 KiB pages)
IN_LIMIT = 500  # ids named in one statement's IN (...)
# Seconds a purge waits between its transactions on SQLite, where writers take turns: without the gap, a
# gateway's enqueue waited seconds for a purge's lock (the busy handler's retries kept missing the moments
# between chunks)
PURGE_PAUSE = 0.05

metadata = sa.MetaData()
register_exact_collation(metadata, required=False)  # an outbox still opens on MySQL 5.7 (ids minted unique)
outbox_events, outbox_attempts = outbox_tables(metadata)


@dataclass(frozen=True)
class OutboxEvent:
    event_id: str
    body: bytes
    attempts: int


@dataclass(frozen=True)
class Settlement:
    """What becomes of an event after an attempt."""

    attempt: Attempt
    status: str
    next_attempt_at: datetime | None = None
    error: str | None = None


def _event_json(row: Any) -> dict[str, Any]:
    return {
        "eventId": row.eventId,
        "status": row.status,
        "attempts": row.attempts,
        "nextAttemptAt": iso(row.nextAttemptAt),
        "lastError": row.lastError,
        "createdAt": iso(row.createdAt),
        "deliveredAt": iso(row.deliveredAt),
    }


class Outbox:
    def __init__(self, engine: Engine, *, create: bool = True) -> None:
        """The outbox in ``engine``'s database, its tables made there if missing (``create``); a database
        whose migrations made them (the ledger's) is opened without touching its schema."""
        self.engine = engine
        # SQLite: one writer at a time, so long work pauses between its transactions to let enqueues in
        self.serial_writes = engine.dialect.name == "sqlite"
        if create:
            sqlite_space.use_incremental_vacuum(engine)  # before the first table: fixed from then on
            metadata.create_all(engine)
            with engine.begin() as connection:
                add_missing_columns(connection, outbox_events)  # outboxes made before claims named their relay
                # outboxes made before event ids compared byte for byte on MySQL
                convert_to_exact_collation(connection, list(metadata.tables), required=False)

    @classmethod
    def open(cls, url: str = DEFAULT_OUTBOX_URL) -> "Outbox":
        return cls(make_engine(url))

    def enqueue(self, events: Sequence[tuple[str, bytes]], now: datetime | None = None) -> int:
        """Commit the events (event id, exact body); an id already in the outbox is kept as it was.

        Returns how many were new. When this returns, the events are on disk. An event id is 1 to 64
        characters (``ValueError`` otherwise: nothing is enqueued).
        """
        if bad := [event_id for event_id, _ in events if not 0 < len(event_id) <= EVENT_ID_MAX]:
            raise ValueError(f"eventId must be 1 to {EVENT_ID_MAX} characters: {bad[0][:80]!r}")
        now = now or utc(time.time())
        rows = [
            {
                "eventId": event_id,
                "body": body.decode(),
                "status": PENDING,
                "attempts": 0,
                "nextAttemptAt": now,
                "createdAt": now,
            }
            for event_id, body in events
        ]
        if not rows:
            return 0

        def insert(connection: sa.Connection) -> int:  # again after a deadlock or a lost connection: duplicates skip
            build = lambda dialect: insert_ignoring_duplicates(outbox_events, dialect)  # noqa: E731
            return execute_many(connection, "outbox_enqueue", build, rows)

        return run_transaction(self.engine, insert)

    def claim_due(self, now: datetime, limit: int, lease: timedelta, holder: str | None = None) -> list[OutboxEvent]:
        """Take up to ``limit`` due events, oldest due first, and hold them for ``lease`` under ``holder``'s
        name. Relays claiming at once skip each other's rows (``SKIP LOCKED``; SQLite's writers take turns),
        and a claim two Galera nodes made at once fails certification on one of them, which runs again."""
        query = (
            sa.select(outbox_events.c.id, outbox_events.c.eventId, outbox_events.c.body, outbox_events.c.attempts)
            .where(
                outbox_events.c.status == PENDING,
                outbox_events.c.nextAttemptAt <= now,
                sa.or_(outbox_events.c.claimedUntil.is_(None), outbox_events.c.claimedUntil <= now),
            )
            .order_by(outbox_events.c.nextAttemptAt, outbox_events.c.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )

        def claim(connection: sa.Connection) -> list[Any]:
            rows = list(connection.execute(query))
            for start in range(0, len(rows), IN_LIMIT):  # a pass may claim more than a statement may name
                connection.execute(
                    outbox_events.update()
                    .where(outbox_events.c.id.in_([r.id for r in rows[start : start + IN_LIMIT]]))
                    .values(claimedUntil=now + lease, claimedBy=holder)
                )
            return rows

        return [OutboxEvent(r.eventId, r.body.encode(), r.attempts) for r in run_transaction(self.engine, claim)]

    def settle(self, settlements: Iterable[Settlement]) -> None:
        """Record attempts and move their events on, in one transaction."""
        settlements = list(settlements)
        if not settlements:
            return
        attempts = [
            {
                "eventId": s.attempt.event_id,
                "attemptedAt": utc(s.attempt.attempted_at),
                "verdict": s.attempt.verdict.value,
                "statusCode": s.attempt.status_code,
                "latencyMs": s.attempt.latency_ms,
                "snippet": s.attempt.snippet,
            }
            for s in settlements
        ]
        update = (
            outbox_events.update()
            .where(outbox_events.c.eventId == sa.bindparam("event_id"))
            .values(
                attempts=outbox_events.c.attempts + 1,
                status=sa.bindparam("new_status"),
                nextAttemptAt=sa.func.coalesce(sa.bindparam("next_at", type_=Timestamp), outbox_events.c.nextAttemptAt),
                claimedUntil=None,
                claimedBy=None,
                lastError=sa.bindparam("error"),
                deliveredAt=sa.bindparam("delivered_at", type_=Timestamp),
            )
        )
        delivered = sorted(
            (s.attempt.event_id, utc(s.attempt.attempted_at)) for s in settlements if s.status == DELIVERED
        )
        changes = [
            {
                "event_id": s.attempt.event_id,
                "new_status": s.status,
                "next_at": s.next_attempt_at,
                "error": s.error,
                "delivered_at": None,
            }
            for s in sorted(settlements, key=lambda s: s.attempt.event_id)
            if s.status != DELIVERED
        ]
        with self.engine.begin() as connection:
            connection.execute(outbox_attempts.insert(), attempts)
            # the delivered (nearly all, as a rule) in a few statements: one per request's answer time
            for start in range(0, len(delivered), IN_LIMIT):
                part = delivered[start : start + IN_LIMIT]
                for moment in sorted({at for _, at in part}):
                    ids = [event_id for event_id, at in part if at == moment]
                    connection.execute(
                        outbox_events.update()
                        .where(outbox_events.c.eventId.in_(ids))
                        .values(
                            attempts=outbox_events.c.attempts + 1,
                            status=DELIVERED,
                            claimedUntil=None,
                            claimedBy=None,
                            lastError=None,
                            deliveredAt=moment,
                        )
                    )
            if changes:
                connection.execute(update, changes)

    def release(self, event_ids: Sequence[str]) -> None:
        """Give claimed events back untried (no attempt counted): due again at once."""
        with self.engine.begin() as connection:
            for start in range(0, len(event_ids), IN_LIMIT):
                connection.execute(
                    outbox_events.update()
                    .where(outbox_events.c.eventId.in_(event_ids[start : start + IN_LIMIT]))
                    .values(claimedUntil=None, claimedBy=None)
                )

    def release_claims(self, holder: str) -> int:
        """Make the events a killed relay named ``holder`` had in flight due again (they may reach the
        receiver twice); other relays' claims stay theirs."""

        def release(connection: sa.Connection) -> int:
            result = connection.execute(
                outbox_events.update()
                .where(outbox_events.c.status == PENDING, outbox_events.c.claimedBy == holder)
                .values(claimedUntil=None, claimedBy=None)
            )
            return int(result.rowcount)

        return run_transaction(self.engine, release)

    def counts(self) -> dict[str, int]:
        with self.engine.connect() as connection:
            rows = connection.execute(
                sa.select(outbox_events.c.status, sa.func.count()).group_by(outbox_events.c.status)
            )
            found = {status: int(count) for status, count in rows}
        return {status: found.get(status, 0) for status in (PENDING, DELIVERED, DEAD)}

    def list_events(self, status: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        query = sa.select(outbox_events).order_by(outbox_events.c.id.desc()).limit(limit)
        if status is not None:
            query = query.where(outbox_events.c.status == status)
        with self.engine.connect() as connection:
            return [_event_json(row) for row in connection.execute(query)]

    def attempts_of(self, event_id: str) -> list[dict[str, Any]]:
        query = sa.select(outbox_attempts).where(outbox_attempts.c.eventId == event_id).order_by(outbox_attempts.c.id)
        with self.engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(query)]

    def requeue(self, event_ids: Sequence[str] | None, now: datetime) -> int:
        """Put dead events (all of them, or those named) back in the queue with a fresh schedule."""
        revive = (
            outbox_events.update()
            .where(outbox_events.c.status == DEAD)
            .values(status=PENDING, attempts=0, nextAttemptAt=now, claimedUntil=None, claimedBy=None)
        )
        with self.engine.begin() as connection:
            if event_ids is None:
                return int(connection.execute(revive).rowcount)
            named, revived = list(event_ids), 0
            for start in range(0, len(named), IN_LIMIT):  # an operator may name more than a statement may hold
                part = named[start : start + IN_LIMIT]
                revived += int(connection.execute(revive.where(outbox_events.c.eventId.in_(part))).rowcount)
            return revived

    def purge_chunk(
        self, statuses: Sequence[str], older_than: datetime, after: int = 0, size: int = PURGE_CHUNK
    ) -> tuple[int, int | None]:
        """Delete, with their attempts, the events in ``statuses`` created before ``older_than`` among the
        ``size`` that follow id ``after``, in one short transaction; how many, and the id the next chunk
        follows (None: done). Harmless beside other purges (``sender.purge``)."""
        if PENDING in statuses:
            raise ValueError("pending events are never purged")
        tables = (outbox_events, outbox_attempts)
        return run_transaction(self.engine, partial(purge_chunk, tables=tables, statuses=statuses,
                                                    older_than=older_than, after=after, size=size))  # fmt: skip

    def purge(
        self,
        statuses: Sequence[str],
        older_than: datetime,
        *,
        chunk: int = PURGE_CHUNK,
        progress: Callable[[int], None] | None = None,
        pause: float = PURGE_PAUSE,
        sleep: Callable[[float], None] = time.sleep,
    ) -> int:
        """Delete delivered (or dead) events created before ``older_than``, with their attempts, a chunk per
        short transaction (``purge_chunk``), ``pause`` seconds apart where writers take turns
        (``serial_writes``); how many. ``progress`` is told each chunk's count."""
        total, after = 0, 0
        while True:
            deleted, next_after = self.purge_chunk(statuses, older_than, after, chunk)
            total += deleted
            if progress is not None:
                progress(deleted)
            if next_after is None:
                return total
            after = next_after
            if self.serial_writes:
                sleep(pause)

    def reclaim_space(self, pages: int = RECLAIM_PAGES) -> int:
        """Give up to ``pages`` free pages of a SQLite outbox back to the file system, in one short
        transaction; how many went (``sender.sqlite_space``: nothing to do on other databases)."""
        return sqlite_space.reclaim_space(self.engine, pages)

    def vacuum(self) -> None:
        """Rewrite a SQLite outbox at its size, blocking writers while it runs (``sender.sqlite_space``)."""
        sqlite_space.vacuum(self.engine)

    def file_bytes(self) -> int | None:
        return sqlite_space.file_bytes(self.engine)
