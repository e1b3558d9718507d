"""Purging the outbox: delivered (and, when asked, dead) events past a cutoff, with their attempts, a
bounded chunk per transaction, however many there are.

A purge walks the events by id from where the previous chunk ended, with no index but the primary key:
events are created in id order, and the delivered ones are the old ones. The walk ends at the first chunk
that reaches an event created since the cutoff, so it never reads the young part of a big outbox (an event
enqueued out of order behind it waits for a later purge). Each chunk names at most ``size`` rows in any
one statement, far below SQLite's and PostgreSQL's limits on a statement's parameters.

The statements naming ids are compiled once per padded length (``schema.statements``): SQLAlchemy's
expansion of a thousand-value ``IN`` on every execution cost more than the deletes themselves.
"""

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection

from creditrelay.schema.database import Timestamp
from creditrelay.schema.statements import fetch_in, padded, placeholders, run_cached


def purge_chunk(
    connection: Connection,
    tables: tuple[sa.Table, sa.Table],
    statuses: Sequence[str],
    older_than: datetime,
    after: int,
    size: int,
) -> tuple[int, int | None]:
    """Delete, with their attempts, the events in ``statuses`` created before ``older_than`` among the
    ``size`` events that follow id ``after``; how many were deleted, and the id the next chunk follows
    (None: the walk is over). In the caller's transaction.

    What it deletes it has locked and checked again (a dead event requeued since the walk read it is
    pending now), and it skips what another transaction holds: purges running at once share the work.
    """
    events, attempts = tables
    walk = (
        sa.select(events.c.id, events.c.status, events.c.createdAt < sa.bindparam("older_than", type_=Timestamp))
        .where(events.c.id > after)
        .order_by(events.c.id)
        .limit(size)
    )
    walked = connection.execute(walk, {"older_than": older_than}).all()
    doomed = [event_id for event_id, status, old in walked if status in statuses and old]
    deleted = 0
    if doomed:
        # by id alone: with the status in the WHERE, SQLite's planner reads every event of that status
        lock = lambda ids: (  # noqa: E731
            sa.select(events.c.id, events.c.eventId, events.c.status)
            .where(events.c.id.in_(ids))
            .with_for_update(skip_locked=True)
        )
        locked = [(id_, event_id) for id_, event_id, status in fetch_in(connection, "outbox_purge_lock", lock, doomed)
                  if status in statuses]  # fmt: skip
        if locked:
            _delete_in(connection, "outbox_purge_attempts", attempts.c.eventId, [event_id for _, event_id in locked])
            deleted = _delete_in(connection, "outbox_purge_events", events.c.id, [id_ for id_, _ in locked])
    done = len(walked) < size or not all(old for _, _, old in walked)
    return deleted, None if done else int(walked[-1][0])


def _delete_in(connection: Connection, name: str, column: sa.Column[Any], values: list[Any]) -> int:
    """``DELETE … WHERE column IN (values)``, compiled once per padded length; how many rows went."""
    values = padded(values)
    table = column.table
    assert isinstance(table, sa.Table)
    build = lambda: table.delete().where(column.in_(placeholders("v", len(values))))  # noqa: E731
    params = {f"v{i}": value for i, value in enumerate(values)}
    return int(run_cached(connection, (name, len(values)), build, params).rowcount)
